"""Jobs: work too long for one request (videos, large images), run in the background with progress.

:class:`JobManager` owns them in a process; a :class:`JobBackend` is where they live:
:class:`JobStore`, their folder on disk (``SR_JOBS_DIR``), shared by every worker process
of one host, or ``RedisJobStore`` (``SR_JOBS_REDIS_URL``), shared by replicas;
:class:`JobLimits` their bounds.
"""

from app.jobs.backend import BackendUnavailable, JobBackend, JobsUnavailable
from app.jobs.limits import JobLimits, from_settings
from app.jobs.manager import JOB_FORMATS, JobManager
from app.jobs.store import STATES, JobRecord, JobStore

__all__ = ["JOB_FORMATS", "STATES", "BackendUnavailable", "JobBackend", "JobLimits", "JobManager", "JobRecord",
           "JobStore", "JobsUnavailable", "from_settings"]
