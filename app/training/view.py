"""The Train tab (Gradio): the form, the run monitor and the runs table, over `TrainingService`.

The page re-reads everything from disk every two seconds (a `gr.Timer`), so it shows jobs started before a
reload or by another tab, and survives an app restart.
"""

from __future__ import annotations

import html
from typing import Any

import gradio as gr
import pandas as pd

from . import form, monitor
from .jobs import ACTIVE, NO_GPU_MESSAGE, JobError
from .service import POLL_SECONDS, TrainingService

MAX_PLOT_POINTS = 400  # per series; longer curves are thinned for the browser
LOSS_COLUMNS, LR_COLUMNS = ["iteration", "value", "series"], ["iteration", "lr"]
AP_COLUMNS = ["iteration", "AP", "series"]


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

    def on_dataset(self, dataset: str | None) -> Any:
        choices = self.metric_choices(dataset)
        return gr.update(choices=choices, value=choices[0][1])

    def refresh_form(self, dataset: str | None, start: str | None) -> tuple[Any, Any]:
        datasets = self.service.store.list_datasets()
        starts = self.start_choices()
        return (gr.update(choices=datasets, value=dataset if dataset in datasets else
                          (datasets[0] if datasets else None)),
                gr.update(choices=starts, value=start if start in [k for _, k in starts] else "coco"))

    def on_load(self) -> tuple[Any, Any, Any]:
        datasets = self.service.store.list_datasets()
        return (gr.update(choices=self.service.run_names(), value=self.service.default_run()),
                gr.update(choices=datasets, value=datasets[0] if datasets else None),
                gr.update(choices=self.start_choices()))

    def start(self, dataset: str | None, run_name: str | None, start: str | None, iterations: Any, batch_size: Any,
              lr: Any, schedule: str | None, image_size: Any, val_fraction: Any, seed: Any, device: str | None,
              num_gpus: Any, amp: Any, eval_period: Any, patience: Any, best_metric: str | None,
              advanced: str | None) -> tuple[str, Any]:
        """The Train button: (message, run selector update)."""
        values = dict(zip(form.FIELDS, (dataset, run_name, start, iterations, batch_size, lr, schedule, image_size,
                                        val_fraction, seed, device, num_gpus, amp, eval_period, patience,
                                        best_metric, advanced)))
        try:
            job, notes = self.service.start(values)
        except (form.FormError, JobError, ValueError, OSError) as e:
            return f"⚠️ {e}", gr.update()
        state = "started" if job["state"] == "running" else job["state"]
        text = f"Run **{job['run_name']}** {state} (job {job['id']})." + "".join(f"\n- {n}" for n in notes)
        return text, gr.update(choices=self.service.run_names(), value=job["run_name"])

    def act(self, action: str):
        """A handler calling the service's `action(run)`; errors become the message."""
        def handler(run_name: str | None) -> str:
            try:
                return getattr(self.service, action)(run_name)
            except JobError as e:
                return f"⚠️ {e}"
        handler.__name__ = action
        return handler

    def delete(self, run_name: str | None, confirm: Any) -> tuple[str, Any, Any]:
        try:
            message = self.service.delete(run_name, confirm)
        except JobError as e:
            return f"⚠️ {e}", gr.update(), gr.update(value=False)
        names = self.service.run_names()
        return message, gr.update(choices=names, value=run_name if run_name in names else
                                  (names[0] if names else None)), gr.update(value=False)

    def status(self, run_name: str | None) -> tuple:
        """Everything the monitor shows for a run: progress, curves, evaluation, log, record, runs table."""
        return self._outputs(run_name, None)[0]

    def tick(self, run_name: str | None, last: list | None) -> tuple:
        """The timer's refresh: like `status`, but the curves, evaluation and log are built and sent only when
        the run's files changed since this page's last tick (re-sending them would redraw the plots and reset a
        zoom); the last output is the new signature, kept in the page's state."""
        out, sig = self._outputs(run_name, last)
        return (*out, sig)

    def _outputs(self, run_name: str | None, last: list | None) -> tuple[tuple, list]:
        runs = self.runs_table()
        snap = self.service.snapshot(run_name, last)
        job = snap["job"]
        if job is None:
            hint = "No run selected. Start one with the form, or pick one above." if not run_name else \
                f"No run called {html.escape(str(run_name))}."
            return (f"<p>{hint}</p>", _frame([], LOSS_COLUMNS), _frame([], LR_COLUMNS), _frame([], AP_COLUMNS),
                    "", eval_table({}), "", {}, runs, gr.update(interactive=False),
                    gr.update(interactive=False), gr.update(visible=False)), snap["signature"]
        rows, record, details = snap["rows"], snap["record"], snap["details"]
        if details is None:  # unchanged: loss, lr and AP plots, evaluation caption and table, log
            heavy = (gr.skip(),) * 6
        else:
            caption = details["eval_caption"]
            heavy = (_thin(_frame(monitor.loss_points(rows), LOSS_COLUMNS)),
                     _thin(_frame(monitor.lr_points(rows), LR_COLUMNS)), _frame(monitor.ap_points(rows), AP_COLUMNS),
                     f"**Evaluation:** {caption}" if caption else "No evaluation yet.",
                     eval_table(details["results"]), details["log"])
        return (progress_html(job, record["progress"], record["seconds"], len(record["jobs"])), *heavy, record,
                runs, gr.update(interactive=job["state"] in ("queued", *ACTIVE)),
                gr.update(interactive=job["state"] in ("failed", "cancelled")),
                gr.update(visible=job["state"] == "failed" and job.get("error") == NO_GPU_MESSAGE)), \
            snap["signature"]

    def runs_table(self) -> pd.DataFrame:
        """One row per run: state, dataset, iterations, start, duration, final AP per task."""
        rows, tasks = [], []
        for r in self.service.runs_overview():
            tasks += [t for t in r["ap"] if t not in tasks]
            rows.append({**{k: r[k] for k in ("run", "state", "dataset", "iterations", "started")},
                         "duration": _duration(r["seconds"]), **{f"AP {t}": v for t, v in r["ap"].items()}})
        cols = ["run", "state", "dataset", "iterations", "started", "duration", *(f"AP {t}" for t in tasks)]
        return pd.DataFrame(rows, columns=cols)


def _frame(points: list[tuple], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(points, columns=columns)


def eval_table(results: dict) -> pd.DataFrame:
    """The AP table: a row per task (bbox, segm/<mask name>), main metrics then AP per class."""
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


_STATE_COLOURS = {"running": "#1769aa", "stopping": "#b26a00", "queued": "#666", "completed": "#2e7d32",
                  "failed": "#c62828", "cancelled": "#666"}


def progress_html(job: dict, prog: dict, seconds: float, n_jobs: int) -> str:
    """The progress bar and the job's state, with the error and what to do when it failed."""
    esc = html.escape
    state = job["state"]
    it, max_it = prog["iteration"], prog["max_iter"]
    parts = [f"iteration {it} / {max_it} ({prog['fraction']:.0%})"]
    if prog["iters_per_sec"] and state in ACTIVE:
        parts.append(f"{prog['iters_per_sec']:.2f} it/s, {prog['images_per_sec']:.1f} images/s")
        parts.append(f"ETA {_duration(prog['eta_seconds'])}")
    if prog["max_mem_mb"]:
        parts.append(f"GPU memory {prog['max_mem_mb']:.0f} MB")
    if prog["total_loss"] is not None:
        parts.append(f"loss {prog['total_loss']:.3f}")
    if state in ACTIVE and not it:
        parts.append("loading data and model…")
    head = (f"<b style='color:{_STATE_COLOURS.get(state, '#000')}' data-state='{esc(state)}'>{esc(state)}</b> · "
            f"{esc(str(job.get('dataset')))} · {esc(job['device'])} · "
            f"{_duration(seconds)} · {n_jobs} job{'s' if n_jobs > 1 else ''}")
    error = ""
    if job.get("error") and state in ("failed", "cancelled"):
        error = f"<p style='color:{_STATE_COLOURS[state]}' class='mm-job-error'>{esc(job['error'])}</p>"
    return (f"<div class='mm-train-progress' data-iteration='{it}'>{head}"
            f"<progress value='{it}' max='{max(1, max_it)}' style='width:100%'></progress>"
            f"<div>{esc(' · '.join(parts))}</div>{error}</div>")


def build_train_tab(demo: gr.Blocks, view: TrainView, tab: gr.Tab) -> dict[str, Any]:
    """Add the Train tab's content to the current Blocks; returns the components `build_app` links to other tabs.

    Opening the tab refreshes the datasets and starting points (datasets made or runs finished meanwhile).

    API endpoints: `train_start` (the form), `train_status` (run), `train_stop`, `train_resume`,
    `train_retry_on_cpu`, `train_delete` (run, confirm) and `train_runs`.
    """
    d = form.DEFAULTS
    datasets = view.service.store.list_datasets()
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            with gr.Row():
                dataset = gr.Dropdown(datasets, value=datasets[0] if datasets else None, label="Dataset", scale=4,
                                      elem_id="mm-train-dataset")
                refresh = gr.Button("↻", scale=0, min_width=40)
            run_name = gr.Textbox(label="Run name", placeholder="automatic: <dataset>-<date>-<time>")
            start = gr.Dropdown(view.start_choices(), value=d["start"], label="Starting point")
            with gr.Row():
                iterations = gr.Number(d["iterations"], label="Iterations", precision=0, minimum=1)
                batch = gr.Number(d["batch_size"], label="Batch size (all GPUs)", precision=0, minimum=1)
            with gr.Row():
                lr = gr.Number(d["lr"], label="Learning rate", minimum=0)
                schedule = gr.Dropdown([(v, k) for k, v in form.SCHEDULES.items()], value=d["schedule"],
                                       label="Schedule")
            with gr.Row():
                image_size = gr.Number(d["image_size"], label="Image size (shorter side)", precision=0, minimum=64)
                val_fraction = gr.Number(d["val_fraction"], label="Validation fraction", minimum=0, maximum=0.9)
                seed = gr.Number(d["seed"], label="Seed (split, training)", precision=0, minimum=0)
            with gr.Row():
                device = gr.Radio(list(form.DEVICES), value=d["device"], label="Device", scale=2)
                num_gpus = gr.Number(d["num_gpus"], label="GPUs", precision=0, minimum=1, scale=1)
            amp = gr.Checkbox(d["amp"], label="Mixed precision (on a GPU; ignored on the CPU)")
            with gr.Row():
                eval_period = gr.Number(d["eval_period"], label="Evaluate every (iterations; 0: at the end)",
                                        precision=0, minimum=0)
                patience = gr.Number(d["patience"], label="Early stopping patience (evaluations; 0: off)",
                                     precision=0, minimum=0)
            metrics = view.metric_choices(datasets[0] if datasets else None)
            best_metric = gr.Dropdown(metrics, value=metrics[0][1], label="Keep the best checkpoint by",
                                      elem_id="mm-train-best")
            with gr.Accordion("Advanced config options", open=False):
                advanced = gr.Textbox(label="KEY VALUE per line (detectron2 config)", lines=4,
                                      placeholder="SOLVER.MOMENTUM 0.9\nMODEL.RPN.POST_NMS_TOPK_TRAIN 1000")
            train = gr.Button("Train", variant="primary", elem_id="mm-train-start")
            message = gr.Markdown(elem_id="mm-train-message")
        with gr.Column(scale=2):
            with gr.Row():
                run = gr.Dropdown(view.service.run_names(), value=view.service.default_run(), label="Run", scale=4,
                                  elem_id="mm-train-run")
                runs_refresh = gr.Button("↻", scale=0, min_width=40)
            progress = gr.HTML(elem_id="mm-train-progress")
            with gr.Row():
                stop = gr.Button("Stop", variant="stop", interactive=False)
                resume = gr.Button("Resume", interactive=False)
                cpu = gr.Button("Run on the CPU instead", visible=False)
                open_predict = gr.Button("Open in Predict")
                open_label = gr.Button("Use for labelling")
            with gr.Row():
                loss_plot = gr.LinePlot(x="iteration", y="value", color="series", label="Losses",
                                        elem_id="mm-loss-plot")
                lr_plot = gr.LinePlot(x="iteration", y="lr", label="Learning rate")
            ap_plot = gr.LinePlot(x="iteration", y="AP", color="series", label="Validation AP")
            eval_caption = gr.Markdown()
            ap_table = gr.Dataframe(eval_table({}), label="AP per mask name and class",
                                      interactive=False)
            log = gr.Textbox(label="Log (last lines)", lines=10, max_lines=10, autoscroll=True, interactive=False)
            with gr.Accordion("Job record", open=False):
                record = gr.JSON()
            runs_table = gr.Dataframe(view.runs_table(), label="Runs", interactive=False)
            with gr.Row():
                confirm = gr.Checkbox(label="confirm", scale=1)
                delete = gr.Button("Delete run", variant="stop", scale=1)
    form_inputs = [dataset, run_name, start, iterations, batch, lr, schedule, image_size, val_fraction, seed,
                   device, num_gpus, amp, eval_period, patience, best_metric, advanced]
    status_io = {"fn": view.status, "inputs": [run],
                 "outputs": [progress, loss_plot, lr_plot, ap_plot, eval_caption, ap_table, log, record,
                             runs_table, stop, resume, cpu], "show_progress": "hidden"}
    train.click(view.start, form_inputs, [message, run], api_name="train_start").then(**status_io,
                                                                                      api_visibility="private")
    run.change(**status_io, api_name="train_status")
    shown = gr.State(None)  # the signature of what this page shows (see TrainView.tick)
    gr.Timer(POLL_SECONDS).tick(view.tick, [run, shown], [*status_io["outputs"], shown], show_progress="hidden",
                                api_visibility="private")
    stop.click(view.act("stop"), [run], message, api_name="train_stop").then(**status_io, api_visibility="private")
    resume.click(view.act("resume"), [run], message, api_name="train_resume").then(**status_io,
                                                                                  api_visibility="private")
    cpu.click(view.act("retry_on_cpu"), [run], message, api_name="train_retry_on_cpu").then(
        **status_io, api_visibility="private")
    delete.click(view.delete, [run, confirm], [message, run, confirm], api_name="train_delete")
    runs_refresh.click(lambda r: gr.update(choices=view.service.run_names(), value=r), [run], run,
                       api_name="train_runs")
    dataset.change(view.on_dataset, [dataset], best_metric, api_visibility="private")
    for trigger in (refresh.click, tab.select):
        trigger(view.refresh_form, [dataset, start], [dataset, start], api_visibility="private")
    demo.load(view.on_load, None, [run, dataset, start], api_visibility="private")
    return {"run": run, "message": message, "open_predict": open_predict, "open_label": open_label}

