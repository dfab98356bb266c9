"""Training jobs run by the app: separate processes with records on disk (`JobManager`)."""

from .jobs import JobError, JobManager, classify_failure

__all__ = ["JobError", "JobManager", "classify_failure"]
