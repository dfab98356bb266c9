"""Labelling datasets on disk, without Gradio: `storage` (folders, locks, revisions), `intake` (images in),
`interchange` (export and import), `payload` (checks of what a browser sends), `records` (what the files hold),
`propose` (a trained run's predictions as editable instances)."""

from .intake import DUPLICATE_NOTE, DuplicateImageError
from .payload import PayloadError, validate_instances
from .storage import ConflictError, LabelDataset, LabelStore

__all__ = [
    "DUPLICATE_NOTE",
    "ConflictError",
    "DuplicateImageError",
    "LabelDataset",
    "LabelStore",
    "PayloadError",
    "validate_instances",
]
