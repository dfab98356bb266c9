"""Training, weights handling and prediction."""

from .predictor import MultiMaskPredictor
from .trainer import MultiMaskTrainer, check_datasets
from .weights import MultiMaskCheckpointer, WeightsUnavailableError, resolve_weights, run_weights

__all__ = [
    "MultiMaskCheckpointer",
    "MultiMaskPredictor",
    "MultiMaskTrainer",
    "WeightsUnavailableError",
    "check_datasets",
    "resolve_weights",
    "run_weights",
]
