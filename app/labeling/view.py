"""The Label tab: datasets, images and classes on the left, the polygon editor on the right.

Gradio components handle the dataset-level work (create, upload, import/export, gallery); the editor's
server functions (`save_annotations`, `load_image`, `copy_previous`, `propose`) handle the per-image work.
Everything the browser sends is checked by the store (`LabelDataset.save` validates every payload).
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import cv2
import gradio as gr

from multimask.data import convert
from multimask.data.images import read_image_bgr
from multimask.io import atomic_write_bytes

from ..predict_view import PredictorCache
from ..runs import RunNotFoundError, find_runs, get_run
from .editor import editor_document_dict, make_editor
from .propose import propose
from .store import ConflictError, LabelDataset, LabelStore

logger = logging.getLogger(__name__)

GALLERY_PAGE = 60  # thumbnails per gallery page: a 10,000-image dataset opens as fast as a small one
THUMB_SIZE = 192  # px, longest side of the gallery thumbnails (cached in <dataset>/thumbs/)
STATUS_FILTERS = ["all", "unlabelled", "in_progress", "done"]
DEFAULT_PROPOSE_THRESHOLD = 0.5


def _split_names(text: str) -> list[str]:
    return [t.strip() for t in (text or "").replace("\n", ",").split(",") if t.strip()]


def _pairs(text: str) -> dict[str, str]:
    out = {}
    for item in _split_names(text):
        key, sep, val = item.partition("=")
        if not sep or not key.strip() or not val.strip():
            raise ValueError(f"expected KEY=VALUE pairs separated by commas, got {item!r}")
        out[key.strip()] = val.strip()
    return out


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
            img = cv2.resize(img, (max(round(img.shape[1] * scale), 1), max(round(img.shape[0] * scale), 1)),
                             interpolation=cv2.INTER_AREA)
        ok, data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])
        if not ok:
            return ds.image_path(image_id)
        atomic_write_bytes(path, data.tobytes())
    return path


SUMMARY_SECONDS = 5.0  # the dataset's counts line follows the editor's autosaves


class LabelView:
    """Handlers of the Label tab, independent of the components so that tests can call them directly."""

    def __init__(self, data_root: str | Path, runs_root: str | Path, import_roots: list[str | Path] | None = None,
                 predictors: PredictorCache | None = None):
        self.store = LabelStore(data_root)
        self.runs_root = Path(runs_root)
        # Server folders images and datasets may be imported from: the data root and what launch.py allows.
        self.import_roots = [Path(data_root).resolve()] + [Path(p).resolve() for p in import_roots or []]
        self.predictors = predictors or PredictorCache()
        self._session_runs: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    # ----- documents -------------------------------------------------------------------------------------

    def _dataset(self, name: Any) -> LabelDataset:
        if not name:
            raise ValueError("choose or create a dataset first")
        return self.store.open(name)

    def document(self, ds: LabelDataset, image_id: str) -> dict:
        """The editor document of one image (a dict)."""
        images = ds.images()
        pos = next(i for i, e in enumerate(images) if e["id"] == image_id)
        entry, ann = images[pos], ds.load(image_id)
        return editor_document_dict(
            dataset=ds.name, image_id=image_id, image_url=f"/gradio_api/file={ds.image_path(image_id)}",
            width=entry["width"], height=entry["height"], classes=ds.classes, mask_names=ds.mask_names,
            instances=ann["instances"], revision=ann["revision"], status=ann["status"], rules=ds.meta["rules"],
            position=pos, count=len(images))

    def _document_json(self, ds: LabelDataset, image_id: str | None) -> str:
        return json.dumps(self.document(ds, image_id), separators=(",", ":")) if image_id else ""

    # ----- editor server functions ------------------------------------------------------------------------

    def save_annotations(self, dataset: str, image_id: str, base_revision: int, instances: list,
                         status: str | None) -> dict:
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
            return {"ok": False, "error": {"prev": "this is the first image", "next": "this is the last image",
                                           "next_unlabelled": "no other unlabelled image"}.get(direction or "",
                                                                                             "no image")}
        return self.document(ds, target)

    def copy_previous(self, dataset: str, image_id: str) -> dict:
        return {"ok": True, "instances": self._dataset(dataset).previous_instances(image_id)}

    def propose(self, dataset: str, image_id: str, request: gr.Request | None = None) -> dict:
        """The chosen run's predictions on the image as instances (the run chosen in this browser tab)."""
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
        instances = propose(predictor, img, threshold, ds.mask_names, ds.classes, self.predictors.inference_lock)
        if not instances:
            return {"ok": False, "error": f"the model found nothing scoring at least {threshold:.2f}"}
        return {"ok": True, "instances": instances}

    # ----- Gradio event handlers ---------------------------------------------------------------------------

    def choose_run(self, run_name: str | None, threshold: float, request: gr.Request) -> str:
        with self._lock:
            if run_name:
                self._session_runs[request.session_hash] = (run_name, float(threshold))
            else:
                self._session_runs.pop(request.session_hash, None)
        return f"Propose uses **{run_name}** at score >= {threshold:.2f}." if run_name else ""

    def run_choices(self) -> list[str]:
        return [r.name for r in find_runs(self.runs_root)]

    def dataset_choices(self) -> list[str]:
        return self.store.list_datasets()

    def create_dataset(self, name: str, classes_text: str, masks_text: str):
        try:
            ds = self.store.create(name.strip(), _split_names(classes_text),
                                   _split_names(masks_text) or ["primary", "secondary"])
        except ValueError as e:
            return gr.update(), f"⚠️ {e}"
        return gr.update(choices=self.dataset_choices(), value=ds.name), f"Created **{ds.name}**."

    def open_dataset(self, name: str | None, status_filter: str, page: int, last: dict | None = None):
        """Gallery, class list, the editor on the tab's last image (else the first), and a summary."""
        if not name:
            return [], gr.update(choices=[]), "", [], "Create or choose a dataset.", gr.update(maximum=1, value=1)
        try:
            ds = self._dataset(name)
        except ValueError as e:
            return [], gr.update(choices=[]), "", [], f"⚠️ {e}", gr.update(maximum=1, value=1)
        gallery, ids, pages, summary = self._gallery(ds, status_filter, page)
        first = ids[0] if ids else None
        known = {e["id"] for e in ds.images()}
        if isinstance(last, dict) and last.get("dataset") == name and last.get("image_id") in known:
            first = last["image_id"]
        return (gallery, gr.update(choices=ds.classes, value=None), self._document_json(ds, first), ids, summary,
                gr.update(maximum=max(pages, 1), value=min(max(int(page or 1), 1), max(pages, 1))))

    def _gallery(self, ds: LabelDataset, status_filter: str, page: int):
        images = ds.images()
        shown = [e for e in images if status_filter in (None, "all") or e["status"] == status_filter]
        pages = max((len(shown) + GALLERY_PAGE - 1) // GALLERY_PAGE, 1)
        page = min(max(int(page or 1), 1), pages)
        chunk = shown[(page - 1) * GALLERY_PAGE: page * GALLERY_PAGE]
        gallery = [(str(thumbnail(ds, e["id"])), f"{e['file_name']} · {e['status'].replace('_', ' ')}")
                   for e in chunk]
        return gallery, [e["id"] for e in chunk], pages, _summary(ds, images)

    def summary(self, name: str | None) -> Any:
        """The dataset's counts line, for the tab's timer: autosaves change the statuses behind it."""
        if not name or name not in self.store.list_datasets():
            return gr.skip()
        ds = self._dataset(name)
        return _summary(ds, ds.images())

    def restore(self, last: dict | None):
        """On page load: the datasets created meanwhile, and the dataset this browser tab had open."""
        names = self.dataset_choices()
        wanted = last.get("dataset") if isinstance(last, dict) else None
        return gr.update(choices=names, value=wanted if wanted in names else (names[0] if names else None))

    @staticmethod
    def remember(document: str | None) -> dict:
        """What to reopen after a reload: the dataset and image shown in the editor."""
        try:
            doc = json.loads(document) if document else {}
        except ValueError:
            doc = {}
        return {"dataset": doc.get("dataset"), "image_id": doc.get("image_id")}

    def refresh_gallery(self, name: str | None, status_filter: str, page: int):
        if not name:
            return [], [], "", gr.update()
        ds = self._dataset(name)
        gallery, ids, pages, summary = self._gallery(ds, status_filter, page)
        return gallery, ids, summary, gr.update(maximum=pages)

    def select_image(self, name: str, ids: list[str], evt: gr.SelectData):
        """Show the gallery's clicked image in the editor."""
        index = evt.index if isinstance(evt.index, int) else None
        if not name or index is None or not 0 <= index < len(ids or []):
            return gr.update(), gr.update()
        ds = self._dataset(name)
        return self._document_json(ds, ids[index]), ids[index]

    def upload(self, name: str, files: list | None):
        if not files:
            return "No files."
        try:
            ds = self._dataset(name)
        except ValueError as e:
            return f"⚠️ {e}"
        added, errors = 0, []
        for f in files:
            path = Path(f if isinstance(f, (str, Path)) else getattr(f, "name", ""))  # gr.File: paths
            try:
                thumbnail(ds, ds.add_image_bytes(path.name, path.read_bytes())["id"])  # the gallery's, made now
                added += 1
            except (ValueError, OSError) as e:
                errors.append(f"{path.name}: {e}")
        return f"Added {added} image(s)." + ("\n\n⚠️ " + "\n\n⚠️ ".join(errors) if errors else "")

    def add_folder(self, name: str, folder: str):
        try:
            ds = self._dataset(name)
            root = self._allowed_root(folder)
            added, errors = ds.add_images_from_folder(folder, root)
        except ValueError as e:
            return f"⚠️ {e}"
        for entry in added:
            thumbnail(ds, entry["id"])
        return f"Added {len(added)} image(s) from {folder}." + ("\n\n⚠️ " + "\n\n⚠️ ".join(errors[:20])
                                                                  if errors else "")

    def _allowed_root(self, path: str) -> Path:
        resolved = Path(path or "").expanduser().resolve()
        for root in self.import_roots:
            if resolved == root or root in resolved.parents:
                return root
        raise ValueError(f"{path!r} is outside the folders this app may read: "
                         f"{', '.join(map(str, self.import_roots))} (start the app with --import-root to add one)")

    def remove_image(self, name: str, image_id: str, confirmed: bool):
        if not image_id:
            return "Select an image in the gallery first.", gr.update()
        if not confirmed:
            return "Tick **confirm** to remove the image and its annotations.", gr.update()
        try:
            ds = self._dataset(name)
            ds.remove_image(image_id)  # checks the id
        except ValueError as e:
            return f"⚠️ {e}", gr.update()
        (ds.folder / "thumbs" / f"{image_id}.jpg").unlink(missing_ok=True)
        return f"Removed image {image_id} and its annotations.", gr.update(value=False)

    def add_class(self, name: str, cls: str):
        try:
            ds = self._dataset(name)
            ds.add_class(cls.strip())
        except ValueError as e:
            return f"⚠️ {e}", gr.update()
        return f"Added class **{cls.strip()}**.", gr.update(choices=ds.classes)

    def rename_class(self, name: str, old: str, new: str):
        try:
            ds = self._dataset(name)
            ds.rename_class(old, (new or "").strip())
        except ValueError as e:
            return f"⚠️ {e}", gr.update()
        return f"Renamed **{old}** to **{new.strip()}** in every image.", gr.update(choices=ds.classes, value=None)

    def import_data(self, name: str, kind: str, path: str, image_root: str, mapping: str):
        try:
            ds = self._dataset(name)
            self._allowed_root(path)
            if image_root:
                self._allowed_root(image_root)
            if kind == "multimask JSON":
                report = ds.import_multimask(path, image_root or None)
            elif kind == "COCO with mask fields":
                report = ds.import_coco_fields(path, _pairs(mapping), image_root or None)
            else:
                report = ds.import_labelme(path, _pairs(mapping) or None)
        except ValueError as e:
            return f"⚠️ {e}"
        return f"Imported from {path}.\n\n```\n{report.summary(max_messages=30)}\n```"

    def export(self, name: str, folder_name: str, val_fraction: float, seed: int, only_done: bool,
               labelme: bool = False):
        """Multimask COCO train/val files (seeded split) in the dataset's exports/, plus labelme if asked."""
        try:
            ds = self._dataset(name)
            out = ds.folder / "exports" / (folder_name or "export").strip()
            if out.parent != ds.folder / "exports" or not out.name or out.name.startswith("."):
                raise ValueError(f"export name {folder_name!r} must be a plain folder name")
            paths = ds.export(out, float(val_fraction), int(seed), bool(only_done))
            notes = ""
            if labelme:
                for split in ("train", "val"):
                    report = convert.export_labelme(paths[split], out / f"labelme_{split}")
                    notes += f"\n- labelme {split}: `{out / f'labelme_{split}'}` ({report.summary(max_messages=3)})"
        except ValueError as e:
            return f"⚠️ {e}"
        return ("Exported (multimask COCO format, seeded split):\n\n" +
                "\n".join(f"- {k}: `{v}`" for k, v in paths.items()) + notes +
                f"\n\nTrain on it: `python -m multimask train --train-json {paths.get('train')} "
                f"--val-json {paths.get('val')}`")


def _summary(ds: LabelDataset, images: list[dict]) -> str:
    counts = {s: sum(e["status"] == s for e in images) for s in STATUS_FILTERS[1:]}
    return (f"**{ds.name}**: {len(images)} images ({counts['unlabelled']} unlabelled, "
            f"{counts['in_progress']} in progress, {counts['done']} done); classes: "
            f"{', '.join(ds.classes) or '(none)'}; masks: {', '.join(ds.mask_names)}.")


def build_label_tab(demo: gr.Blocks, view: LabelView) -> gr.HTML:
    """Add the Label tab's components and events to the current Blocks; returns the editor."""
    datasets = view.dataset_choices()
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            with gr.Row():
                dataset = gr.Dropdown(datasets, value=datasets[0] if datasets else None, label="Dataset", scale=4)
                refresh = gr.Button("↻", scale=0, min_width=40)
            summary = gr.Markdown()
            with gr.Accordion("New dataset", open=not datasets):
                new_name = gr.Textbox(label="Name", placeholder="leaves")
                new_classes = gr.Textbox(label="Classes (comma separated)", placeholder="leaf, fruit")
                new_masks = gr.Textbox(label="Mask names", value="primary, secondary")
                create = gr.Button("Create dataset")
            with gr.Accordion("Images", open=True):
                status_filter = gr.Radio(STATUS_FILTERS, value="all", label="Show")
                page = gr.Number(1, label=f"Page ({GALLERY_PAGE} images each)", precision=0, minimum=1)
                gallery = gr.Gallery(label="Images", columns=4, height=320, allow_preview=False,
                                     show_label=False, elem_id="mm-gallery")
                upload = gr.File(label="Add images", file_count="multiple", file_types=["image"],
                                 elem_id="mm-upload")
                with gr.Row():
                    folder = gr.Textbox(label="Add a server folder", placeholder="/path/inside/an/allowed/folder",
                                        scale=3)
                    add_folder = gr.Button("Add", scale=1)
                with gr.Row():
                    selected = gr.Textbox(label="Selected image", interactive=False, scale=2)
                    confirm = gr.Checkbox(label="confirm", scale=1)
                    remove = gr.Button("Remove image", variant="stop", scale=1)
            with gr.Accordion("Classes", open=False):
                with gr.Row():
                    new_class = gr.Textbox(label="New class", scale=3)
                    add_class = gr.Button("Add", scale=1)
                with gr.Row():
                    old_class = gr.Dropdown([], label="Rename", scale=2)
                    renamed = gr.Textbox(label="to", scale=2)
                    rename = gr.Button("Rename", scale=1)
            with gr.Accordion("Model-assisted labelling", open=False) as view.propose_panel:
                runs = view.run_choices()
                run = gr.Dropdown(runs, value=None, label="Run used by Propose", elem_id="mm-label-run")
                view.run_dropdown = run  # the Train tab's "Use for labelling" sets it
                threshold = gr.Slider(0.05, 1.0, value=DEFAULT_PROPOSE_THRESHOLD, step=0.05, label="Score threshold")
                run_info = gr.Markdown()
            with gr.Accordion("Import / export", open=False):
                kind = gr.Radio(["multimask JSON", "COCO with mask fields", "labelme folder"],
                                value="multimask JSON", label="Import")
                import_path = gr.Textbox(label="File or folder on the server")
                import_root = gr.Textbox(label="Image folder (optional)")
                mapping = gr.Textbox(label="Field or label map",
                                     placeholder="segmentation=primary, visible_mask=secondary")
                do_import = gr.Button("Import")
                with gr.Row():
                    export_name = gr.Textbox(value="export", label="Export name", scale=2)
                    val_fraction = gr.Number(0.2, label="val fraction", minimum=0, maximum=0.9, scale=1)
                    seed = gr.Number(0, label="seed", precision=0, scale=1)
                with gr.Row():
                    only_done = gr.Checkbox(label="only images marked done")
                    as_labelme = gr.Checkbox(label="also as labelme folders")
                do_export = gr.Button("Export")
            message = gr.Markdown()
        with gr.Column(scale=3):
            editor = make_editor([view.save_annotations, view.load_image, view.copy_previous, view.propose])
    ids = gr.State([])
    last = gr.BrowserState({"dataset": None, "image_id": None}, storage_key="multimask-label")

    opened = {"fn": view.open_dataset, "inputs": [dataset, status_filter, page, last],
              "outputs": [gallery, old_class, editor, ids, summary, page]}
    dataset.change(**opened, api_visibility="private")
    demo.load(view.restore, [last], dataset, api_visibility="private")
    editor.change(view.remember, [editor], last, api_visibility="private")
    refresh.click(lambda: gr.update(choices=view.dataset_choices()), None, dataset, api_visibility="private")
    regallery = {"fn": view.refresh_gallery, "inputs": [dataset, status_filter, page],
                 "outputs": [gallery, ids, summary, page], "api_visibility": "private"}
    status_filter.change(**regallery)
    page.submit(**regallery)
    gallery.select(view.select_image, [dataset, ids], [editor, selected], api_visibility="private")
    create.click(view.create_dataset, [new_name, new_classes, new_masks], [dataset, message],
                 api_name="create_dataset")
    upload.upload(view.upload, [dataset, upload], message, api_name="upload_images").then(**regallery)
    add_folder.click(view.add_folder, [dataset, folder], message, api_name="add_folder").then(**regallery)
    remove.click(view.remove_image, [dataset, selected, confirm], [message, confirm],
                 api_name="remove_image").then(**regallery)
    add_class.click(view.add_class, [dataset, new_class], [message, old_class], api_name="add_class").then(
        **opened)
    rename.click(view.rename_class, [dataset, old_class, renamed], [message, old_class],
                 api_name="rename_class").then(**opened)
    for trigger in (run.change, threshold.release):
        trigger(view.choose_run, [run, threshold], run_info, api_visibility="private")
    do_import.click(view.import_data, [dataset, kind, import_path, import_root, mapping], message,
                    api_name="import_data").then(**regallery)
    do_export.click(view.export, [dataset, export_name, val_fraction, seed, only_done, as_labelme], message,
                    api_name="export_data")
    gr.Timer(SUMMARY_SECONDS).tick(view.summary, [dataset], summary, show_progress="hidden",
                                   api_visibility="private")
    return editor
