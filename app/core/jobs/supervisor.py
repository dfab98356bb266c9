"""The supervisor of one training job: `python app/core/jobs/supervisor.py STATUS_FILE COMMAND...`.

It is the job's session and process-group leader (the manager starts it with `start_new_session`). It runs the
command, passes SIGTERM or SIGINT on to the command alone, as SIGTERM (not to the command's own children: PyTorch's
data-loading workers die of a SIGTERM that does not come from their parent), ignores SIGHUP, and writes the
command's exit status to STATUS_FILE ({"returncode", "ended"}) atomically, so the outcome is known even when the
app was not running when the job ended. Signal handlers, not SIG_IGN, so that the command starts with the default
dispositions. Standard library only: it starts fast and runs wherever the app's Python does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

NOT_STARTED = 127  # the exit status when the command cannot be started (as a shell reports it)


def supervise(status_file: str, argv: list[str]) -> int:
    """Run `argv` to its end, forwarding stop signals; write its exit status to `status_file` and return it."""
    child: subprocess.Popen | None = None
    pending: list[int] = []

    def forward(signum, frame):
        if child is None:
            pending.append(signum)
        else:
            child.send_signal(signal.SIGTERM)  # a no-op once it has ended

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, forward)
    signal.signal(signal.SIGHUP, lambda *a: None)
    try:
        child = subprocess.Popen(argv)
        if pending:
            child.send_signal(signal.SIGTERM)
        rc = child.wait()
    except OSError as e:
        print(f"error: cannot start {argv[0]}: {e}", flush=True)
        rc = NOT_STARTED
    tmp = status_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"returncode": rc, "ended": time.time()}, f)
    os.replace(tmp, status_file)
    return rc


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit("usage: python supervisor.py STATUS_FILE COMMAND [ARG...]")
    rc = supervise(sys.argv[1], sys.argv[2:])
    sys.exit(rc if rc >= 0 else 128 - rc)


if __name__ == "__main__":
    main()
