"""Training, weights handling and prediction."""

from ..io import WeightsUnavailableError
from .predictor import MultiMaskPredictor
from .trainer import MultiMaskTrainer, check_datasets
from .weights import MultiMaskCheckpointer, resolve_weights

__all__ = [
    "MultiMaskCheckpointer",
    "MultiMaskPredictor",
    "MultiMaskTrainer",
    "WeightsUnavailableError",
    "check_datasets",
    "resolve_weights",
]
