"""`build_app(data_root, runs_root)`: the app that `launch.py` serves, one tab per task, and its lifetime."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from .core.jobs.service import POLL_SECONDS, TrainingService
from .core.models.predictors import PredictorCache
from .core.models.runs import RunNotFoundError, get_run
from .views.label import LabelTab, LabelView, build_label_tab
from .views.predict import PredictTab, PredictView, build_predict_tab
from .views.train import TrainTab, TrainView, build_train_tab

TITLE = "multimask"
APP_CSS = (Path(__file__).parent / "style.css").read_text(encoding="utf-8")


@dataclass
class MultimaskApp:
    """The Blocks to serve, the folders behind them, each tab's handles, and the training service whose poller
    starts queued jobs (`start` / `stop`: the caller owns it; `launch.py` starts it before serving)."""

    blocks: gr.Blocks
    data_root: Path
    runs_root: Path
    training: TrainingService
    label: LabelTab
    train: TrainTab
    predict: PredictTab

    def start(self, poll_seconds: float = POLL_SECONDS) -> None:
        """Check the training jobs every `poll_seconds` (starting queued ones), page open or not."""
        self.training.start_poller(poll_seconds)

    def stop(self) -> None:
        """Stop checking the jobs (they run on: each is a process of its own)."""
        self.training.stop_poller()


def build_app(
    data_root: str | Path = "datasets",
    runs_root: str | Path = "runs",
    import_roots: list[str | Path] | None = None,
    logout: bool = False,
    sam_checkpoint: str | Path | None = None,
) -> MultimaskApp:
    """The app: one tab per task. Theme, css and head go to `launch()` (Gradio 6).

    `data_root` holds the labelling datasets (its images are served to the editor); `import_roots` are further
    server folders the Label tab may read images and datasets from. Training jobs are kept in `runs_root/.jobs`.
    `logout`: show a "Log out" link (when the app is served with logins). `sam_checkpoint`: a Segment-Anything
    checkpoint for the editor's SAM tool (see `app.core.assists.sam`). Nothing runs in the background until
    `MultimaskApp.start`.
    """
    data_root = Path(data_root).resolve()
    data_root.mkdir(parents=True, exist_ok=True)
    gr.set_static_paths([str(data_root)])
    predictors = PredictorCache()
    training = TrainingService(data_root, runs_root, weights_roots=import_roots or [])
    with gr.Blocks(title=TITLE, fill_width=True) as demo:
        gr.HTML("", head=f"<style>{APP_CSS}</style>", visible="hidden")
        with gr.Row(elem_id="mm-header-row"):
            gr.Markdown(f"# {TITLE}\nMask R-CNN with several named masks per instance.", elem_id="mm-header")
            if logout:
                gr.Button(
                    "Log out",
                    link="/logout",
                    size="sm",
                    variant="secondary",
                    scale=0,
                    min_width=90,
                    elem_id="mm-logout",
                )
        with gr.Tabs() as tabs:
            with gr.Tab("Label", id="label") as tab:
                label = build_label_tab(
                    demo, LabelView(data_root, runs_root, import_roots, predictors, sam_checkpoint), tab
                )
            with gr.Tab("Train", id="train") as tab:
                train = build_train_tab(demo, TrainView(training), tab)
            with gr.Tab("Predict", id="predict") as tab:
                predict = build_predict_tab(demo, PredictView(runs_root, predictors), tab)
        _link_run_buttons(tabs, train, predict, label, runs_root)
    return MultimaskApp(demo, data_root, Path(runs_root), training, label, train, predict)


def _link_run_buttons(
    tabs: gr.Tabs, train: TrainTab, predict: PredictTab, label: LabelTab, runs_root: str | Path
) -> None:
    """The Train tab's "Open in Predict" and "Use for labelling": switch tab with the run chosen there."""

    def opener(tab: str, choices, open_panel: bool = False):
        def open_run(run_name: str | None):
            panel = (gr.update(open=True),) if open_panel else ()
            try:
                run = get_run(runs_root, run_name)
            except RunNotFoundError as e:
                return (
                    gr.update(),
                    gr.update(),
                    f"⚠️ {e} A run is listed once it has saved a checkpoint.",
                    *(gr.update() for _ in panel),
                )
            return gr.Tabs(selected=tab), gr.update(choices=choices(), value=run.name), "", *panel

        return open_run

    train.open_predict.click(
        opener("predict", predict.view.run_choices),
        [train.run],
        [tabs, predict.run, train.message],
        api_visibility="private",
    )
    train.open_label.click(
        opener("label", label.view.run_choices, open_panel=True),
        [train.run],
        [tabs, label.run, train.message, label.propose_panel],
        api_visibility="private",
    )
