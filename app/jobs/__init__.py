"""Jobs: work too long for one request (videos, large images), run in the background with progress.

:class:`JobManager` owns them in a process; :class:`JobStore` is their folder on disk
(``SR_JOBS_DIR``), shared by every worker process; :class:`JobLimits` their bounds.
"""

from app.jobs.limits import JobLimits, from_settings
from app.jobs.manager import JOB_FORMATS, JobManager, JobsUnavailable
from app.jobs.store import STATES, JobRecord, JobStore

__all__ = ["JOB_FORMATS", "STATES", "JobLimits", "JobManager", "JobRecord", "JobStore", "JobsUnavailable",
           "from_settings"]
