"""app/core/jobs/supervisor.py on its own: exit statuses, a command that cannot start, stop signals forwarded."""

import json
import signal
import subprocess
import sys
import time

from app.core.jobs import supervisor

SUPERVISOR = supervisor.__file__


def _run(tmp_path, *command):
    status = tmp_path / "job.exit.json"
    out = subprocess.run([sys.executable, SUPERVISOR, str(status), *command], capture_output=True, text=True)
    return out, json.loads(status.read_text()) if status.exists() else None


def test_the_command_s_exit_status_is_recorded_and_returned(tmp_path):
    out, status = _run(tmp_path, sys.executable, "-c", "print('hello'); raise SystemExit(3)")
    assert out.returncode == 3 and out.stdout == "hello\n"
    assert status["returncode"] == 3 and status["ended"] <= time.time()
    assert not list(tmp_path.glob("*.tmp")), "the status file is written atomically"


def test_a_command_that_cannot_start_is_reported(tmp_path):
    out, status = _run(tmp_path, str(tmp_path / "no-such-program"))
    assert out.returncode == status["returncode"] == supervisor.NOT_STARTED
    assert "cannot start" in out.stdout and "no-such-program" in out.stdout


def test_sigint_reaches_the_command_as_sigterm_and_its_status_is_kept(tmp_path):
    status = tmp_path / "job.exit.json"
    child = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: (print('got SIGTERM', flush=True), sys.exit(5)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, SUPERVISOR, str(status), sys.executable, "-c", child], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline() == "ready\n"  # waits for the command to be up (no time bound needed)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 5 and proc.stdout.read() == "got SIGTERM\n"
    assert json.loads(status.read_text())["returncode"] == 5


def test_usage_without_a_command(tmp_path):
    out = subprocess.run([sys.executable, SUPERVISOR, str(tmp_path / "s.json")], capture_output=True, text=True)
    assert out.returncode == 1 and "usage" in out.stderr
