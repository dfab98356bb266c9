"""The Train tab (Gradio): the form, the run monitor and the runs table, over `TrainingService`.

The page re-reads everything from disk every two seconds (a `gr.Timer`), so it shows jobs started before a
reload or by another tab, and survives an app restart.
"""

from __future__ import annotations

import html
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from ..core.jobs import form, monitor
from ..core.jobs.manager import ACTIVE, NO_GPU_MESSAGE, JobError
from ..core.jobs.service import POLL_SECONDS, TrainingService
from .updates import choices_keeping

MAX_PLOT_POINTS = 400  # per series; longer curves are thinned for the browser
LOSS_COLUMNS, LR_COLUMNS = ["iteration", "value", "series"], ["iteration", "lr"]
AP_COLUMNS = ["iteration", "AP", "series"]
TOTAL_LOSS = "total_loss"
# The form fields a run's recorded settings fill in (not the run name: a new run needs a new one).
FILLED_FIELDS = tuple(f for f in form.FIELDS if f != "run_name")
# What the run monitor shows, by the name of its component; DETAILS are sent only when the run's files changed.
DETAILS = ("total_plot", "loss_plot", "lr_plot", "ap_plot", "eval_caption", "ap_table", "log")
MONITOR = ("progress", *DETAILS, "record", "runs_table", "stop", "resume", "cpu")
FOLLOWING_FIELDS = ("iterations", "batch_size", "lr", "image_size", "eval_period")  # set by form.form_defaults
# Disabled buttons look disabled (Gradio draws them like enabled ones).
TAB_CSS = """<style>
#mm-train-tab button:disabled, #mm-train-tab button[disabled] {
  opacity: 0.4; filter: grayscale(1); cursor: not-allowed; box-shadow: none; }
</style>"""
# The log: a <pre> that shows its end after every update, and when it first gets a size (a Textbox's autoscroll
# does neither when the value arrives while the tab is hidden, nor once the box shows the start of a long text).
LOG_TEMPLATE = "<pre class='mm-log'></pre>"
LOG_CSS = (
    "pre.mm-log { height: 15em; overflow-y: auto; margin: 0; padding: 6px; white-space: pre-wrap; "
    "word-break: break-all; font-size: 12px; background: var(--input-background-fill); "
    "border: 1px solid var(--border-color-primary); border-radius: 4px; }"
)
LOG_JS = """
const pre = element.querySelector('pre.mm-log');
const toEnd = () => { pre.scrollTop = pre.scrollHeight; };
const show = () => { pre.textContent = props.value || ''; toEnd(); };
new ResizeObserver(toEnd).observe(pre);
show();
watch('value', show);
"""


class TrainView:
    """Gradio handlers of the Train tab: they turn the service's results and errors into component updates."""

    def __init__(self, service: TrainingService):
        self.service = service

    def start_choices(self) -> list[tuple[str, str]]:
        presets = [(label, key) for key, (label, _) in form.STARTING_POINTS.items()]
        return presets + [(f"Previous run: {name}", form.RUN_PREFIX + name) for name in self.service.weight_runs()]

    def metric_choices(self, dataset: str | None) -> list[tuple[str, str]]:
        names = self.service.mask_names(dataset) or ["primary"]
        out = [(f"{n} mask AP", f"segm/{n}/AP") for n in names]
        out += [(f"{n} mask AP50", f"segm/{n}/AP50") for n in names]
        return out + [("box AP", "bbox/AP")]

    def on_dataset(self, dataset: str | None, best_metric: str | None) -> Any:
        """The best-metric choices of a dataset's masks; the chosen one is kept when the dataset has it."""
        choices = self.metric_choices(dataset)
        keys = [k for _, k in choices]
        return gr.update(choices=choices, value=best_metric if best_metric in keys else keys[0])

    def default_start(self) -> str:
        """The starting point a new form shows: COCO weights with a GPU, the tiny model on a CPU-only server."""
        return "coco" if self.service.gpus else "tiny"

    def defaults(self, start: str | None, device: str | None) -> dict[str, Any]:
        """form.form_defaults for the starting point on the device that `device` means on this server."""
        start = start if isinstance(start, str) else self.default_start()
        return form.form_defaults(start, form.on_gpu(device, self.service.gpus), self.service.model_kind(start))

    def follow_start(self, start: str | None, device: str | None) -> tuple:
        """A starting point or device chosen in the form: iterations, batch size, learning rate, image size and
        evaluation period become that combination's defaults."""
        values = self.defaults(start, device)
        return tuple(gr.update(value=values[f]) for f in FOLLOWING_FIELDS)

    def fit_eval_period(self, iterations: Any, eval_period: Any) -> Any:
        """Lowered iterations: an evaluation period above them is clamped, with a toast saying so."""
        if not (isinstance(iterations, (int, float)) and isinstance(eval_period, (int, float))):
            return gr.update()
        period, note = form.fit_eval_period(int(eval_period), int(iterations))
        if note is None:
            return gr.update()
        gr.Info(note[:1].upper() + note[1:])
        return gr.update(value=period)

    def estimate(self, values: dict[str, Any]) -> str:
        """The estimate and notes next to the Train button, for the form's values by field name."""
        return self.service.estimate(values)

    def refresh_form(self, dataset: str | None, start: str | None, run: str | None) -> tuple[Any, Any, Any]:
        """Datasets, starting points and runs made or finished meanwhile (tab opened, ↻)."""
        datasets = self.service.datasets()
        starts = self.start_choices()
        return (
            choices_keeping(datasets, dataset, datasets, datasets[0] if datasets else None),
            choices_keeping(starts, start, [k for _, k in starts], self.default_start()),
            self.run_choices(run),
        )

    def run_choices(self, run: str | None) -> Any:
        """The run list, keeping the page's run while it exists (else the newest)."""
        names = self.service.run_names()
        return choices_keeping(names, run, names, names[0] if names else None)

    def on_load(self) -> tuple[Any, Any, Any]:
        datasets = self.service.datasets()
        return (
            gr.update(choices=self.service.run_names(), value=self.service.default_run()),
            gr.update(choices=datasets, value=datasets[0] if datasets else None),
            gr.update(choices=self.start_choices()),
        )

    def fill_form(self, run_name: str | None) -> tuple:
        """The form fields (FILLED_FIELDS) set to a run's recorded settings; unchanged for a run without any
        (e.g. trained outside the app) and for values no longer offered (a deleted dataset or run)."""
        settings = self.service.settings(run_name)
        if settings is None:
            return tuple(gr.update() for _ in FILLED_FIELDS)
        datasets = self.service.datasets()
        starts = [k for _, k in self.start_choices()]
        out = []
        for f in FILLED_FIELDS:
            value = settings.get(f, form.DEFAULTS[f])
            if (f == "dataset" and value not in datasets) or (f == "start" and value not in starts):
                out.append(gr.update())
            elif f == "best_metric":
                choices = self.metric_choices(settings.get("dataset"))
                out.append(gr.update(choices=choices, value=value or choices[0][1]))
            else:
                out.append(gr.update(value=value))
        return tuple(out)

    def start(self, values: dict[str, Any]) -> tuple[str, Any]:
        """The Train button: (message, run selector update) for the form's values by field name (`form.FIELDS`);
        the outcome is also shown as a toast."""
        try:
            job, notes = self.service.start(values)
        except (form.FormError, JobError, ValueError, OSError) as e:
            return _warn(self.service.for_browser(str(e))), gr.update()
        state = "started" if job["state"] == "running" else job["state"]
        text = f"Run **{job['run_name']}** {state} (job {job['id']})." + "".join(f"\n- {n}" for n in notes)
        gr.Info(f"Run {job['run_name']} {state}." + "".join(f" {n[:1].upper()}{n[1:]}." for n in notes))
        return text, gr.update(choices=self.service.run_names(), value=job["run_name"])

    def act(self, action: str):
        """A handler calling the service's `action(run)`; the result or error becomes the message and a toast."""

        def handler(run_name: str | None) -> str:
            try:
                message = getattr(self.service, action)(run_name)
            except JobError as e:
                return _warn(self.service.for_browser(str(e)))
            gr.Info(message)
            return message

        handler.__name__ = action
        return handler

    def delete(self, run_name: str | None, confirm: Any) -> tuple[str, Any, Any]:
        try:
            message = self.service.delete(run_name, confirm)
        except JobError as e:
            return _warn(self.service.for_browser(str(e))), gr.update(), gr.update(value=False)
        (gr.Info if confirm is True else gr.Warning)(message)
        return message, self.run_choices(run_name), gr.update(value=False)

    def status(self, run_name: str | None) -> dict[str, Any]:
        """Everything the monitor shows for a run, by MONITOR name: progress, curves, evaluation, log, record,
        runs table, and the Stop, Resume and retry-on-CPU buttons."""
        return self._outputs(run_name, None)[0]

    def tick(self, run_name: str | None, last: list | None, names: list | None) -> dict[str, Any]:
        """The timer's refresh: like `status`, but the curves, evaluation and log are built and sent only when
        the run's files changed since this page's last tick (re-sending them would redraw the plots and reset a
        zoom); also "shown" (the new signature), "run" (the run list when runs appeared or went, else skipped)
        and "names" (that list), the last and first kept in the page's state."""
        out, sig = self._outputs(run_name, last)
        now = self.service.run_names()
        choices = gr.update(choices=now) if now != names else gr.skip()
        return {**out, "shown": sig, "run": choices, "names": now}

    def _outputs(self, run_name: str | None, last: list | None) -> tuple[dict[str, Any], list]:
        runs = self.runs_table()
        snap = self.service.snapshot(run_name, last)
        job = snap["job"]
        if job is None:
            hint = (
                "No run selected. Start one with the form, or pick one above."
                if not run_name
                else f"No run called {html.escape(str(run_name))}."
            )
            empty = (
                _frame([], LOSS_COLUMNS),
                _frame([], LOSS_COLUMNS),
                _frame([], LR_COLUMNS),
                _frame([], AP_COLUMNS),
                "",
                eval_table({}),
                "",
            )
            return {
                "progress": f"<p>{hint}</p>",
                **dict(zip(DETAILS, empty)),
                "record": {},
                "runs_table": runs,
                "stop": gr.update(interactive=False),
                "resume": gr.update(interactive=False),
                "cpu": gr.update(visible=False),
            }, snap["signature"]
        rows, record, details = snap["rows"], snap["record"], snap["details"]
        if details is None:  # unchanged: loss, lr and AP plots, evaluation caption and table, log
            heavy = (gr.skip(),) * len(DETAILS)
        else:
            caption = details["eval_caption"]
            losses = _frame(monitor.loss_points(rows), LOSS_COLUMNS)
            heavy = (
                _thin(losses[losses["series"] == TOTAL_LOSS]),
                _thin(_per_head(losses)),
                _thin(_frame(monitor.lr_points(rows), LR_COLUMNS)),
                _frame(monitor.ap_points(rows, record["progress"]["max_iter"]), AP_COLUMNS),
                f"**Evaluation:** {caption}" if caption else "No evaluation yet.",
                eval_table(details["results"]),
                details["log"],
            )
        return {
            "progress": progress_html(job, record["progress"], record["seconds"], len(record["jobs"])),
            **dict(zip(DETAILS, heavy, strict=True)),
            "record": record,
            "runs_table": runs,
            "stop": gr.update(interactive=job["state"] in ("queued", *ACTIVE) and not record["external"]),
            "resume": gr.update(interactive=record["can_resume"]),
            "cpu": gr.update(visible=job["state"] == "failed" and job.get("error") == NO_GPU_MESSAGE),
        }, snap["signature"]

    def runs_table(self) -> pd.DataFrame:
        """One row per run: state, dataset, iterations, start, duration, final AP per task."""
        rows, tasks = [], []
        for r in self.service.runs_overview():
            tasks += [t for t in r["ap"] if t not in tasks]
            rows.append(
                {
                    **{k: r[k] for k in ("run", "state", "dataset", "iterations", "started")},
                    "duration": _duration(r["seconds"]),
                    **{_ap_header(t): v for t, v in r["ap"].items()},
                }
            )
        cols = ["run", "state", "dataset", "iterations", "started", "duration", *map(_ap_header, tasks)]
        return pd.DataFrame(rows, columns=cols)


def _by_field(fn: Callable[[dict[str, Any]], Any], defaults: dict[str, Any] | None = None) -> Callable[..., Any]:
    """`fn(values)` as a Gradio handler of the form's inputs in `form.FIELDS` order: one parameter per field,
    named after it, so that the API endpoint's parameters keep the fields' names (`defaults`: optional ones)."""

    def handler(*args: Any) -> Any:
        return fn(dict(zip(form.FIELDS, args)))

    handler.__signature__ = inspect.Signature(
        [
            inspect.Parameter(
                f, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=(defaults or {}).get(f, inspect.Parameter.empty)
            )
            for f in form.FIELDS
        ]
    )
    handler.__name__ = fn.__name__
    handler.__doc__ = fn.__doc__
    return handler


def _ap_header(task: str) -> str:
    """A runs-table column of final AP: "box AP", "<mask name> AP"."""
    return "box AP" if task == "bbox" else f"{task.partition('/')[2] or task} AP"


def _warn(message: str) -> str:
    """An error for the message box (and as a toast at the top of the page)."""
    gr.Warning(message[:1].upper() + message[1:])
    return f"⚠️ {message}"


def _per_head(losses: pd.DataFrame) -> pd.DataFrame:
    """The loss of each head, series named without the "loss_" prefix (a shorter legend)."""
    out = losses[losses["series"] != TOTAL_LOSS].copy()
    out["series"] = out["series"].str.removeprefix("loss_")
    return out


def _frame(points: list[tuple], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(points, columns=columns)


def eval_table(results: dict) -> pd.DataFrame:
    """The AP table: a column per task (bbox, segm/<mask name>), a row per metric then per class."""
    cols, rows = monitor.eval_rows(results)
    return pd.DataFrame(rows, columns=cols)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _thin(df: pd.DataFrame) -> pd.DataFrame:
    """At most MAX_PLOT_POINTS rows per series (every k-th point, the last one kept)."""
    if "series" not in df or df.empty:
        return df.iloc[:: max(1, len(df) // MAX_PLOT_POINTS)] if not df.empty else df
    parts = []
    for _, g in df.groupby("series", sort=False):
        k = max(1, len(g) // MAX_PLOT_POINTS)
        parts.append(pd.concat([g.iloc[::k], g.iloc[[-1]]]).drop_duplicates())
    return pd.concat(parts, ignore_index=True)


_STATE_COLOURS = {
    "running": "#1769aa",
    "stopping": "#b26a00",
    "queued": "#666",
    "completed": "#2e7d32",
    "failed": "#c62828",
    "cancelled": "#666",
    "external": "#6a1b9a",
}
EXTERNAL_NOTE = (
    "trained outside this app (e.g. <code>python -m multimask train</code>): shown read-only; Stop "
    "and Resume act on runs started with this form"
)


def progress_html(job: dict, prog: dict, seconds: float, n_jobs: int) -> str:
    """The progress bar and the job's state, with the error and what to do when it failed."""
    esc = html.escape
    state = job["state"]
    it, max_it = prog["iteration"], prog["max_iter"]
    parts = [f"iteration {it} / {max_it} ({prog['fraction']:.0%})" if max_it else f"iteration {it}"]
    if prog["iters_per_sec"] and state in ACTIVE:
        parts.append(f"{prog['iters_per_sec']:.2f} it/s, {prog['images_per_sec']:.1f} images/s")
        parts.append(f"ETA {_duration(prog['eta_seconds'])}")
    if prog["max_mem_mb"]:
        parts.append(f"GPU memory {prog['max_mem_mb']:.0f} MB")
    if prog["total_loss"] is not None:
        parts.append(f"loss {prog['total_loss']:.3f}")
    if state in ACTIVE and not it:
        parts.append("loading data and model…")
    jobs = "not started here" if job.get("external") else f"{n_jobs} job{'s' if n_jobs > 1 else ''}"
    head = (
        f"<b style='color:{_STATE_COLOURS.get(state, '#000')}' data-state='{esc(state)}'>{esc(state)}</b> · "
        f"{esc(str(job.get('dataset')))} · {esc(job['device'])} · {_duration(seconds)} · {jobs}"
    )
    error = ""
    if job.get("error") and state in ("failed", "cancelled"):
        error = f"<p style='color:{_STATE_COLOURS[state]}' class='mm-job-error'>{esc(job['error'])}</p>"
    if job.get("external"):
        error += f"<p class='mm-external'>{EXTERNAL_NOTE}</p>"
    return (
        f"<div class='mm-train-progress' data-iteration='{it}'>{head}"
        f"<progress value='{it}' max='{max(1, max_it)}' style='width:100%'></progress>"
        f"<div>{esc(' · '.join(parts))}</div>{error}</div>"
    )


@dataclass(frozen=True)
class TrainTab:
    """The Train tab's handles: its handlers, the chosen run, the message line, and the buttons that open the run
    in another tab."""

    view: TrainView
    run: gr.Dropdown
    message: gr.Markdown
    open_predict: gr.Button
    open_label: gr.Button


def build_train_tab(demo: gr.Blocks, view: TrainView, tab: gr.Tab) -> TrainTab:
    """Add the Train tab's content to the current Blocks (inside `tab`); returns its handles.

    Opening the tab refreshes the datasets, starting points and runs (made or finished meanwhile); the timer
    adds runs that appear. Choosing a starting point or device sets the fields that follow them (see
    `TrainView.follow_start`); selecting a run fills the form with its recorded settings.

    API endpoints: `train_start` (the form), `train_status` (run), `train_stop`, `train_resume`,
    `train_retry_on_cpu`, `train_delete` (run, confirm) and `train_runs`.
    """
    datasets = view.service.datasets()
    d = {**form.DEFAULTS, "start": view.default_start(), **view.defaults(view.default_start(), "auto")}
    with gr.Row(elem_id="mm-train-tab"):
        with gr.Column(scale=1, min_width=320):
            with gr.Row():
                dataset = gr.Dropdown(
                    datasets,
                    value=datasets[0] if datasets else None,
                    label="Dataset",
                    scale=4,
                    elem_id="mm-train-dataset",
                )
                refresh = gr.Button("↻", scale=0, min_width=40)
            run_name = gr.Textbox(label="Run name", placeholder="automatic: <dataset>-<date>-<time>")
            start = gr.Dropdown(
                view.start_choices(),
                value=d["start"],
                label="Starting point",
                elem_id="mm-train-start-point",
                info="Choosing one sets iterations, batch size, learning rate, image size and "
                "evaluation period to values that suit it on this server's device.",
            )
            weights_file = gr.Textbox(
                "",
                label="Local weights file (.pth or .pkl on the server)",
                visible=d["start"] == "local",
                elem_id="mm-train-weights",
                placeholder=f"{view.service.runs_root.name}/.weights/model_final_f10217.pkl",
                info="A path from the runs folder's, the data folder's or an import folder's "
                "name. The file is loaded with torch.load (.pth, tensors only) or "
                "pickle (.pkl, which can run code): only use files you trust.",
            )
            with gr.Row():
                iterations = gr.Number(
                    d["iterations"], label="Iterations", precision=0, minimum=1, elem_id="mm-train-iterations"
                )
                batch = gr.Number(
                    d["batch_size"], label="Batch size (all GPUs)", precision=0, minimum=1, elem_id="mm-train-batch"
                )
            with gr.Row():
                lr = gr.Number(d["lr"], label="Learning rate", minimum=0)
                schedule = gr.Dropdown(
                    [(v, k) for k, v in form.SCHEDULES.items()], value=d["schedule"], label="Schedule"
                )
            with gr.Row():
                image_size = gr.Number(
                    d["image_size"],
                    label="Image size (shorter side)",
                    precision=0,
                    minimum=64,
                    elem_id="mm-train-image-size",
                )
                val_fraction = gr.Number(
                    d["val_fraction"],
                    label="Validation fraction",
                    minimum=0,
                    maximum=0.9,
                    elem_id="mm-train-val-fraction",
                    info="This tab's own split of the Label dataset's labelled images, by the "
                    "seed (the Label tab's Export fraction applies to exported files "
                    "only).",
                )
                seed = gr.Number(d["seed"], label="Seed (split, training)", precision=0, minimum=0)
            with gr.Row():
                device = gr.Radio(
                    list(form.DEVICES),
                    value=d["device"],
                    label="Device",
                    scale=2,
                    elem_id="mm-train-device",
                    info="auto: a GPU when one is visible, else the CPU"
                    + ("" if view.service.gpus else " (none is visible: the CPU)"),
                )
                num_gpus = gr.Number(d["num_gpus"], label="GPUs", precision=0, minimum=1, scale=1)
            amp = gr.Checkbox(d["amp"], label="Mixed precision (on a GPU; ignored on the CPU)")
            with gr.Row():
                eval_period = gr.Number(
                    d["eval_period"],
                    label="Evaluate every (iterations; 0: at the end)",
                    precision=0,
                    minimum=0,
                    elem_id="mm-train-eval-period",
                )
                patience = gr.Number(
                    d["patience"], label="Early stopping patience (evaluations; 0: off)", precision=0, minimum=0
                )
            metrics = view.metric_choices(datasets[0] if datasets else None)
            best_metric = gr.Dropdown(
                metrics, value=metrics[0][1], label="Keep the best checkpoint by", elem_id="mm-train-best"
            )
            with gr.Accordion("Advanced config options", open=False):
                advanced = gr.Textbox(
                    label="KEY VALUE per line (detectron2 config)",
                    lines=4,
                    placeholder="SOLVER.MOMENTUM 0.9\nMODEL.RPN.POST_NMS_TOPK_TRAIN 1000",
                )
            estimate = gr.Markdown(elem_id="mm-train-estimate")
            train = gr.Button("Train", variant="primary", elem_id="mm-train-start")
            message = gr.Markdown(elem_id="mm-train-message")
        with gr.Column(scale=2):
            with gr.Row():
                run = gr.Dropdown(
                    view.service.run_names(),
                    value=view.service.default_run(),
                    label="Run",
                    scale=4,
                    elem_id="mm-train-run",
                )
                runs_refresh = gr.Button("↻", scale=0, min_width=40)
            progress = gr.HTML(elem_id="mm-train-progress", js_on_load=None)
            with gr.Row():
                stop = gr.Button("Stop", variant="stop", interactive=False, elem_id="mm-train-stop")
                resume = gr.Button("Resume", interactive=False, elem_id="mm-train-resume")
                cpu = gr.Button("Run on the CPU instead", visible=False)
                open_predict = gr.Button("Open in Predict")
                open_label = gr.Button("Use for labelling")
            with gr.Row():
                total_plot = gr.LinePlot(x="iteration", y="value", label="Total loss", elem_id="mm-total-loss-plot")
                lr_plot = gr.LinePlot(x="iteration", y="lr", label="Learning rate")
            loss_plot = gr.LinePlot(
                x="iteration", y="value", color="series", label="Losses per head", elem_id="mm-loss-plot"
            )
            ap_plot = gr.LinePlot(x="iteration", y="AP", color="series", label="Validation AP")
            eval_caption = gr.Markdown()
            ap_table = gr.Dataframe(
                eval_table({}),
                label="AP per mask name (columns) and class (rows)",
                interactive=False,
                elem_id="mm-train-ap-table",
                max_height=800,
            )
            log = gr.HTML(
                "",
                label="Log (last lines)",
                show_label=True,
                container=True,
                elem_id="mm-train-log",
                html_template=LOG_TEMPLATE,
                css_template=LOG_CSS,
                js_on_load=LOG_JS,
            )
            with gr.Accordion("Job record", open=False):
                record = gr.JSON()
            runs_table = gr.Dataframe(view.runs_table(), label="Runs", interactive=False, elem_id="mm-train-runs")
            with gr.Row():
                confirm = gr.Checkbox(label="confirm", scale=1)
                delete = gr.Button("Delete run", variant="stop", scale=1)
    gr.HTML(TAB_CSS, elem_id="mm-train-css", js_on_load=None)
    fields = {  # the form's components by field name (`form.FIELDS`)
        "dataset": dataset,
        "run_name": run_name,
        "start": start,
        "iterations": iterations,
        "batch_size": batch,
        "lr": lr,
        "schedule": schedule,
        "image_size": image_size,
        "val_fraction": val_fraction,
        "seed": seed,
        "device": device,
        "num_gpus": num_gpus,
        "amp": amp,
        "eval_period": eval_period,
        "patience": patience,
        "best_metric": best_metric,
        "advanced": advanced,
        "weights_file": weights_file,
    }
    form_inputs = [fields[f] for f in form.FIELDS]
    _wire(demo, view, tab, locals())
    return TrainTab(view, run, message, open_predict, open_label)


def _wire(demo: gr.Blocks, view: TrainView, tab: gr.Tab, c: dict[str, Any]) -> None:
    """The Train tab's events; `c`: its components by variable name. Every event that writes the progress
    panel hides Gradio's progress indicator (it would flicker there every tick)."""
    hidden = {"show_progress": "hidden"}
    private = {**hidden, "api_visibility": "private"}
    run = c["run"]
    monitor = {k: c[k] for k in MONITOR}

    def status(run_name: str | None) -> dict:
        return {monitor[k]: v for k, v in view.status(run_name).items()}

    status_io = {"fn": status, "inputs": [run], "outputs": list(monitor.values()), **hidden}
    shown, names = gr.State(None), gr.State(view.service.run_names())  # what this page shows (TrainView.tick)
    ticked = {**monitor, "shown": shown, "run": run, "names": names}

    def tick(run_name: str | None, last: list | None, listed: list | None) -> dict:
        return {ticked[k]: v for k, v in view.tick(run_name, last, listed).items()}

    filled = [c["fields"][f] for f in FILLED_FIELDS]
    following = [c[{"batch_size": "batch"}.get(f, f)] for f in FOLLOWING_FIELDS]
    c["train"].click(
        _by_field(view.start, {"weights_file": ""}),
        c["form_inputs"],
        [c["message"], run],
        api_name="train_start",
        **hidden,
    ).then(**status_io, api_visibility="private")
    run.change(**status_io, api_name="train_status").then(view.fill_form, [run], filled, **private)
    gr.Timer(POLL_SECONDS).tick(tick, [run, shown, names], list(ticked.values()), **private)
    for name, action in (("stop", "stop"), ("resume", "resume"), ("cpu", "retry_on_cpu")):
        c[name].click(view.act(action), [run], c["message"], api_name=f"train_{action}", **hidden).then(
            **status_io, api_visibility="private"
        )
    c["delete"].click(
        view.delete, [run, c["confirm"]], [c["message"], run, c["confirm"]], api_name="train_delete", **hidden
    )
    c["runs_refresh"].click(view.run_choices, [run], run, api_name="train_runs", **hidden)
    c["dataset"].change(view.on_dataset, [c["dataset"], c["best_metric"]], c["best_metric"], **private)
    c["start"].change(lambda s: gr.update(visible=s == "local"), [c["start"]], c["weights_file"], **private)
    for trigger in (c["start"].input, c["device"].input):
        trigger(view.follow_start, [c["start"], c["device"]], following, **private)
    c["iterations"].input(view.fit_eval_period, [c["iterations"], c["eval_period"]], c["eval_period"], **private)
    estimated = [x for x in c["form_inputs"] if x not in (c["run_name"], c["advanced"])]
    gr.on(
        [x.change for x in estimated] + [demo.load, tab.select],
        _by_field(view.estimate),
        c["form_inputs"],
        c["estimate"],
        trigger_mode="always_last",
        **private,
    )
    for trigger in (c["refresh"].click, tab.select):
        trigger(view.refresh_form, [c["dataset"], c["start"], run], [c["dataset"], c["start"], run], **private)
    demo.load(view.on_load, None, [run, c["dataset"], c["start"]], **private).then(
        view.fill_form, [run], filled, **private
    )  # also when the run shown is the one the page was built with
