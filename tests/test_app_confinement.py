"""Issue 13, a lab server: what the Predict and Train tabs read or write for a request resolves (links followed)
inside the runs root, the data root or an import root, whatever names the browser sends; uploads that are not
images are named; messages name paths from those folders, never as absolute server paths. The handlers are
called as Gradio calls them (and the Predict tab's upload through a served app)."""

import json
import tempfile
from pathlib import Path

import cv2
import gradio as gr
import numpy as np
import pytest

from app.core.datasets.storage import LabelStore
from app.core.jobs import form
from app.core.jobs.manager import JobError, JobManager
from app.core.jobs.service import TrainingService
from app.core.models.runs import find_runs, get_run, run_progress
from app.views.predict import PredictView, build_predict_tab
from app.views.predict_export import FOLDER_PREFIX, remove_folder, session_folder
from app.views.train import TrainView
from tests.conftest import free_port
from tests.test_app import _copy_run, _make_run
from tests.test_train_first_day import _cli_run

HOSTILE_NAMES = [
    "../outside/run",
    "linked",
    "group/run",
    "weights-out",
    "config-out",
    "ckpt-out",
    "exp/../linked",
    "exp\x00",
    "..",
    "/",
    "~",
    "exp\\..\\linked",
    "./exp",
    " exp",
]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """runs/ with a run `exp` and `alias` (a link to it), and run folders that lead outside through links: the
    folder (`linked`), a group folder (`group`), the weights (`weights-out`, `ckpt-out`) or the config
    (`config-out`); outside/run is a complete run."""
    base = tmp_path_factory.mktemp("confinement")
    runs, outside = base / "runs", base / "outside" / "run"
    _make_run(runs / "exp")
    _copy_run(runs / "exp", outside)
    (runs / "alias").symlink_to(runs / "exp", target_is_directory=True)
    (runs / "linked").symlink_to(outside, target_is_directory=True)
    (runs / "group").symlink_to(outside.parent, target_is_directory=True)
    for name in ("weights-out", "config-out", "ckpt-out"):
        (runs / name).mkdir()
    (runs / "weights-out" / "config.yaml").write_bytes((runs / "exp" / "config.yaml").read_bytes())
    (runs / "weights-out" / "model_final.pth").symlink_to(outside / "model_final.pth")
    (runs / "config-out" / "config.yaml").symlink_to(outside / "config.yaml")
    (runs / "config-out" / "model_final.pth").write_bytes((runs / "exp" / "model_final.pth").read_bytes())
    (runs / "ckpt-out" / "config.yaml").write_bytes((runs / "exp" / "config.yaml").read_bytes())
    (runs / "ckpt-out" / "model_0000009.pth").symlink_to(outside / "model_final.pth")
    (runs / "ckpt-out" / "last_checkpoint").write_text("model_0000009.pth")
    return base


@pytest.fixture(scope="module")
def view(base):
    return PredictView(base / "runs")


def _png(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _record(jobs_root: Path, job_id: str, run_dir: Path, log: Path | None = None, state: str = "completed") -> None:
    """A job record as the Train tab writes it."""
    jobs_root.mkdir(parents=True, exist_ok=True)
    record = {
        "id": job_id,
        "state": state,
        "device": "cpu",
        "command": ["python", "-m", "multimask", "train"],
        "run_dir": str(run_dir),
        "log": str(log or jobs_root / f"{job_id}.log"),
        "created": "2026-01-01T00:00:00+00:00",
    }
    (jobs_root / f"{job_id}.json").write_text(json.dumps(record))


# --- run names: only listed runs, resolved inside the runs root


def test_only_runs_that_resolve_inside_the_runs_root_are_listed(base):
    assert sorted(r.name for r in find_runs(base / "runs")) == ["alias", "exp"]
    assert get_run(base / "runs", "alias").path == (base / "runs" / "exp").resolve()


@pytest.mark.parametrize("name", [*HOSTILE_NAMES, "ABSOLUTE"])
def test_a_hostile_run_name_is_refused_by_every_predict_handler(base, view, name):
    name = str(base / "outside" / "run") if name == "ABSOLUTE" else name
    image = np.zeros((32, 40, 3), np.uint8)
    masks, status = view.select_run(name)
    assert masks["choices"] == [] and status.startswith("⚠️")
    overlay, table, status, state = view.predict(name, image, 0.5, None, None)
    assert overlay is None and state is None and table.empty and status.startswith("⚠️")
    assert str(base) not in status.replace(name, ""), "the message names no server path"
    assert view.cache.loads == 0, "no model was loaded"


def test_a_run_folder_linking_outside_is_refused_by_name_with_a_clear_error(view):
    _, status = view.select_run("linked")
    assert status == "⚠️ Run 'linked' links to a folder outside the runs folder `runs`; the app does not open it."
    assert "is not a valid run name" in view.select_run("../outside/run")[1]
    assert "is not in the runs folder `runs` (any more); refresh the run list" in view.select_run("weights-out")[1]


def test_job_records_in_a_jobs_folder_linking_outside_are_not_read(base, tmp_path):
    runs = tmp_path / "runs"
    _copy_run(base / "runs" / "exp", runs / "exp")
    _record(tmp_path / "elsewhere", "j1", (runs / "exp").resolve(), runs / ".jobs" / "j1.log", state="running")
    (runs / ".jobs").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert run_progress(runs, find_runs(runs))["exp"].state == "unfinished", "not 'training', as the record says"
    (runs / ".jobs").unlink()
    (tmp_path / "elsewhere").rename(runs / ".jobs")
    assert run_progress(runs, find_runs(runs))["exp"].state == "training", "the same record inside is read"


def test_job_records_naming_files_outside_are_left_out_and_never_acted_on(tmp_path):
    runs, jobs_root, outside = tmp_path / "runs", tmp_path / "runs" / ".jobs", tmp_path / "outside"
    (runs / "good").mkdir(parents=True)
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    (runs / "escape").symlink_to(outside, target_is_directory=True)
    _record(jobs_root, "good", runs / "good")
    _record(jobs_root, "run-outside", outside)
    _record(jobs_root, "run-link", runs / "escape")
    _record(jobs_root, "log-outside", runs / "good", log=outside / "precious.txt")
    (jobs_root / "log-link.log").symlink_to(outside / "precious.txt")
    _record(jobs_root, "log-link", runs / "good")
    manager = JobManager(jobs_root, runs)
    assert [j["id"] for j in manager.jobs()] == ["good"]
    for job_id in ("run-outside", "run-link", "log-outside", "log-link"):
        with pytest.raises(JobError, match="names files outside the runs folder; not acting on it"):
            manager.forget(job_id)
        with pytest.raises(JobError):
            manager.log_tail(job_id)
    with pytest.raises(JobError, match="must be inside the runs folder `runs`"):
        manager.delete_run(runs / "escape")
    assert (outside / "precious.txt").read_text() == "keep me"


# --- Predict: uploads that are not images, downloads, messages


@pytest.mark.parametrize(
    ("name", "data", "words"),
    [
        ("notes.png", b"just some notes\n", "'notes.png' is text, not an image"),
        ("page.png", b"<!DOCTYPE html><html><body>hi</body></html>", "'page.png' is HTML or XML text, not an image"),
        ("cut.png", None, "'cut.png' is a PNG file that cannot be decoded (damaged or cut short?)"),
        ("empty.jpg", b"", "'empty.jpg' is empty"),
    ],
)
def test_an_upload_that_is_not_an_image_is_named(view, tmp_path, name, data, words):
    if data is None:
        data = cv2.imencode(".png", np.full((40, 50, 3), 200, np.uint8))[1].tobytes()[:60]
    for run in ("exp", None):  # named before a run is asked for
        overlay, _, status, state = view.predict(run, str(_png(tmp_path, name, data)), 0.5, None, None)
        assert overlay is None and state is None
        assert status == f"⚠️ The upload is not a readable image: {words}. Use PNG, JPEG, BMP, TIFF or WebP."


def test_the_served_predict_tab_names_a_bad_upload_instead_of_a_bare_error(base, tmp_path):
    from gradio_client import Client, handle_file

    with gr.Blocks() as demo:
        build_predict_tab(demo, PredictView(base / "runs"))
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        for name, data, words in (
            ("photo.png", b"not an image", "'photo.png' is text, not an image"),
            ("page.png", b"<html><script>x</script></html>", "'page.png' is HTML"),
        ):
            overlay, _, status = client.predict(
                "exp", handle_file(str(_png(tmp_path, name, data))), 0.5, [], api_name="/predict"
            )
            assert overlay is None and words in status and "/" not in status.split("image:")[1]
    finally:
        demo.close()


def test_predict_messages_name_the_runs_folder_not_its_server_path(base, view, tmp_path):
    _, status = view.refresh_runs(None)
    assert status == "Found 2 run(s) in the runs folder `runs`."
    _, status = PredictView(tmp_path / "runs").refresh_runs(None)
    assert "No trained run in the runs folder `runs` yet" in status and "--output-dir runs/synth_tiny" in status
    assert str(tmp_path) not in status


def test_a_download_folder_is_one_this_app_made_not_a_link(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    link = Path(tempfile.gettempdir()) / f"{FOLDER_PREFIX}confinement-test"
    link.symlink_to(tmp_path, target_is_directory=True)
    try:
        made = session_folder(str(link))
        assert made != link and made.resolve().parent == Path(tempfile.gettempdir()).resolve()
        remove_folder(str(link))
        assert (tmp_path / "precious.txt").read_text() == "keep me"
        remove_folder(str(made))
        assert not made.exists()
    finally:
        link.unlink()


# --- Train: datasets, run names, the jobs folder, what the tab shows


@pytest.fixture
def train(tmp_path):
    """A Train tab over datasets/ (`shapes`, and `evil`: a link to a dataset elsewhere) and runs/ (a CLI run `cli`
    whose log names server paths, `leak` whose log.txt links to a file outside, `linked`: a run folder outside)."""
    LabelStore(tmp_path / "datasets").create("shapes", ["leaf"])
    LabelStore(tmp_path / "elsewhere").create("evil", ["leaf"])
    (tmp_path / "datasets" / "evil").symlink_to(tmp_path / "elsewhere" / "evil", target_is_directory=True)
    runs = tmp_path / "runs"
    cli = _cli_run(runs, "cli", metrics=2)
    (cli / "log.txt").write_text(
        f"$ /opt/lab/.venv/bin/python -m multimask train --output-dir {runs}/cli\n"
        f"error: {tmp_path}/datasets/shapes/images/a.png: cannot read the image\n"
    )
    leak = _cli_run(runs, "leak", metrics=2)
    (tmp_path / "secret.txt").write_text("the server's secret")
    (leak / "log.txt").symlink_to(tmp_path / "secret.txt")
    _cli_run(tmp_path / "outside", "run", metrics=2)
    (runs / "linked").symlink_to(tmp_path / "outside" / "run", target_is_directory=True)
    return TrainView(TrainingService(tmp_path / "datasets", runs, gpus=0))


def _form(**values):
    """The Train form's values by field name."""
    return {**form.DEFAULTS, "dataset": "shapes", "start": "tiny", "device": "cpu", "amp": False, **values}


def test_a_dataset_linking_outside_the_data_root_is_neither_offered_nor_trained(train, tmp_path):
    service = train.service
    assert service.store.list_datasets() == ["shapes"]
    assert train.on_load()[1]["choices"] == ["shapes"] and train.refresh_form(None, None, None)[0]["choices"] == [
        "shapes"
    ]
    assert service.mask_names("evil") == [] and service.split("evil", 0.5) == (0, 0)
    message, _ = train.start(_form(dataset="evil", run_name="r"))
    assert message == "⚠️ dataset 'evil' does not exist (any more); refresh the list"
    assert not (tmp_path / "runs" / "r").exists()


def test_a_jobs_folder_linking_outside_the_runs_root_is_refused(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "runs" / ".jobs").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(ValueError, match="outside the runs folder; remove the link"):
        TrainingService(tmp_path / "datasets", tmp_path / "runs", gpus=0)


@pytest.mark.parametrize("name", [*HOSTILE_NAMES, "ABSOLUTE"])
def test_a_hostile_run_name_is_refused_by_every_train_handler(train, tmp_path, name):
    name = str(tmp_path / "outside" / "run") if name == "ABSOLUTE" else name
    assert sorted(train.service.run_names()) == ["cli", "leak"]
    assert "No run called" in train.status(name)["progress"]
    for action in ("stop", "resume", "retry_on_cpu"):
        assert train.act(action)(name).startswith("⚠️ no run called")
    assert train.delete(name, True)[0].startswith("⚠️ no run called")
    assert all(update == {"__type__": "update"} for update in train.fill_form(name))
    assert (tmp_path / "outside" / "run" / "config.yaml").is_file()


def test_the_train_tab_names_paths_from_their_roots_and_shows_no_log_from_outside(train, tmp_path):
    out = train.status("cli")
    log, record = out["log"], out["record"]
    assert log == (
        "$ python -m multimask train --output-dir runs/cli\nerror: datasets/shapes/images/a.png: cannot read the image"
    )
    assert record["run_dir"] == "runs/cli" and str(tmp_path) not in json.dumps(record)
    assert train.status("leak")["log"] == "", "a log.txt linking outside the runs root is not read"
    secret = str(tmp_path / "secret.txt")
    message, _ = train.start(_form(start="local", weights_file=secret))
    assert message.startswith("⚠️ local weights file") and str(tmp_path) not in message.replace(secret, "")
    assert train.estimate(_form(start="local", weights_file="")).startswith(
        "⚠️ local weights file: give the path of a .pth or .pkl file in `runs/` or `datasets/`"
    )
