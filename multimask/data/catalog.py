"""Register multimask datasets in detectron2's DatasetCatalog and MetadataCatalog."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..io import read_json
from .dataset_json import dataset_meta, load_multimask_json


def register_multimask_dataset(
    name: str,
    json_file: str | Path,
    image_root: str | Path | None = None,
    mask_names: Sequence[str] | None = None,
    source: str | Path | None = None,
) -> None:
    """Register `name`: dicts loaded lazily from `json_file`, metadata (classes, mask names) now.

    The loader's messages name `source` when given (see `load_multimask_json`).

    Re-registering the same name replaces it.
    """
    json_file = Path(json_file).resolve()
    image_root = Path(image_root).resolve() if image_root is not None else json_file.parent
    meta = dataset_meta(read_json(json_file), json_file, mask_names)  # fails early on an unusable file
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(
        name, lambda: load_multimask_json(json_file, image_root, mask_names=mask_names, source=source)[0]
    )
    MetadataCatalog.get(name).set(
        json_file=str(json_file),
        image_root=str(image_root),
        evaluator_type="multimask",
        thing_classes=meta["thing_classes"],
        mask_names=meta["mask_names"],
        thing_dataset_id_to_contiguous_id=meta["thing_dataset_id_to_contiguous_id"],
    )
