"""Training jobs: real processes in their own sessions, records and queue on disk, graceful stop and resume."""

from __future__ import annotations

import inspect
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.core.jobs.manager import (
    NAN_MESSAGE,
    NO_GPU_MESSAGE,
    OOM_MESSAGE,
    JobError,
    JobManager,
    _alive,
    classify_failure,
)

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def _mgr(tmp_path, **kw) -> JobManager:
    return JobManager(tmp_path / "jobs", tmp_path / "runs", require_module=None, **kw)


def _script(code: str) -> list[str]:
    return [PY, "-c", code]


def _wait_for(pred, timeout=60.0, interval=0.05):
    """`pred()` once it is truthy; fails naming the condition after `timeout` s (a 10x slower machine's bound)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"waited {timeout} s for {getattr(pred, '__name__', pred)}: {inspect.getsource(pred).strip()}")


def test_submit_runs_to_completion_with_a_record_on_disk(tmp_path):
    m = _mgr(tmp_path)
    job = m.submit(_script("import time; print('hel' + 'lo', flush=True); time.sleep(0.3)"), tmp_path / "runs" / "a")
    assert job["state"] == "running" and job["pid"] and job["pgid"] == job["pid"]
    assert os.getsid(job["pid"]) == job["pid"] != os.getsid(0), "its own session"
    job = m.wait(job["id"], 60)
    assert job["state"] == "completed" and job["returncode"] == 0 and job["started"] and job["ended"]
    assert "hello" in m.log_tail(job["id"])
    on_disk = JobManager(tmp_path / "jobs", require_module=None).get(job["id"])
    assert on_disk["state"] == "completed" and on_disk["command"][0] == PY


def test_jobs_on_one_device_run_one_after_the_other(tmp_path):
    m = _mgr(tmp_path)
    code = "import time; print(time.time(), flush=True); time.sleep(0.4); print(time.time(), flush=True)"
    a = m.submit(_script(code), tmp_path / "runs" / "a")
    b = m.submit(_script(code), tmp_path / "runs" / "b")
    c = m.submit(_script(code), tmp_path / "runs" / "c", device="cuda:7")  # another device: not queued behind
    assert (a["state"], b["state"], c["state"]) == ("running", "queued", "running")
    assert [j["id"] for j in m.jobs()] == [c["id"], b["id"], a["id"]], "newest first"
    b = m.wait(b["id"], 60)
    a = m.get(a["id"])
    assert a["state"] == b["state"] == "completed"
    a_end = float(m.log_tail(a["id"]).splitlines()[-1])
    b_start = float(m.log_tail(b["id"]).splitlines()[-2])
    assert b_start >= a_end
    m.wait(c["id"], 60)


def test_the_queue_survives_a_restart(tmp_path):
    m = _mgr(tmp_path)
    job = m.submit(_script("print('queued job ran')"), tmp_path / "runs" / "a", start=False)
    assert job["state"] == "queued"
    m2 = _mgr(tmp_path)  # the app restarted
    assert [j["id"] for j in m2.start_next()] == [job["id"]]
    assert m2.wait(job["id"], 60)["state"] == "completed"


def test_a_file_that_is_not_a_job_record_does_not_stop_the_queue(tmp_path):
    m = _mgr(tmp_path)
    for name, text in (
        ("no-state", '{"id": "no-state", "device": "cpu"}'),
        ("list", "[1, 2]"),
        ("other-id", '{"id": "x", "state": "queued", "device": "cpu"}'),
    ):
        (tmp_path / "jobs" / f"{name}.json").write_text(text)
    job = m.submit(_script("print('ran')"), tmp_path / "runs" / "a")
    assert m.wait(job["id"], 60)["state"] == "completed"
    assert [j["id"] for j in m.jobs()] == [job["id"]]
    with pytest.raises(JobError, match="the record of job 'no-state' is damaged"):
        m.stop("no-state")


def test_a_run_folder_has_one_queued_or_active_job_at_most(tmp_path):
    m = _mgr(tmp_path)
    run = tmp_path / "runs" / "a"
    first = m.submit(_script("import time; time.sleep(30)"), run)
    with pytest.raises(JobError, match=r"has a job running already"):
        m.submit(_script("pass"), run)
    m.stop(first["id"], timeout=5)
    first = m.wait(first["id"], 60)
    queued = m.resume(first["id"], start=False)
    with pytest.raises(JobError, match=r"has a job queued already"):
        m.resume(first["id"])  # e.g. Resume and "Run on the CPU instead" pressed together
    m.stop(queued["id"])


def test_deleting_a_run_waits_for_its_jobs_and_stays_inside_the_runs_folder(tmp_path):
    m = _mgr(tmp_path)
    run = tmp_path / "runs" / "a"
    job = m.submit(_script("import time; time.sleep(30)"), run)
    (run / "model_final.pth").write_bytes(b"x")
    with pytest.raises(JobError, match="a is running; stop it first"):
        m.delete_run(run)
    assert (run / "model_final.pth").is_file()
    m.stop(job["id"], timeout=5)
    m.wait(job["id"], 60)
    assert m.delete_run(run) == 1 and not run.exists() and m.jobs() == []
    for outside in (tmp_path / "runs", tmp_path / "elsewhere"):
        with pytest.raises(JobError, match="inside"):
            m.delete_run(outside)


@pytest.mark.parametrize(
    "device, inherited, expected",
    [
        ("cpu", "2,3", ""),
        ("cuda:0", None, "0"),
        ("cuda:0", "", "0"),
        ("cuda:1", "2,3", "3"),
        ("cuda:0,1", "GPU-a, GPU-b", "GPU-a,GPU-b"),
    ],
)
def test_a_job_sees_the_gpus_it_was_given_among_those_the_app_may_use(device, inherited, expected, monkeypatch):
    from app.core.jobs.manager import visible_devices

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_devices(device, inherited) == expected


def test_a_job_asking_for_a_gpu_the_app_may_not_use_fails_to_start(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    m = _mgr(tmp_path)
    job = m.submit(_script("pass"), tmp_path / "runs" / "a", device="cuda:1")
    assert job["state"] == "failed" and "CUDA_VISIBLE_DEVICES=5 has only 1 GPUs" in job["error"]


def test_stopping_a_queued_job_cancels_it(tmp_path):
    m = _mgr(tmp_path)
    a = m.submit(_script("import time; time.sleep(30)"), tmp_path / "runs" / "a")
    b = m.submit(_script("print('must not run')"), tmp_path / "runs" / "b")
    assert m.stop(b["id"])["state"] == "cancelled"
    m.stop(a["id"], timeout=5)
    assert m.wait(a["id"], 60)["state"] == "cancelled"
    assert m.get(b["id"])["pid"] is None
    with pytest.raises(JobError, match="already ended"):
        m.stop(b["id"])


def test_stop_is_graceful_when_the_job_handles_sigterm(tmp_path):
    m = _mgr(tmp_path)
    code = (
        "import signal, sys, time\n"
        "def stop(*a):\n    print('saving ' + 'checkpoint', flush=True); sys.exit(3)\n"
        "signal.signal(signal.SIGTERM, stop)\nprint('rea' + 'dy', flush=True)\ntime.sleep(30)\n"
    )
    job = m.submit(_script(code), tmp_path / "runs" / "a")
    _wait_for(lambda: "ready" in m.log_tail(job["id"]))
    assert m.stop(job["id"], timeout=20)["state"] == "stopping"
    job = m.wait(job["id"], 60)
    assert job["state"] == "cancelled" and job["returncode"] == 3
    assert "saving checkpoint" in m.log_tail(job["id"])


def _job_ignoring_sigterm(m: JobManager, tmp_path, body: str, word: str) -> dict:
    """A running job that ignores SIGTERM and then runs `body`, once `word` is in its log (`body` prints it
    built from two halves, so that the command line echoed at the log's top does not match)."""
    job = m.submit(
        _script(f"import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n{body}"), tmp_path / "runs" / "a"
    )
    _wait_for(lambda: word in m.log_tail(job["id"]))
    return job


@pytest.mark.slow
def test_a_job_that_ignores_sigterm_is_killed_after_the_timeout(tmp_path):
    m = _mgr(tmp_path)
    job = _job_ignoring_sigterm(m, tmp_path, "print('rea' + 'dy', flush=True)\ntime.sleep(60)\n", "ready")
    t0 = time.time()
    m.stop(job["id"], timeout=3.0)  # long enough that a busy machine still checks within it
    time.sleep(0.3)
    assert m.refresh() == [] and m.get(job["id"])["state"] == "stopping", "still within the timeout"
    job = m.wait(job["id"], 60)
    assert job["state"] == "cancelled" and "killed" in job["error"]
    assert 3.0 <= time.time() - t0 < 25
    assert not _alive(job["pid"], job["proc_start"])


@pytest.mark.slow
def test_a_stopping_job_that_still_writes_its_log_gets_longer_before_it_is_killed(tmp_path):
    """As a run that finishes an evaluation before its checkpoint: killed only at MAX_STOP_TIMEOUTS timeouts."""
    from app.core.jobs.manager import MAX_STOP_TIMEOUTS

    m = _mgr(tmp_path)
    job = _job_ignoring_sigterm(
        m, tmp_path, "while True:\n    print('eva' + 'luating', flush=True)\n    time.sleep(0.05)\n", "evaluating"
    )
    t0 = time.time()
    timeout = 1.0  # 20x the job's 0.05 s between log lines: a busy machine still writes within it
    m.stop(job["id"], timeout=timeout)
    time.sleep(timeout * 1.5)
    assert m.refresh() == [] and m.get(job["id"])["state"] == "stopping", "past the timeout, but still writing"
    job = m.wait(job["id"], timeout * MAX_STOP_TIMEOUTS + 30)
    assert job["state"] == "cancelled" and "killed" in job["error"]
    assert timeout * MAX_STOP_TIMEOUTS <= time.time() - t0 < timeout * MAX_STOP_TIMEOUTS + 20


def test_a_job_killed_from_outside_is_failed_with_its_log_tail(tmp_path):
    m = _mgr(tmp_path)
    job = m.submit(
        _script("import time; print('working ' + 'on it', flush=True); time.sleep(60)"), tmp_path / "runs" / "a"
    )
    _wait_for(lambda: "working on it" in m.log_tail(job["id"]))
    os.killpg(job["pgid"], signal.SIGKILL)
    job = m.wait(job["id"], 60)
    assert job["state"] == "failed" and "ended unexpectedly" in job["error"]
    assert "working on it" in job["log_tail"]


def test_a_failing_job_explains_what_to_do(tmp_path):
    m = _mgr(tmp_path)
    code = "import sys; print('RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB'); sys.exit(1)"
    job = m.wait(m.submit(_script(code), tmp_path / "runs" / "a")["id"], 60)
    assert job["state"] == "failed" and job["returncode"] == 1 and job["error"] == OOM_MESSAGE


def test_a_restarted_app_reattaches_to_a_running_job(tmp_path):
    m = _mgr(tmp_path)
    job = m.submit(_script("import time; time.sleep(1.0); print('done', flush=True)"), tmp_path / "runs" / "a")
    m2 = _mgr(tmp_path)  # a new manager without the Popen object
    assert m2.refresh() == [] and m2.get(job["id"])["state"] == "running"
    assert m2.submit(_script("print(1)"), tmp_path / "runs" / "b")["state"] == "queued", "the device is busy"
    _wait_for(lambda: m2.refresh() or m2.get(job["id"])["state"] != "running")
    job = m2.get(job["id"])
    assert job["state"] == "completed" and job["returncode"] == 0
    m._exit_status(job)  # the old manager reaps its child


def test_resume_adds_the_flag_before_the_config_options(tmp_path):
    m = _mgr(tmp_path)
    argv = _script("import sys; sys.exit(3)") + ["train", "--config-file", "x", "SOLVER.MAX_ITER", "60"]
    job = m.wait(m.submit(argv, tmp_path / "runs" / "a")["id"], 60)
    assert job["state"] == "failed"
    new = m.resume(job["id"], start=False)
    assert new["command"] == argv[:4] + ["--resume"] + argv[4:]
    assert new["run_dir"] == job["run_dir"] and new["resumed_from"] == job["id"]
    with pytest.raises(JobError, match="is queued"):
        m.resume(new["id"])


def test_commands_are_validated(tmp_path):
    m = JobManager(tmp_path / "jobs", tmp_path / "runs")
    run = tmp_path / "runs" / "a"
    for argv in (["/bin/sh", "-c", "true"], [PY, "-c", "print(1)"], "python -m multimask", [], [PY, "-m", 3]):
        with pytest.raises(JobError):
            m.submit(argv, run)
    with pytest.raises(JobError, match="inside"):
        m.submit([PY, "-m", "multimask", "train"], tmp_path / "elsewhere")
    with pytest.raises(JobError, match="device"):
        m.submit([PY, "-m", "multimask", "train"], run, device="cuda")
    with pytest.raises(JobError, match="no job"):
        m.get("nope")
    with pytest.raises(JobError, match="not a job id"):
        m.get("../x")
    assert m.jobs() == []


@pytest.mark.parametrize(
    "log, expected",
    [
        ("Traceback...\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate", OOM_MESSAGE),
        ("FloatingPointError: Loss became infinite or NaN at iteration=12!", NAN_MESSAGE),
        ("RuntimeError: Found no NVIDIA driver on your system.", NO_GPU_MESSAGE),
        ("AssertionError: Torch not compiled with CUDA enabled", NO_GPU_MESSAGE),
        (
            "INFO x\nerror: data/train.json: annotation 7: segmentation is not a polygon or RLE\n",
            "error: data/train.json: annotation 7: segmentation is not a polygon or RLE",
        ),
        ("Traceback (most recent call last):\n  File x\nKeyError: 'boxes'\n", "KeyError: 'boxes'"),
        ("", ""),
    ],
)
def test_classify_failure(log, expected):
    assert classify_failure(log) == expected


def _train_argv(tmp_path, run: Path, *options: str) -> list[str]:
    data = tmp_path / "data"
    subprocess.run(
        [
            PY,
            "-m",
            "multimask",
            "synth",
            "--out",
            str(data),
            "--num-train",
            "8",
            "--num-val",
            "2",
            "--height",
            "128",
            "--width",
            "160",
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    return [
        PY,
        "-m",
        "multimask",
        "train",
        "--config-file",
        "tiny_cpu",
        "--train-json",
        str(data / "train.json"),
        "--output-dir",
        str(run),
        *options,
        "SOLVER.CHECKPOINT_PERIOD",
        "1000",
        "SOLVER.WARMUP_ITERS",
        "5",
        "INPUT.MIN_SIZE_TRAIN",
        "(128,)",
        "INPUT.MAX_SIZE_TRAIN",
        "160",
        "MODEL.DEVICE",
        "cpu",
    ]


@pytest.mark.slow
def test_training_stops_gracefully_and_resumes_to_the_same_schedule(tmp_path):
    run = tmp_path / "runs" / "r"
    m = JobManager(tmp_path / "jobs", tmp_path / "runs", stop_timeout=60)
    # data-loading workers as the model-zoo presets have (4): the stop must not reach them
    argv = _train_argv(tmp_path, run, "SOLVER.MAX_ITER", "40", "DATALOADER.NUM_WORKERS", "2")
    job = m.submit(argv, run, cwd=REPO)
    # PeriodicWriter logs every 20 iterations ("iter: 19")
    # Bounds for a machine 10x slower than an idle CI-size one (20 iterations there take ~15 s with start-up).
    _wait_for(lambda: re.search(r"iter: 19\b", m.log_tail(job["id"], 200)) or m.refresh(), timeout=600)
    assert m.get(job["id"])["state"] == "running", m.log_tail(job["id"])
    m.stop(job["id"])
    job = m.wait(job["id"], 300)
    assert job["state"] == "cancelled", m.log_tail(job["id"])
    assert job["returncode"] == 3
    n = (
        int(
            re.search(
                r"stopped after (\d+) iterations \(checkpoint saved\); press Resume to continue", job["error"]
            ).group(1)
        )
        - 1
    )  # the checkpoint's iteration, counted from 0
    assert 19 <= n < 39
    assert (run / "last_checkpoint").read_text() == f"model_{n:07d}.pth"
    assert not (run / "model_final.pth").exists()

    new = m.resume(job["id"])
    new = m.wait(new["id"], 600)
    log = m.log_tail(new["id"], 400)
    assert new["state"] == "completed", log
    assert f"Resuming at iteration {n + 1}" in log
    assert (run / "model_final.pth").is_file()
    assert (run / "last_checkpoint").read_text() == "model_final.pth"


@pytest.mark.slow
def test_jobs_asking_for_any_gpu_share_the_gpus_one_job_each(tmp_path):
    m = _mgr(tmp_path, gpus=2)
    code = "import os, time; print('GPUS=' + os.environ['CUDA_VISIBLE_DEVICES'], flush=True); time.sleep(1.0)"
    a, b, c = (m.submit(_script(code), tmp_path / "runs" / n, device="cuda*1") for n in "abc")
    both = m.submit(_script(code), tmp_path / "runs" / "both", device="cuda*2")
    assert (a["state"], b["state"], c["state"], both["state"]) == ("running", "running", "queued", "queued")
    assert (a["device"], b["device"], a["device_request"]) == ("cuda:0", "cuda:1", "cuda*1")
    c, both = m.wait(c["id"], 60), m.wait(both["id"], 60)
    assert c["device"] in ("cuda:0", "cuda:1") and both["device"] == "cuda:0,1"
    assert "GPUS=0,1" in m.log_tail(both["id"])
    assert both["started"] >= max(m.get(j)["ended"] for j in (a["id"], b["id"], c["id"])), "it waited for both"
    too_many = m.wait(m.submit(_script(code), tmp_path / "runs" / "big", device="cuda*3")["id"], 5)
    assert too_many["state"] == "failed" and too_many["error"] == "needs 3 GPUs, 2 visible"
    resumed = m.resume(a["id"], start=False)
    assert resumed["device"] == "cuda*1", "a resumed job asks for any free GPU again"


def _stoppable_worker(out_dir: str) -> None:
    """A training process of `_launch_two`: GracefulStop after each step, a data loader with a worker process."""
    from types import SimpleNamespace

    import torch
    from detectron2.utils import comm

    from multimask.engine.hooks import STOPPED_EXIT_CODE, GracefulStop, TrainingStopped

    hook = GracefulStop()
    hook.before_train()
    hook.trainer = SimpleNamespace(iter=0, max_iter=10**6, checkpointer=SimpleNamespace(save=lambda *a, **k: None))
    try:
        for it, _ in enumerate(torch.utils.data.DataLoader(range(10**6), num_workers=1)):
            hook.trainer.iter = it
            if it == 3 and comm.is_main_process():
                print("rea" + "dy", flush=True)
            time.sleep(0.2)  # a training step: long enough for a worker's death to be noticed within it
            hook.after_step()
    except TrainingStopped as e:
        print(f"rank {comm.get_rank()} {e}", flush=True)
        os._exit(STOPPED_EXIT_CODE)  # as the CLI's training processes do


def _launch_two(out_dir: str) -> None:
    from multimask.engine.launch import launch_until_stopped

    launch_until_stopped(_stoppable_worker, 2, args=(out_dir,))


@pytest.mark.slow
def test_stop_reaches_every_training_process_through_the_launcher(tmp_path):
    """Two processes (gloo, as `--num-gpus 2` on two GPUs; each with a data-loading worker): the supervisor
    passes the stop to the launcher alone, the launcher to both, and they stop at the same iteration."""
    m = _mgr(tmp_path, stop_timeout=60)
    argv = _script(f"from tests.test_jobs import _launch_two; _launch_two({str(tmp_path)!r})")
    job = m.submit(argv, tmp_path / "runs" / "two", cwd=REPO)
    _wait_for(lambda: "ready" in m.log_tail(job["id"]) or m.refresh(), timeout=120)
    m.stop(job["id"])
    job = m.wait(job["id"], 300)
    log = m.log_tail(job["id"], 200)
    assert job["state"] == "cancelled" and job["returncode"] == 3, log
    stops = sorted(re.findall(r"rank (\d) stopped at iteration (\d+)", log))
    assert [r for r, _ in stops] == ["0", "1"] and stops[0][1] == stops[1][1], log
    assert "Traceback" not in log, log
