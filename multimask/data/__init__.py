"""Dataset format, registration, mapping, conversion and synthetic data."""

from .catalog import register_multimask_dataset
from .dataset_json import load_multimask_json, make_annotation, write_multimask_json
from .geometry import Report
from .mapper import MultiMaskDatasetMapper

__all__ = [
    "MultiMaskDatasetMapper",
    "Report",
    "load_multimask_json",
    "make_annotation",
    "register_multimask_dataset",
    "write_multimask_json",
]
