"""Labelling datasets for the Label tab: storage (`store`) and checks of what the browser sends (`payload`)."""

from .payload import PayloadError, validate_instances
from .store import ConflictError, LabelDataset, LabelStore

__all__ = ["ConflictError", "LabelDataset", "LabelStore", "PayloadError", "validate_instances"]
