"""The Label tab: datasets, images and classes on the left, the polygon editor on the right.

Gradio components handle the dataset-level work (create, upload, import/export, gallery); the editor's
server functions (`save_annotations`, `load_image`, `copy_previous`, `propose`) handle the per-image work.
Everything the browser sends is checked by the store (`LabelDataset.save` validates every payload).
"""

from __future__ import annotations

import json
import logging
import secrets
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import gradio as gr
import numpy as np
import pandas as pd

from multimask.data import convert
from multimask.data.health import RATIO_BINS
from multimask.data.images import read_image_bgr
from multimask.data.import_report import ImportReport
from multimask.data.mapping import split_pairs
from multimask.data.synth import generate_synthetic_dataset
from multimask.io import atomic_write_bytes

from ..core.assists import AssistService
from ..core.assists.sam import SamAssist, SamUnavailable
from ..core.datasets import DUPLICATE_NOTE, ConflictError, LabelDataset, LabelStore
from ..core.datasets.propose import propose
from ..core.models.predictors import PredictorCache
from ..core.models.runs import RunNotFoundError, find_runs, get_run
from ..core.roots import inside, locate, scrub, shown
from .editor import editor_document_dict, make_editor
from .gallery import gallery_value, make_gallery
from .review import ReviewQueue, build_review_panel
from .updates import choices_keeping

logger = logging.getLogger(__name__)

GALLERY_PAGE = 60  # thumbnails per gallery page: a 10,000-image dataset opens as fast as a small one
THUMB_SIZE = 192  # px, longest side of the gallery thumbnails (cached in <dataset>/thumbs/)
STATUS_FILTERS = ["all", "unlabelled", "in_progress", "done"]
DEFAULT_PROPOSE_THRESHOLD = 0.5
TOAST_CHARS = 300  # longer messages are cut in the toast; the panel next to the button has them whole
DEMO_NAME = "demo"
DEMO_LABELLED, DEMO_UNLABELLED = 24, 6  # synthetic images: labelled ones to train on, unlabelled ones to try


def _split_names(text: str) -> list[str]:
    return [t.strip() for t in (text or "").replace("\n", ",").split(",") if t.strip()]


def notify(message: str) -> str:
    """Show `message` as a toast at the top of the page (a warning when it starts with ⚠️); returns it."""
    bad = message.startswith("⚠️")
    parts = [t.removeprefix("⚠️").strip() for t in message.split("\n\n") if not t.startswith("```")]
    text = " ".join(parts).replace("**", "").replace("`", "")
    text = text if len(text) <= TOAST_CHARS else text[: TOAST_CHARS - 1] + "…"
    with warnings.catch_warnings():  # outside an event (tests), Gradio warns instead of showing a toast
        warnings.simplefilter("ignore")
        (gr.Warning if bad else gr.Info)(text, duration=8 if bad else 4)
    return message


def thumbnail(ds: LabelDataset, image_id: str) -> Path:
    """A small JPEG of the image for the gallery, made on first use (the gallery never ships full images)."""
    path = ds.folder / "thumbs" / f"{image_id}.jpg"
    if not path.is_file():
        try:
            img = read_image_bgr(ds.image_path(image_id), max_pixels=None)
        except ValueError:
            return ds.image_path(image_id)  # unreadable: let the gallery show what it can
        scale = THUMB_SIZE / max(img.shape[:2])
        if scale < 1:
            img = cv2.resize(
                img,
                (max(round(img.shape[1] * scale), 1), max(round(img.shape[0] * scale), 1)),
                interpolation=cv2.INTER_AREA,
            )
        ok, data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])
        if not ok:
            return ds.image_path(image_id)
        atomic_write_bytes(path, data.tobytes())
    return path


SECRET_FILE = ".browser-state-secret"  # in the runs root, which is not served (the data root is)


def browser_secret(folder: Path) -> str:
    """The key Gradio encrypts this app's browser-remembered values with, kept in `folder` (Gradio's default, a
    new key per start, made the Label tab forget its dataset and image at every restart)."""
    path = Path(folder) / SECRET_FILE
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        atomic_write_bytes(path, secrets.token_hex(32).encode("ascii"))
        path.chmod(0o600)
        return path.read_text(encoding="ascii").strip()


SUMMARY_SECONDS = 5.0  # the gallery's badges and the counts line follow other tabs' autosaves


def _doc_image(document: Any) -> tuple[str | None, str | None]:
    """(dataset, image id) named by an editor document (the editor component's value), else (None, None)."""
    try:
        doc = json.loads(document) if isinstance(document, str) and document else {}
    except ValueError:
        doc = {}
    doc = doc if isinstance(doc, dict) else {}
    dataset, image_id = doc.get("dataset"), doc.get("image_id")
    return (dataset if isinstance(dataset, str) else None), (image_id if isinstance(image_id, str) else None)


class LabelView:
    """Handlers of the Label tab, independent of the components so that tests can call them directly."""

    def __init__(
        self,
        data_root: str | Path,
        runs_root: str | Path,
        import_roots: list[str | Path] | None = None,
        predictors: PredictorCache | None = None,
        sam_checkpoint: str | Path | None = None,
    ):
        self.store = LabelStore(data_root)
        self.runs_root = Path(runs_root)
        # Server folders images and datasets may be imported from: the data root and what launch.py allows.
        self.import_roots = [Path(data_root).resolve()] + [Path(p).resolve() for p in import_roots or []]
        self.predictors = predictors or PredictorCache()
        self.assists = AssistService()
        self.review = ReviewQueue(self)
        if sam_checkpoint:  # the operator's own file (--sam-checkpoint): a failure is said, the app still starts
            self._start_sam(Path(sam_checkpoint))
        self._session_runs: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    # ----- documents -------------------------------------------------------------------------------------

    def _dataset(self, name: Any) -> LabelDataset:
        if not name:
            raise ValueError("choose or create a dataset first")
        return self.store.open(name)

    def document(self, ds: LabelDataset, image_id: str) -> dict:
        """The editor document of one image (a dict); ValueError naming an id the dataset does not have."""
        ann = ds.load(image_id)  # checks the id
        images = ds.images()
        pos = next((i for i, e in enumerate(images) if e["id"] == image_id), None)
        if pos is None:  # removed by another tab between the two reads
            raise ValueError(f"image {image_id!r} is not in dataset {ds.name!r}")
        entry = images[pos]
        return editor_document_dict(
            dataset=ds.name,
            image_id=image_id,
            image_url=f"/gradio_api/file={ds.image_path(image_id)}",
            width=entry["width"],
            height=entry["height"],
            classes=ds.classes,
            mask_names=ds.mask_names,
            instances=ann["instances"],
            revision=ann["revision"],
            status=ann["status"],
            rules=ds.meta["rules"],
            position=pos,
            count=len(images),
            file_name=entry["file_name"],
        )

    def _document_json(self, ds: LabelDataset, image_id: str | None) -> str:
        return json.dumps(self.document(ds, image_id), separators=(",", ":")) if image_id else ""

    # ----- editor server functions ------------------------------------------------------------------------

    def save_annotations(
        self, dataset: str, image_id: str, base_revision: int, instances: list, status: str | None
    ) -> dict:
        """Validate and store one image's instances unless another tab saved it meanwhile."""
        if not isinstance(base_revision, int) or isinstance(base_revision, bool):
            return {"ok": False, "conflict": False, "error": "base_revision must be an integer"}
        try:
            result = self._dataset(dataset).save(image_id, base_revision, instances, status)
        except ConflictError as e:
            return {"ok": False, "conflict": True, "error": str(e)}
        except ValueError as e:
            return {"ok": False, "conflict": False, "error": str(e)}
        return {"ok": True, **result}

    def load_image(self, dataset: str, image_id: str | None, direction: str | None) -> dict:
        """The document of `image_id`, or of its neighbour in `direction`."""
        ds = self._dataset(dataset)
        target = ds.next_image(image_id, direction) if direction else image_id
        if target is None:
            return {
                "ok": False,
                "error": {
                    "prev": "this is the first image",
                    "next": "this is the last image",
                    "next_unlabelled": "no other unlabelled image",
                }.get(direction or "", "no image"),
            }
        return self.document(ds, target)

    def assist(self, dataset: str, image_id: str, request: Any) -> dict:
        """A labelling assist's polygon parts on the image (see `app.core.assists.service` for requests)."""
        try:
            return self.assists.run(self._dataset(dataset).image_path(image_id), request)
        except ValueError as e:  # a bad request or image id, named
            return {"ok": False, "error": str(e)}

    def _start_sam(self, path: Path) -> str:
        from multimask.config import default_device

        try:
            self.assists.sam = SamAssist.from_checkpoint(path, self.predictors.device or default_device())
        except SamUnavailable as e:
            logger.warning("Segment-Anything is off: %s", e)
            self.assists.sam, self.assists.sam_note = None, str(e)
            return f"⚠️ {e}"
        return f"The **SAM** tool (S) uses {self.assists.sam.name}."

    def sam_status(self) -> str:
        """What the SAM tool uses, or what it needs."""
        sam = self.assists.sam
        return f"The **SAM** tool (S) uses {sam.name}." if sam else self._scrub(f"SAM is off. {self.assists.sam_note}")

    def load_sam(self, path: str) -> str:
        """Load a SAM checkpoint from a server folder this app may read (its weights only: no code runs)."""
        try:
            file, _ = self._allowed(path)
        except ValueError as e:
            return f"⚠️ {self._scrub(str(e))}"
        return self._scrub(self._start_sam(file))

    def copy_previous(self, dataset: str, image_id: str) -> dict:
        """The previous image's instances with fresh ids; `sources` maps each to its id there."""
        sources: dict[str, str] = {}
        instances = self._dataset(dataset).previous_instances(image_id, sources)
        return {"ok": True, "instances": instances, "sources": sources}

    def propose(self, dataset: str, image_id: str, request: gr.Request | None = None) -> dict:
        """The chosen run's predictions on the image as instances (the run chosen in this browser tab), leaving
        out objects the image already has; `notes` say what was left out or could not be mapped."""
        ds = self._dataset(dataset)
        with self._lock:
            choice = self._session_runs.get(getattr(request, "session_hash", None) or "")
        if choice is None:
            return {"ok": False, "error": "choose a trained run under 'Model-assisted labelling' first"}
        run_name, threshold = choice
        try:
            run = get_run(self.runs_root, run_name)
        except RunNotFoundError as e:
            return {"ok": False, "error": str(e)}
        try:  # as training and predict read it
            img = read_image_bgr(ds.image_path(image_id), max_pixels=None)
        except ValueError:
            return {"ok": False, "error": f"cannot read the image of {image_id}"}
        predictor = self.predictors.get(run)
        instances, notes = propose(
            predictor,
            img,
            threshold,
            ds.mask_names,
            ds.classes,
            ds.load(image_id)["instances"],
            self.predictors.inference_lock,
        )
        if not instances and not notes:
            return {"ok": False, "error": f"the model found nothing scoring at least {threshold:.2f}"}
        return {"ok": True, "instances": instances, "notes": notes}

    # ----- runs for Propose ---------------------------------------------------------------------------------

    def choose_run(self, run_name: str | None, threshold: Any, request: gr.Request) -> str:
        """Remember this browser tab's run and score threshold for Propose."""
        try:
            threshold = min(max(float(threshold), 0.0), 1.0)
        except (TypeError, ValueError):
            threshold = DEFAULT_PROPOSE_THRESHOLD
        with self._lock:
            if run_name:
                self._session_runs[request.session_hash] = (run_name, threshold)
            else:
                self._session_runs.pop(request.session_hash, None)
        return (
            f"Propose uses **{run_name}** at score >= {threshold:.2f}."
            if run_name
            else "Choose a run to enable **Propose** in the editor."
        )

    def run_choices(self) -> list[str]:
        return [r.name for r in find_runs(self.runs_root)]

    def refresh_runs(self, current: str | None) -> Any:
        """The run list again (runs trained since the page opened), keeping the chosen one if it still exists."""
        runs = self.run_choices()
        return choices_keeping(runs, current, runs, None)

    # ----- datasets -----------------------------------------------------------------------------------------

    def dataset_choices(self) -> list[str]:
        return self.store.list_datasets()

    def create_dataset(self, name: str, classes_text: str, masks_text: str):
        """(dataset dropdown, message); the tab then opens the new dataset."""
        try:
            ds = self.store.create(
                (name or "").strip(), _split_names(classes_text), _split_names(masks_text) or ["primary", "secondary"]
            )
        except ValueError as e:
            return gr.update(), notify(f"⚠️ {e}")
        return gr.update(choices=self.dataset_choices(), value=ds.name), notify(
            f"Created **{ds.name}**: add images under **Images**."
        )

    def create_demo(self):
        """(dataset dropdown, message): a synthetic dataset with known truth, most of it labelled, named `demo`
        (`demo2`, ... when taken)."""
        try:
            with tempfile.TemporaryDirectory(prefix="multimask-demo-") as tmp:
                paths = generate_synthetic_dataset(tmp, DEMO_LABELLED, DEMO_UNLABELLED, seed=0)
                classes = [c["name"] for c in json.loads(Path(paths["train"]).read_text())["categories"]]
                ds = self._create_unused(DEMO_NAME, classes)
                ds.import_multimask(paths["train"])
                for image in sorted(Path(paths["images"]).glob("val_*")):
                    ds.add_image_bytes(image.name, image.read_bytes())
        except (ValueError, OSError) as e:
            return gr.update(), notify(f"⚠️ The demo dataset could not be made: {e}")
        for entry in ds.images():
            thumbnail(ds, entry["id"])
        return gr.update(choices=self.dataset_choices(), value=ds.name), notify(
            f"Created **{ds.name}**: {DEMO_LABELLED} labelled synthetic images (shapes with a primary mask and, "
            f"on most, a secondary part) and {DEMO_UNLABELLED} unlabelled ones to try the editor on. Train on it "
            "in the **Train** tab with the tiny starting point."
        )

    def _create_unused(self, stem: str, classes: list[str]) -> LabelDataset:
        """A new dataset called `stem`, else `stem2`, `stem3`, ...: the first name no dataset has (two clicks at
        once get two datasets)."""
        for k in range(1, 1000):
            name = stem if k == 1 else f"{stem}{k}"
            if name in self.dataset_choices():
                continue
            try:
                return self.store.create(name, classes)
            except ValueError:
                if name not in self.dataset_choices():
                    raise  # refused for another reason than a name taken meanwhile
        raise ValueError(f"every name from {stem} to {stem}999 is taken")

    def open_dataset(self, name: str | None, status_filter: str, page: Any, last: dict | None = None):
        """(gallery, rename dropdown, editor document, summary, page field): the dataset with the editor on the
        image this browser tab showed last, else the first image of the gallery."""
        if not name:
            return (
                gallery_value(None, [], []),
                gr.update(choices=[]),
                "",
                "Create or choose a dataset.",
                gr.update(visible=False, value=1),
            )
        try:
            ds = self._dataset(name)
        except ValueError as e:
            return (
                gallery_value(None, [], []),
                gr.update(choices=[]),
                "",
                notify(f"⚠️ {e}"),
                gr.update(visible=False, value=1),
            )
        gallery, ids, page_field, summary = self._gallery(ds, status_filter, page)
        first = ids[0] if ids else None
        known = {e["id"] for e in ds.images()}
        if isinstance(last, dict) and last.get("dataset") == name and last.get("image_id") in known:
            first = last["image_id"]
        elif first is None and known:
            first = ds.images()[0]["id"]
        return gallery, gr.update(choices=ds.classes, value=None), self._document_json(ds, first), summary, page_field

    def _gallery(self, ds: LabelDataset, status_filter: str, page: Any) -> tuple[str, list[str], Any, str]:
        """(gallery value, ids shown, page field update, summary) of one page of the filtered images."""
        images = ds.images()
        shown = [e for e in images if status_filter in (None, "all") or e["status"] == status_filter]
        pages = max((len(shown) + GALLERY_PAGE - 1) // GALLERY_PAGE, 1)
        try:
            page = min(max(int(page or 1), 1), pages)
        except (TypeError, ValueError):
            page = 1
        chunk = shown[(page - 1) * GALLERY_PAGE : page * GALLERY_PAGE]
        value = gallery_value(ds.name, chunk, [thumbnail(ds, e["id"]) for e in chunk])
        return (
            value,
            [e["id"] for e in chunk],
            gr.update(visible=pages > 1, maximum=pages, value=page, label=f"Page (of {pages})"),
            _summary(ds, images),
        )

    def refresh_gallery(self, name: str | None, status_filter: str, page: Any, shown: str | None = None):
        """(gallery, summary, page field), for the filter, the pager, the timer and after changes; the gallery
        only when it changed since `shown` (an unchanged value would redraw it for nothing)."""
        if not name or name not in self.dataset_choices():
            return gr.skip(), gr.skip(), gr.skip()
        value, _, page_field, summary = self._gallery(self._dataset(name), status_filter, page)
        if value == shown:  # nothing new: leave the page field alone too (the user may be typing in it)
            return gr.skip(), summary, gr.skip()
        return value, summary, page_field

    def restore(self, last: dict | None):
        """On page load and ↻: the datasets created meanwhile, with this browser tab's dataset chosen."""
        names = self.dataset_choices()
        wanted = last.get("dataset") if isinstance(last, dict) else None
        return gr.update(choices=names, value=wanted if wanted in names else (names[0] if names else None))

    @staticmethod
    def remember(name: str | None, document: str | None) -> dict:
        """What to reopen after a reload: the dataset chosen (also one without images) and the editor's image."""
        dataset, image_id = _doc_image(document)
        return {"dataset": dataset or name, "image_id": image_id if dataset in (None, name) else None}

    def current_image(self, document: str | None) -> str:
        """The line that names the editor's image (what Remove acts on)."""
        dataset, image_id = _doc_image(document)
        try:
            entry = next(e for e in self._dataset(dataset).images() if e["id"] == image_id)
        except (ValueError, StopIteration):
            return "No image open."
        return f"Open in the editor: **{entry['file_name']}**"

    # ----- health check -----------------------------------------------------------------------------------

    def check_health(self, name: str | None) -> tuple[str, Any, pd.DataFrame]:
        """The health panel: (findings by kind, the findings to open one by one, part-to-object area ratios)."""
        try:
            health = self._dataset(name).health()
        except ValueError as e:
            return notify(f"⚠️ {e}"), gr.update(choices=[], value=None), _ratio_frame({})
        lines = [
            f"- **{kind}**: {len(found)} in {len({f.image_id for f in found})} image(s)"
            for kind, found in health.by_kind().items()
        ]
        head = f"Checked {health.images} labelled image(s). " + (
            "Pick a finding below to open its image." if lines else "No findings."
        )
        lines += ["", _counts_table(health.counts, health.mask_names)]
        choices = [
            (
                f"{f.kind} · {f.file_name}" + (f" · instance #{f.instance + 1}" if f.instance is not None else ""),
                f"{f.image_id}:{i}",
            )
            for i, f in enumerate(health.findings)
        ]
        return "\n".join([head, *lines]), gr.update(choices=choices, value=None), _ratio_frame(health.ratios)

    def open_finding(self, name: str | None, finding: str | None) -> Any:
        """The editor showing the image of a finding picked in the health panel (its value: "<image id>:<n>")."""
        if not isinstance(finding, str) or ":" not in finding:
            return gr.skip()
        try:
            return self._document_json(self._dataset(name), finding.rpartition(":")[0])
        except ValueError as e:
            gr.Warning(str(e))
            return gr.skip()

    # ----- images -----------------------------------------------------------------------------------------

    def upload(self, name: str, files: list | None):
        """(message, editor document): the first added image opens in the editor."""
        if not files:
            return notify("⚠️ No files were uploaded."), gr.skip()
        try:
            ds = self._dataset(name)
        except ValueError as e:
            return notify(f"⚠️ {e}"), gr.skip()
        added, errors = [], []
        for f in files:
            path = Path(f if isinstance(f, (str, Path)) else getattr(f, "name", ""))  # gr.File: paths
            try:
                added.append(ds.add_image_bytes(path.name, path.read_bytes())["id"])
                thumbnail(ds, added[-1])  # the gallery's, made now
            except ValueError as e:  # its message names the file
                errors.append(str(e))
            except OSError as e:
                errors.append(f"{path.name}: {e.strerror or e}")
        return self._added(ds, added, errors, "")

    def add_folder(self, name: str, folder: str):
        """(message, editor document): as `upload`, for the image files of a server folder."""
        try:
            ds = self._dataset(name)
            folder, root = self._allowed(folder)
            added, errors = ds.add_images_from_folder(folder, root)
        except ValueError as e:
            return notify(f"⚠️ {self._scrub(str(e))}"), gr.skip()
        for entry in added:
            thumbnail(ds, entry["id"])
        return self._added(
            ds, [e["id"] for e in added], [self._scrub(e) for e in errors], f" from {shown(folder, self.import_roots)}"
        )

    def _added(self, ds: LabelDataset, added: list[str], errors: list[str], where: str):
        """(message, editor document of the first image added): counts, then what was refused and why."""
        duplicates = [e.partition(":")[0] for e in errors if e.endswith(DUPLICATE_NOTE)]
        errors = [e for e in errors if not e.endswith(DUPLICATE_NOTE)]
        text = f"Added {len(added)} image(s){where}."
        if duplicates:
            text += (
                f" Skipped {len(duplicates)} already in the dataset (the same image, under any name): "
                f"{', '.join(duplicates[:10])}{' …' if len(duplicates) > 10 else ''}."
            )
        text += "".join(f"\n\n⚠️ {e}" for e in errors[:20])
        if len(errors) > 20:
            text += f"\n\n⚠️ … and {len(errors) - 20} more refused."
        if (errors or duplicates) and not added:
            text = "⚠️ " + text
        return notify(text), (self._document_json(ds, added[0]) if added else gr.skip())

    def _allowed(self, path: str) -> tuple[Path, Path]:
        """(the folder or file a typed path names, resolved; its import root): typed as a server path or from a
        root's folder name (`incoming/batch1`, as messages name it); ValueError when it is outside them all."""
        located = locate((path or "").strip(), self.import_roots) if isinstance(path, str) else Path()
        resolved = inside(located, self.import_roots) if str(located) not in ("", ".") else None
        if resolved is None:
            where = ", ".join(f"{shown(r, self.import_roots)}/" for r in self.import_roots)
            raise ValueError(
                f"{path!r} is outside the folders this app may read ({where}); the server's "
                "operator can add one with --import-root"
            )
        return resolved, next(r for r in self.import_roots if resolved.is_relative_to(r))

    def _scrub(self, message: str) -> str:
        """`message` with server paths named from their folder (`datasets/leaves/...`), never absolute."""
        return scrub(message, [*self.import_roots, self.runs_root])

    def remove_image(self, name: str, document: str | None, confirmed: bool):
        """(message, confirm box, editor document): removes the image open in the editor, then shows its
        neighbour."""
        dataset, image_id = _doc_image(document)
        if not image_id or dataset != name:
            return notify("⚠️ Open the image to remove in the editor first."), gr.update(), gr.skip()
        try:
            ds = self._dataset(name)
            entry = next((e for e in ds.images() if e["id"] == image_id), None)
            if entry is None:
                return notify("⚠️ That image is not in the dataset any more."), gr.update(), gr.skip()
            if not confirmed:
                return (
                    notify(f"⚠️ Tick **confirm** to remove {entry['file_name']} and its annotations."),
                    gr.update(),
                    gr.skip(),
                )
            neighbour = ds.next_image(image_id, "next") or ds.next_image(image_id, "prev")
            ds.remove_image(image_id)  # checks the id
        except ValueError as e:
            return notify(f"⚠️ {e}"), gr.update(), gr.skip()
        (ds.folder / "thumbs" / f"{image_id}.jpg").unlink(missing_ok=True)
        return (
            notify(f"Removed {entry['file_name']} and its annotations."),
            gr.update(value=False),
            self._document_json(ds, neighbour),
        )

    # ----- classes, import and export -----------------------------------------------------------------------

    def add_class(self, name: str, cls: str):
        try:
            ds = self._dataset(name)
            ds.add_class((cls or "").strip())
        except ValueError as e:
            return notify(f"⚠️ {e}"), gr.update()
        return notify(f"Added class **{cls.strip()}**."), gr.update(choices=ds.classes)

    def rename_class(self, name: str, old: str, new: str):
        try:
            ds = self._dataset(name)
            ds.rename_class(old, (new or "").strip())
        except ValueError as e:
            return notify(f"⚠️ {e}"), gr.update()
        return notify(f"Renamed **{old}** to **{new.strip()}** in every image."), gr.update(
            choices=ds.classes, value=None
        )

    def import_data(self, name: str, kind: str, path: str, image_root: str, mapping: str, cls: str = ""):
        """Import a multimask JSON, a (plain or per-field) COCO JSON or a labelme folder; show the report.

        `mapping` holds KEY=TARGET pairs separated by commas or new lines (see multimask/data/mapping.py):
        fields or labels -> mask names, repeated keys add; for plain COCO, the mask name of `segmentation`.
        `cls` is the class of labelme instances whose labels name none.
        """
        try:
            ds = self._dataset(name)
            path = self._allowed(path)[0]
            image_root = self._allowed(image_root)[0] if image_root else None
            roots = self.import_roots  # every image the file names must lie inside one of them
            if kind == "multimask JSON":
                report = ds.import_multimask(path, image_root or None, allowed_roots=roots)
            elif kind == "COCO":
                report = ds.import_coco(path, (mapping or "").strip() or None, image_root or None, allowed_roots=roots)
            elif kind == "COCO with mask fields":
                report = ds.import_coco_fields(
                    path, split_pairs(mapping, "Field map"), image_root or None, allowed_roots=roots
                )
            else:
                pairs = split_pairs(mapping, "Label map")
                report = ds.import_labelme(path, pairs or None, (cls or "").strip() or None, allowed_roots=roots)
        except ValueError as e:
            return notify(f"⚠️ {self._scrub(str(e))}")
        table = f"{report.table()}\n\n" if isinstance(report, ImportReport) else ""
        return notify(self._scrub(f"Imported from {path}.\n\n```\n{table}{report.summary(max_messages=30)}\n```"))

    def export(
        self, name: str, folder_name: str, val_fraction: float, seed: int, only_done: bool, labelme: bool = False
    ):
        """Multimask COCO train/val files (seeded split) in the dataset's exports/, plus labelme if asked."""
        try:
            ds = self._dataset(name)
            out = _export_folder(ds, folder_name)
            paths = ds.export(out, float(val_fraction), int(seed), bool(only_done))
            notes = ""
            if labelme:
                for split in ("train", "val"):
                    report = convert.export_labelme(paths[split], out / f"labelme_{split}")
                    notes += f"\n- labelme {split}: `{out / f'labelme_{split}'}` ({report.summary(max_messages=3)})"
        except (ValueError, TypeError) as e:
            return notify(f"⚠️ {self._scrub(str(e))}")
        return notify(
            self._scrub(
                f"Exported {ds.name} (multimask COCO format, seeded split).\n\n"
                + "\n".join(f"- {k}: `{v}`" for k, v in paths.items())
                + notes
                + f"\n\nTrain on it: `python -m multimask train --train-json {paths.get('train')} "
                f"--val-json {paths.get('val')}`"
            )
        )


_RATIO_EDGES = [*RATIO_BINS, np.inf]
RATIO_LABELS = [f"{a:g}-{b:g}" if np.isfinite(b) else f">{a:g}" for a, b in zip(_RATIO_EDGES, _RATIO_EDGES[1:])]


def _counts_table(counts: dict[str, dict[str, int]], mask_names: list[str]) -> str:
    """Instances per class (their share: the class balance) and how many have each mask, as a Markdown table."""
    total = sum(c["instances"] for c in counts.values()) or 1
    rows = [
        f"| {cls} | {c['instances']} | {c['instances'] / total:.0%} | "
        + " | ".join(str(c[n]) for n in mask_names)
        + " |"
        for cls, c in counts.items()
    ]
    head = "| class | instances | share | " + " | ".join(mask_names) + " |"
    return "\n".join([head, "|---" * (3 + len(mask_names)) + "|", *rows])


def _ratio_frame(ratios: dict[str, list[float]]) -> pd.DataFrame:
    """Instances per part-to-object area ratio bin (`multimask.data.health.RATIO_BINS`) and class, for a bar plot."""
    rows = [
        {"ratio": label, "instances": int(n), "class": cls}
        for cls, values in ratios.items()
        if values
        for label, n in zip(RATIO_LABELS, np.histogram(values, bins=_RATIO_EDGES)[0])
    ]
    return pd.DataFrame(rows, columns=["ratio", "instances", "class"])


def _export_folder(ds: LabelDataset, folder_name: Any) -> Path:
    """`<dataset>/exports/<folder_name>`; ValueError for a name that is not a plain folder name, or when exports/
    or the folder is a link leading elsewhere (resolved paths are compared)."""
    name = (folder_name or "export").strip() if isinstance(folder_name, str) else ""
    exports = ds.folder / "exports"
    if not name or name.startswith(".") or Path(name).name != name:
        raise ValueError(f"export name {folder_name!r} must be a plain folder name")
    if exports.resolve() != exports or (exports / name).resolve() != exports / name:
        raise ValueError(f"{ds.name}/exports/{name} is a link leading elsewhere: export refused")
    return exports / name


def _summary(ds: LabelDataset, images: list[dict]) -> str:
    counts = {s: sum(e["status"] == s for e in images) for s in STATUS_FILTERS[1:]}
    return (
        f"**{ds.name}**: {len(images)} images ({counts['unlabelled']} unlabelled, "
        f"{counts['in_progress']} in progress, {counts['done']} done) · classes: "
        f"{', '.join(ds.classes) or '(none: add one under Classes)'} · masks: {', '.join(ds.mask_names)}"
    )


HOW_TO = """\
**Label** two related masks per object (an object and its part, or its full and visible extent):

1. Create a dataset (its classes and mask names), or the demo dataset below.
2. Add images: drop files under **Images**, or import a labelled dataset under **Import / export**.
3. In the editor, click around an object to draw its **primary** polygon (close it on the first point, with
   Enter or a double-click); press **2** and draw its **secondary**. The next polygon starts a new object.
   Faster: press **B** and drag a box around the object, then **I** for its part inside it (click to include,
   Shift+click to exclude). Everything saves by itself; **A** / **D** go to the previous / next image.
4. **Train** a model in the next tab; use it here with **Propose** to pre-label the remaining images.
"""


@dataclass(frozen=True)
class LabelTab:
    """The Label tab's handles: its handlers, the editor, and the run picker of Propose with its panel (the Train
    tab's "Use for labelling" sets the run and opens the panel)."""

    view: LabelView
    editor: gr.HTML
    run: gr.Dropdown
    propose_panel: gr.Accordion


def build_label_tab(demo: gr.Blocks, view: LabelView, tab: gr.Tab) -> LabelTab:
    """Add the Label tab's components and events to the current Blocks (inside `tab`); returns its handles.

    A narrow column of panels (gallery first, the rest folded) beside the editor, which fills the rest of the
    window and stays in view while the column scrolls. Results show as toasts and next to their button.
    """
    datasets = view.dataset_choices()
    with gr.Row(elem_id="mm-label-row", equal_height=False):
        with gr.Column(scale=1, min_width=300, elem_id="mm-label-side"):
            with gr.Row():
                dataset = gr.Dropdown(datasets, value=None, label="Dataset", scale=4, elem_id="mm-label-dataset")
                refresh = gr.Button("↻", scale=0, min_width=40, elem_id="mm-label-refresh")
            summary = gr.Markdown(elem_id="mm-label-summary")
            with gr.Accordion("Getting started", open=not datasets, elem_id="mm-label-howto"):
                gr.Markdown(HOW_TO)
                demo_button = gr.Button("Create a demo dataset", size="sm", elem_id="mm-label-demo")
            with gr.Accordion("New dataset", open=not datasets):
                new_name = gr.Textbox(label="Name", placeholder="leaves")
                new_classes = gr.Textbox(label="Classes (comma separated)", placeholder="leaf, fruit")
                new_masks = gr.Textbox(label="Mask names", value="primary, secondary")
                create = gr.Button("Create dataset", size="sm")
                created = gr.Markdown()
            with gr.Accordion("Images", open=True):
                status_filter = gr.Dropdown(
                    [(s.replace("_", " "), s) for s in STATUS_FILTERS],
                    value="all",
                    label="Show",
                    elem_id="mm-label-filter",
                )
                gallery = make_gallery()
                page = gr.Number(1, label="Page", precision=0, minimum=1, visible=False)
                with gr.Row(equal_height=True):
                    current = gr.Markdown("No image open.", elem_id="mm-label-current")
                with gr.Row(equal_height=True):
                    confirm = gr.Checkbox(label="confirm", scale=1, min_width=80)
                    remove = gr.Button(
                        "Remove this image", variant="stop", size="sm", scale=2, elem_id="mm-label-remove"
                    )
                upload = gr.File(
                    label="Add images (drop files here)",
                    file_count="multiple",
                    file_types=["image"],
                    height=110,
                    elem_id="mm-upload",
                )
                with gr.Row(equal_height=True):
                    folder = gr.Textbox(
                        label="Add a server folder", placeholder="/path/inside/an/allowed/folder", scale=3
                    )
                    add_folder = gr.Button("Add", scale=1, size="sm")
                images_message = gr.Markdown(elem_id="mm-label-images-message")
            with gr.Accordion("Classes", open=False):
                with gr.Row(equal_height=True):
                    new_class = gr.Textbox(label="New class", scale=3)
                    add_class = gr.Button("Add", scale=1, size="sm")
                with gr.Row(equal_height=True):
                    old_class = gr.Dropdown([], label="Rename", scale=2)
                    renamed = gr.Textbox(label="to", scale=2)
                    rename = gr.Button("Rename", scale=1, size="sm")
                classes_message = gr.Markdown()
            with gr.Accordion("Health check", open=False):
                check = gr.Button("Check the dataset", size="sm", elem_id="mm-health-check")
                health_summary = gr.Markdown(elem_id="mm-health-summary")
                finding = gr.Dropdown(
                    [], value=None, label="Findings (pick one to open its image)", elem_id="mm-health-findings"
                )
                ratio_plot = gr.BarPlot(
                    _ratio_frame({}),
                    x="ratio",
                    y="instances",
                    color="class",
                    label="Part-to-object area ratio",
                    x_label_angle=-45,
                    sort=RATIO_LABELS,
                )
            with gr.Accordion("Model-assisted labelling", open=False) as propose_panel:
                runs = view.run_choices()
                run = gr.Dropdown(runs, value=None, label="Run used by Propose", elem_id="mm-label-run")
                threshold = gr.Slider(
                    0.05,
                    1.0,
                    value=DEFAULT_PROPOSE_THRESHOLD,
                    step=0.05,
                    label="Score threshold",
                    elem_id="mm-label-threshold",
                )
                run_info = gr.Markdown("Choose a run to enable **Propose** in the editor.")
                with gr.Row(equal_height=True):
                    sam_path = gr.Textbox(
                        label="SAM checkpoint (a server file)",
                        placeholder="models/sam_vit_b_01ec64.pth",
                        scale=3,
                        elem_id="mm-sam-path",
                    )
                    sam_load = gr.Button("Load", size="sm", scale=1, elem_id="mm-sam-load")
                sam_info = gr.Markdown(view.sam_status(), elem_id="mm-sam-info")
                wire_review = build_review_panel(view.review, dataset, run, threshold)
            with gr.Accordion("Import / export", open=False):
                kind = gr.Radio(
                    ["multimask JSON", "COCO", "COCO with mask fields", "labelme folder"],
                    value="multimask JSON",
                    label="Import",
                )
                import_path = gr.Textbox(label="File or folder on the server")
                import_root = gr.Textbox(label="Image folder (optional)")
                mapping = gr.Textbox(
                    label="Field or label map (COCO: the mask name)",
                    placeholder="Head_a=primary, Head_b=primary, Head_b=secondary "
                    "(A+B=primary unites; repeated keys add)",
                )
                import_class = gr.Textbox(label="Class (labelme, when the map names none)")
                do_import = gr.Button("Import", size="sm")
                with gr.Row():
                    export_name = gr.Textbox(value="export", label="Export name", scale=2)
                    val_fraction = gr.Number(0.2, label="val fraction", minimum=0, maximum=0.9, scale=1)
                    seed = gr.Number(0, label="seed", precision=0, scale=1)
                gr.Markdown(
                    "Export writes train/val files for the command line. The **Train** tab makes its own "
                    "split of the dataset with its own validation fraction; it does not use exports.",
                    elem_classes=["mm-note"],
                )
                with gr.Row():
                    only_done = gr.Checkbox(label="only images marked done")
                    as_labelme = gr.Checkbox(label="also as labelme folders")
                do_export = gr.Button("Export", size="sm")
                io_message = gr.Markdown()
        with gr.Column(scale=4, elem_id="mm-label-main"):
            editor = make_editor(
                [view.save_annotations, view.load_image, view.copy_previous, view.propose, view.assist]
            )
    wire_review(editor)
    last = gr.BrowserState(
        {"dataset": None, "image_id": None}, storage_key="multimask-label", secret=browser_secret(view.runs_root)
    )

    private = {"api_visibility": "private"}
    opened = {
        "fn": view.open_dataset,
        "inputs": [dataset, status_filter, page, last],
        "outputs": [gallery, old_class, editor, summary, page],
        **private,
    }
    regallery = {
        "fn": view.refresh_gallery,
        "inputs": [dataset, status_filter, page, gallery],
        "outputs": [gallery, summary, page],
        "show_progress": "hidden",
        **private,
    }
    # The dataset is opened explicitly after each change of it (a programmatic value that equals the old one
    # fires no change event: after a restart the tab stayed empty).
    dataset.input(**opened)
    demo.load(view.restore, [last], dataset, **private).then(**opened)
    refresh.click(view.restore, [last], dataset, **private).then(**opened).then(
        view.refresh_runs, [run], run, **private
    )
    editor.change(view.remember, [dataset, editor], last, **private)
    editor.change(view.current_image, [editor], current, show_progress="hidden", **private)
    status_filter.change(**regallery)
    page.submit(**regallery)
    create.click(
        view.create_dataset, [new_name, new_classes, new_masks], [dataset, created], api_name="create_dataset"
    ).then(**opened)
    demo_button.click(view.create_demo, None, [dataset, created], api_name="create_demo").then(**opened)
    upload.upload(view.upload, [dataset, upload], [images_message, editor], api_name="upload_images").then(**regallery)
    add_folder.click(view.add_folder, [dataset, folder], [images_message, editor], api_name="add_folder").then(
        **regallery
    )
    remove.click(
        view.remove_image, [dataset, editor, confirm], [images_message, confirm, editor], api_name="remove_image"
    ).then(**regallery)
    add_class.click(view.add_class, [dataset, new_class], [classes_message, old_class], api_name="add_class").then(
        **opened
    )
    rename.click(
        view.rename_class, [dataset, old_class, renamed], [classes_message, old_class], api_name="rename_class"
    ).then(**opened)
    for trigger in (run.change, threshold.change):
        trigger(view.choose_run, [run, threshold], run_info, **private)
    propose_panel.expand(view.refresh_runs, [run], run, **private)
    sam_load.click(view.load_sam, [sam_path], sam_info, api_name="load_sam")
    tab.select(view.refresh_runs, [run], [run], **private)
    do_import.click(
        view.import_data,
        [dataset, kind, import_path, import_root, mapping, import_class],
        io_message,
        api_name="import_data",
    ).then(**opened)
    do_export.click(
        view.export,
        [dataset, export_name, val_fraction, seed, only_done, as_labelme],
        io_message,
        api_name="export_data",
    )
    check.click(view.check_health, [dataset], [health_summary, finding, ratio_plot], api_name="health_check")
    finding.input(view.open_finding, [dataset, finding], editor, **private)
    gr.Timer(SUMMARY_SECONDS).tick(**regallery)
    return LabelTab(view, editor, run, propose_panel)
