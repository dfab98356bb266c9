"""`build_app(data_root, runs_root)`: the Blocks that `launch.py` serves, one tab per task."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from .core.jobs.service import POLL_SECONDS, TrainingService
from .core.models.predictors import PredictorCache
from .core.models.runs import RunNotFoundError, get_run
from .views.label import LabelView, build_label_tab
from .views.predict import PredictView, build_predict_tab
from .views.train import TrainView, build_train_tab

TITLE = "multimask"
APP_CSS = (Path(__file__).parent / "style.css").read_text(encoding="utf-8")


def build_app(
    data_root: str | Path = "datasets",
    runs_root: str | Path = "runs",
    import_roots: list[str | Path] | None = None,
    poll_seconds: float = POLL_SECONDS,
    logout: bool = False,
) -> gr.Blocks:
    """The app's Blocks: one tab per task. Theme, css and head go to `launch()` (Gradio 6).

    `data_root` holds the labelling datasets (its images are served to the editor); `import_roots` are further
    server folders the Label tab may read images and datasets from. Training jobs are kept in
    `runs_root/.jobs`; a thread checks them every `poll_seconds` (starting queued ones), page open or not.
    `logout`: show a "Log out" link (when the app is served with logins).
    """
    data_root = Path(data_root).resolve()
    data_root.mkdir(parents=True, exist_ok=True)
    gr.set_static_paths([str(data_root)])
    predictors = PredictorCache()
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
            with gr.Tab("Label", id="label") as label_tab:
                demo.label_view = LabelView(data_root, runs_root, import_roots, predictors)
                demo.editor = build_label_tab(demo, demo.label_view)
                label_tab.select(
                    demo.label_view.refresh_runs,
                    [demo.label_view.run_dropdown],
                    [demo.label_view.run_dropdown],
                    api_visibility="private",
                )
            with gr.Tab("Train", id="train") as train_tab:
                demo.training = TrainingService(data_root, runs_root, weights_roots=import_roots or [])
                train = build_train_tab(demo, TrainView(demo.training), train_tab)
            with gr.Tab("Predict", id="predict") as predict_tab:
                demo.predict_view = build_predict_tab(demo, runs_root, PredictView(runs_root, predictors), predict_tab)
        _link_run_buttons(tabs, train, demo.predict_view, demo.label_view, runs_root)
    demo.training.start_poller(poll_seconds)
    demo.data_root, demo.runs_root = data_root, Path(runs_root)
    return demo


def _link_run_buttons(
    tabs: gr.Tabs, train: dict, predict_view: PredictView, label_view: LabelView, runs_root: str | Path
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

    train["open_predict"].click(
        opener("predict", predict_view.run_choices),
        [train["run"]],
        [tabs, predict_view.run_dropdown, train["message"]],
        api_visibility="private",
    )
    train["open_label"].click(
        opener("label", label_view.run_choices, open_panel=True),
        [train["run"]],
        [tabs, label_view.run_dropdown, train["message"], label_view.propose_panel],
        api_visibility="private",
    )
