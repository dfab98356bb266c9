"""A labelling dataset's interchange: export to the multimask COCO format (train / val split by image), and
import of multimask, COCO and labelme annotations (through `multimask.data.convert`), RLE traced to the editor's
polygons within its limits.

`Interchange` holds these methods of `LabelDataset` (storage.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import orjson
from shapely.geometry import Polygon

from multimask.data import convert
from multimask.data.dataset_json import (
    load_multimask_json,
    make_annotation,
    multimask_dicts,
    multimask_document,
    write_document,
)
from multimask.data.geometry import (
    Report,
    clean_polygons,
    flat_polygon,
    polygon_parts,
    traced_polygons,
)
from multimask.data.health import TINY_AREA, DatasetHealth, dataset_health
from multimask.data.import_report import ImportReport
from multimask.data.mapping import build_map
from multimask.data.split import check_val_fraction, seeded_val_ids
from multimask.io import atomic_write_bytes

from .intake import read_image_file, refuse_outside
from .payload import MAX_INSTANCES, MAX_PARTS, MAX_POINTS, PayloadError, validate_instances
from .records import annotation_bytes, check_class_name

logger = logging.getLogger(__name__)


MapPairs = Mapping[str, str] | Sequence[tuple[str, str]] | Sequence[str]  # see multimask.data.mapping


class Interchange:
    """Export and import of a `LabelDataset`."""

    def export(
        self,
        out_dir: str | Path,
        val_fraction: float = 0.2,
        seed: int = 0,
        only_done: bool = False,
        report: Report | None = None,
    ) -> dict[str, Path]:
        """Write `train.json` and `val.json` (`export_documents`) to `out_dir`, their `file_name`s relative to it
        (pointing into this dataset's images/); returns their paths."""
        docs = self.export_documents(val_fraction, seed, only_done, report)
        out_dir = Path(out_dir).resolve()
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {split: out_dir / f"{split}.json" for split in docs}
        for split, doc in docs.items():
            write_document(paths[split], doc)
        return paths

    def export_documents(
        self, val_fraction: float = 0.2, seed: int = 0, only_done: bool = False, report: Report | None = None
    ) -> dict[str, dict]:
        """The dataset as {"train": ..., "val": ...} multimask datasets (data; image paths absolute).

        Exported images: those with instances, and those marked "done" without any (checked negatives);
        images without instances that are not "done" are not labelled yet and are left out. With
        `only_done`, only "done" images. The split is by image: images are ordered by a hash of (seed, image
        id) and the first round(n * val_fraction) go to val, so one seed always gives the same split and
        adding images moves few others. Polygons that cross themselves are repaired on the way (recorded in
        `report`).
        """
        check_val_fraction(val_fraction)
        report = report if report is not None else Report()
        with self._state.lock:
            entries = [dict(e) for e in self._state.index]
            classes, names = self.classes, self.mask_names
        if not classes:
            raise ValueError(f"dataset {self.name!r} has no classes yet: add one before exporting")
        chosen = []
        for e in entries:
            if only_done and e["status"] != "done":
                continue
            instances = self._read_annotations(e["id"])["instances"]
            if instances or e["status"] == "done":
                chosen.append((e, instances))
        val_ids = seeded_val_ids([e["id"] for e, _ in chosen], val_fraction, seed)
        cat_ids = {c: i + 1 for i, c in enumerate(classes)}
        categories = [{"id": i, "name": c} for c, i in cat_ids.items()]
        docs = {}
        for split in ("train", "val"):
            images, anns = [], []
            for e, instances in chosen:  # index order within a split
                if (e["id"] in val_ids) != (split == "val"):
                    continue
                h, w = e["height"], e["width"]
                image_num = len(images) + 1
                images.append(
                    {
                        "id": image_num,
                        "file_name": str(self.image_path(e["id"])),
                        "height": h,
                        "width": w,
                        "label_id": e["id"],
                    }
                )
                for k, inst in enumerate(instances):
                    where = f"{self.name} image {e['id']} instance {k} (id {inst['id']!r})"
                    if inst["class"] not in cat_ids:
                        report.add("skipped annotations", where, f"unknown class {inst['class']!r}")
                        continue
                    masks = {
                        n: clean_polygons(inst["masks"].get(n, []), h, w, f"{where} mask '{n}'", report) for n in names
                    }
                    if not any(masks.values()):
                        report.add("skipped annotations", where, "no usable mask")
                        continue
                    anns.append(make_annotation(len(anns) + 1, image_num, cat_ids[inst["class"]], masks, h, w, names))
            docs[split] = multimask_document(
                images,
                categories,
                anns,
                names,
                info={
                    "description": f"exported from labelling dataset {self.name} ({split})",
                    "seed": seed,
                    "val_fraction": val_fraction,
                },
            )
        if report:
            logger.warning("%s export: %s", self.name, report.summary())
        return docs

    def health(self, tiny_area: float = TINY_AREA) -> DatasetHealth:
        """The health check (`multimask.data.health`) of the labelled images (those an export takes); each finding
        names the image by its id in this dataset and its file name."""
        doc = self.export_documents(val_fraction=0.0)["train"]
        dicts, meta = multimask_dicts(doc, "/", source=self.name, check_images=False)
        health = dataset_health(dicts, meta["thing_classes"], meta["mask_names"], tiny_area)
        ids = {img["id"]: (img["label_id"], Path(img["file_name"]).name) for img in doc["images"]}
        for f in health.findings:
            f.image_id, f.file_name = ids[f.image_id]
        return health

    def import_multimask(
        self,
        json_file: str | Path,
        image_root: str | Path | None = None,
        allowed_roots: Sequence[str | Path] | None = None,
    ) -> Report:
        """Add the images and instances of a multimask JSON (see datasets/README.md).

        Its mask names must be this dataset's (any order), else ValueError naming both lists. Images go
        through the `add_image_bytes` checks; RLE masks are traced to polygons (holes are lost: reported);
        unknown classes are added. Imported images with instances are marked "done", others "unlabelled".
        With `allowed_roots` (the app's), an image whose path, links resolved, lies outside all of them is
        skipped and reported by its file name (None: no check, for the command line). Returns what was
        skipped or repaired.
        """
        report = Report()
        dicts, meta = load_multimask_json(json_file, image_root, report=report, check_images=False)
        if set(meta["mask_names"]) != set(self.mask_names):
            raise ValueError(
                f"{json_file}: its mask names {meta['mask_names']} differ from this dataset's {self.mask_names}"
            )
        self._import_dicts(dicts, meta["thing_classes"], str(json_file), report, allowed_roots)
        return report

    def import_coco_fields(
        self,
        json_file: str | Path,
        field_map: MapPairs,
        image_root: str | Path | None = None,
        drop_classes: Sequence[str] = (),
        allowed_roots: Sequence[str | Path] | None = None,
    ) -> ImportReport:
        """Add a COCO JSON keeping each mask in its own field (`field_map`: fields -> mask names, see
        `multimask.data.convert.coco_fields_document`). Mask names must be this dataset's (ValueError naming
        both lists otherwise); a dataset mask name no field maps to stays empty. Images are looked up under
        `image_root`, by default the JSON's folder. As `import_multimask` otherwise; returns the import report.
        """
        self._check_targets(build_map(field_map, "field map", allow_class=False).mask_names, "field map")
        return self._import_converted(
            json_file,
            lambda report: convert.coco_fields_document(
                json_file, field_map, image_root=image_root, drop_classes=drop_classes, report=report
            ),
            allowed_roots,
        )

    def import_coco(
        self,
        json_file: str | Path,
        mask_name: str | None = None,
        image_root: str | Path | None = None,
        drop_classes: Sequence[str] = (),
        allowed_roots: Sequence[str | Path] | None = None,
    ) -> ImportReport:
        """Add a plain COCO JSON: each `segmentation` becomes mask `mask_name` (default: this dataset's first).
        As `import_coco_fields` otherwise."""
        name = mask_name or self.mask_names[0]
        self._check_targets([name], "mask name")
        return self._import_converted(
            json_file,
            lambda report: convert.coco_document(
                json_file, name, image_root=image_root, drop_classes=drop_classes, report=report
            ),
            allowed_roots,
        )

    def import_labelme(
        self,
        folder: str | Path,
        label_map: MapPairs | None = None,
        default_class: str | None = None,
        allowed_roots: Sequence[str | Path] | None = None,
    ) -> ImportReport:
        """Add a folder of labelme JSON files (see `multimask.data.convert.labelme_document`).

        The mask names that `label_map` maps to must be this dataset's (ValueError naming both lists
        otherwise); the class comes from `CLASS:MASK` targets or `default_class`. Without a map, labels
        "class/mask" are read and shapes of other mask names are skipped (reported). As `import_multimask`
        otherwise; returns the import report.
        """
        if label_map is not None:
            self._check_targets(build_map(label_map, "label map").mask_names, "label map")
        return self._import_converted(
            folder,
            lambda report: convert.labelme_document(
                folder, label_map, default_class=default_class, mask_names=self.mask_names, report=report
            ),
            allowed_roots,
        )

    def _import_converted(
        self,
        source: str | Path,
        convert_to: Callable[[ImportReport], dict],
        allowed_roots: Sequence[str | Path] | None,
    ) -> ImportReport:
        """Add the dataset a converter makes of `source` (image paths absolute); messages name `source`."""
        report = ImportReport()
        dicts, meta = multimask_dicts(convert_to(report), "/", source=source, report=report)
        self._import_dicts(dicts, meta["thing_classes"], str(source), report, allowed_roots)
        return report

    def _check_targets(self, targets: list, what: str) -> None:
        unknown = [t for t in targets if t not in self.mask_names]
        if unknown:
            raise ValueError(
                f"{what} maps to mask names {list(dict.fromkeys(targets))}; this dataset's mask names "
                f"are {self.mask_names} ({unknown} unknown)"
            )

    def _import_dicts(
        self,
        dicts: list[dict],
        classes: list[str],
        source: str,
        report: Report,
        allowed_roots: Sequence[str | Path] | None = None,
    ) -> None:
        """Copy the images of loaded dataset dicts in and write their instances (see `import_multimask`)."""
        roots = None if allowed_roots is None else [Path(r).resolve() for r in allowed_roots]
        names = self.mask_names
        class_map: list[str | None] = []
        for cls in classes:
            try:
                cls = check_class_name(cls)
            except ValueError as e:
                report.add("skipped classes", source, f"{e}: its instances are skipped")
                class_map.append(None)
                continue
            with self._locked():
                if cls not in self._state.meta["classes"]:
                    self.add_class(cls)
            class_map.append(cls)

        def items() -> Iterator[tuple[str, Callable[[], bytes], tuple[str, list[dict]]]]:
            for rec in dicts:
                path, where = Path(rec["file_name"]), f"{source} image {rec['image_id']!r}"
                if roots is not None and not any(path.resolve().is_relative_to(r) for r in roots):
                    yield path.name, refuse_outside, (where, [])
                    continue
                instances = _instances_of(rec, class_map, names, where, report)
                yield path.name, lambda p=path: read_image_file(p), (where, instances)

        def write(entry: dict, extra: tuple[str, list[dict]]) -> None:
            where, instances = extra
            try:
                instances = validate_instances(
                    instances,
                    classes=self._state.meta["classes"],
                    mask_names=names,
                    width=entry["width"],
                    height=entry["height"],
                )
            except PayloadError as e:
                report.add("skipped annotations", where, str(e))
                instances = []
            status = "done" if instances else "unlabelled"
            atomic_write_bytes(
                self.annotations_dir / f"{entry['id']}.json", annotation_bytes(1, status, orjson.dumps(instances))
            )
            entry["status"] = status

        for _, result in self._add_many(items(), after=write):
            if isinstance(result, str):
                report.add("skipped images", source, result)


def _fit_limits(parts: list[list[float]], where: str, report: Report) -> list[list[float]]:
    """Parts within the editor's limits: at most MAX_PARTS (the largest kept), MAX_POINTS points each."""
    if len(parts) > MAX_PARTS:
        parts = sorted(parts, key=lambda p: -Polygon(np.asarray(p).reshape(-1, 2)).area)[:MAX_PARTS]
        report.add("repaired masks", where, f"more than {MAX_PARTS} parts: the {MAX_PARTS} largest kept")
    out = []
    for part in parts:
        if len(part) // 2 > MAX_POINTS:
            poly, tol = max(polygon_parts(flat_polygon(part)), key=lambda p: p.area), 0.5
            coords = np.asarray(poly.exterior.coords)[:-1]
            while len(coords) > MAX_POINTS:
                coords = np.asarray(poly.simplify(tol).exterior.coords)[:-1]
                tol *= 2
            report.add("repaired masks", where, f"a part with {len(part) // 2} points simplified to {len(coords)}")
            part = [float(v) for v in coords.reshape(-1)]
        out.append(part)
    return out


def _instances_of(rec: dict, classes: list[str | None], names: list[str], where: str, report: Report) -> list[dict]:
    """Instance documents of one loaded dataset dict (RLE traced to polygons, editor limits applied)."""
    h, w = rec["height"], rec["width"]
    anns = rec["annotations"]
    if len(anns) > MAX_INSTANCES:
        report.add("skipped annotations", where, f"{len(anns) - MAX_INSTANCES} instances beyond {MAX_INSTANCES}")
        anns = anns[:MAX_INSTANCES]
    out = []
    for ann in anns:
        here = f"{where} annotation id={ann.get('id')}"
        cls = classes[ann["category_id"]]
        if cls is None:
            continue  # its class was reported
        masks = {}
        for name in names:
            segm = ann["multimask"].get(name) or []
            where = f"{here} mask '{name}'"
            segm = traced_polygons(segm, h, w, where, report, "the editor's", "skipped masks")
            masks[name] = [
                [round(min(max(v, 0.0), float(w if j % 2 == 0 else h)), 2) for j, v in enumerate(p)]
                for p in _fit_limits(segm, f"{here} mask '{name}'", report)
            ]
        if not any(masks.values()):
            report.add("skipped annotations", here, "no usable mask left")
            continue
        out.append({"id": f"i{len(out) + 1}", "class": cls, "masks": masks})
    return out
