"""The jobs manager: admits uploads as jobs, runs them in the background, keeps their files within bounds.

HTTP-agnostic (the route translates): :meth:`JobManager.reserve` refuses a new
job before its body is read (shutting down, queue full, quota full),
:meth:`JobManager.admit` checks the stored upload (image header or video probe
against the limits) and queues it, workers run queued jobs
``concurrency`` at a time — a video through :func:`app.video.upscale_video`,
an image through :meth:`Pipeline.upscale` — and a janitor expires finished
jobs and fails those whose owner died (see :mod:`app.jobs.store`).

The runners cannot die: each job runs inside a catch-all, so whatever one job
raises (a cancel from another process, its folder deleted under it, a failed
write of its record, a bug) is logged and ends *that job* as failed or
cancelled, and the runner takes the next. Should a runner task end anyway, its
done-callback logs it and starts a new one; the janitor also drops queued jobs
that another process cancelled, so they stop holding queue places.

Uploads reserve their bytes against the quota before writing them
(:meth:`JobManager.reserve` for the declared length, :meth:`JobManager.grow`
as a body of unknown length arrives), across processes (:meth:`JobStore.reserve`).

Shutdown (:meth:`close`): no new jobs, and no more taken from a shared queue;
queued ones fail at once ("the service shut down before the job started");
running ones get ``drain_timeout_s`` to finish, then are cancelled. With a
shared queue (Redis) a cancelled one goes back to the queue for another replica
to run from the start (a rolling update loses no job); without one it fails
with that reason. A job is never left "running" by a process that is gone: the
next start (or any live sibling's janitor) finds its lock free and fails it as
interrupted.

Where the records, ownership, cancels, quota and queue live is the backend's
(:class:`app.jobs.backend.JobBackend`): this host's folder by default, Redis with a
shared volume when ``SR_JOBS_REDIS_URL`` is set. With a shared queue an admitted
job is handed to the queue and run by whichever replica has a free runner; a
heartbeat renews the leases of the jobs this process holds, and a job whose owner
stopped renewing is put back in the queue once (:data:`MAX_TAKEOVERS`), then failed.
While the backend is away, running jobs go on; a finished job's record is kept
in memory, its lease renewed, and written as soon as the backend answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from app.engine.errors import (
    RESTART_RETRY_S,
    RESTARTING,
    DeadlineExceeded,
    DeviceLost,
    EngineClosed,
    EngineError,
    QueueFull,
    TooManyTiles,
    WorkerRestarted,
)
from app.imaging.animation import ANIMATION_OUTPUTS, animated_output
from app.imaging.decode import peek_file
from app.imaging.encode import OUTPUT_FORMATS
from app.imaging.errors import ImageError, ImageTooComplex, ImageTooLarge, UnsupportedImageType
from app.imaging.limits import ImageLimits, check_size
from app.jobs.backend import BackendUnavailable, JobBackend, JobsUnavailable, Lease, LeaseLost
from app.jobs.limits import JobLimits
from app.jobs.observer import JobsObserver
from app.jobs.store import (
    ACTIVE,
    CANCELLED,
    DONE,
    FAILED,
    QUEUED,
    RUNNING,
    TOMBSTONE_FACTOR,
    JobRecord,
    JobStore,
    new_id,
)
from app.pipeline import InvalidOptions, OutputOptions, Pipeline
from app.video import VIDEO_FORMATS, InvalidVideo, VideoError, output_format, probe_video, upscale_video

log = logging.getLogger(__name__)

VIDEO_CHOICES = ("mp4", "webm")
JOB_FORMATS = ("same", *VIDEO_CHOICES, *OUTPUT_FORMATS)  # same, mp4, webm, png, jpeg, webp
_WRITE_EVERY_S = 0.5  # progress reaches job.json (read by other processes) at most this often
_QUOTA_EVERY_S = 2.0
GROW_AHEAD = 8 << 20  # a body of unknown length reserves this much ahead of what it has written
MAX_TAKEOVERS = 1  # times a job whose owner died is run again elsewhere before it is failed
INTERRUPTED = "interrupted: the service stopped before the job finished"


def make_backend(limits: JobLimits) -> JobBackend:
    """The folder on this host, or Redis + the shared folder when ``SR_JOBS_REDIS_URL`` is set."""
    if not limits.redis_url:
        return JobStore(limits.root)
    from app.jobs.redis_store import RedisJobStore  # the optional `redis` extra

    return RedisJobStore(limits.root, limits.redis_url, limits.redis_prefix, limits.lease_s)


class _Cancelled(Exception):
    """The job was deleted (possibly by another process) while it ran."""


class _QuotaExceeded(Exception):
    pass


@dataclass
class _Active:
    record: JobRecord
    lock_fd: Lease  # the backend's hold on the job (an flock'd descriptor, or a Redis lease)
    task: asyncio.Task[None] | None = None
    user_cancelled: bool = False
    lost: bool = False  # the lease lapsed and another replica took the job: write nothing more
    reserved: int = 0  # upload bytes held against the quota
    last_write: float = 0.0
    last_check: float = 0.0


class JobManager:
    def __init__(self, pipeline: Pipeline, limits: JobLimits, observer: JobsObserver | None = None) -> None:
        self.pipeline = pipeline
        self.limits = limits
        self.observer = observer or JobsObserver()  # metrics, when the app plugs them in
        self.store: JobBackend = make_backend(limits)
        self._active: dict[str, _Active] = {}
        self._unsaved: dict[str, _Active] = {}  # finished while the backend was away: written when it is back
        self._workers: list[asyncio.Task[None]] = []
        self.runner_restarts = 0  # runner tasks that ended unexpectedly and were replaced (0 when healthy)
        self._janitor: asyncio.Task[None] | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._accepting = False
        self._closing = False

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Fail the jobs that a dead process left unfinished, then start the workers and the janitor."""
        try:
            await asyncio.to_thread(self.sweep)
        except BackendUnavailable as exc:  # the janitor tries again; the rest of the service starts
            log.error("jobs: %s at start-up; jobs answer 503 until it is back", exc)
        self._workers = [self._start_runner(i) for i in range(self.limits.concurrency)]
        self._janitor = asyncio.create_task(self._janitor_loop(), name="jobs-janitor")
        self._keepalive = asyncio.create_task(self._keepalive_loop(), name="jobs-heartbeat")
        self._accepting = True

    async def close(self, drain_timeout_s: float = 30.0) -> None:
        """Stop admitting; fail queued jobs; let running ones finish within the timeout, then fail them."""
        self._accepting = False
        self._closing = True
        for active in list(self._active.values()):
            if _waiting(active):  # uploads still arriving are refused by admit()
                self._finish(active, FAILED, "the service shut down before the job started", "shutting_down")
        running = [a.task for a in self._active.values() if a.task is not None]
        if running:
            _, late = await asyncio.wait(running, timeout=drain_timeout_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        self._flush_unsaved()
        loops = [t for t in (self._janitor, self._keepalive) if t is not None]
        for task in (*self._workers, *loops):
            task.cancel()
        await asyncio.gather(*self._workers, *loops, return_exceptions=True)
        self.store.close()

    @property
    def accepting(self) -> bool:
        return self._accepting

    # -- admission --------------------------------------------------------------------------

    def reserve(self, declared_bytes: int | None = None) -> tuple[str, Path]:
        """A new job's id and its upload path, or :class:`JobsUnavailable`; the caller streams the body there.

        The declared length (or a first slice of an undeclared one, :data:`GROW_AHEAD`) is reserved
        against the quota now, before any byte is written, so concurrent uploads cannot overbook it.
        """
        if not self._accepting:
            raise JobsUnavailable(503, "shutting_down", "the service is not accepting jobs", 1)
        self._drop_cancelled()
        queued = sum(1 for a in self._active.values() if a.record.state == QUEUED) + self.store.waiting()
        if queued >= self.limits.max_queued:
            raise JobsUnavailable(503, "jobs_queue_full", f"{queued} jobs are waiting already; retry later", 30)
        job_id = new_id()
        folder = self.store.create(job_id)
        try:
            fd = self.store.lock(job_id)  # held from now on: a dead uploader's folder is recognised as such
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self._active[job_id] = _Active(JobRecord(job_id, "", 0, "", "", "upload", ""), fd)
        need = max(1, min(declared_bytes or 0, self.limits.max_upload_bytes))
        ahead = 0 if declared_bytes else min(GROW_AHEAD, self.limits.max_upload_bytes) - need
        try:
            granted = self.store.reserve(job_id, need, self.limits.max_bytes, ahead)
        except BaseException:
            self.discard(job_id)
            raise
        if not granted:
            self.discard(job_id)
            raise _storage_full()
        self._active[job_id].reserved = granted
        return job_id, folder / "upload"

    def grow(self, job_id: str, written: int) -> int:
        """Make sure ``written`` bytes of the job's upload are reserved (with room ahead); the bytes reserved.

        :class:`JobsUnavailable` 507 when the quota has no room for them. Blocking (it walks the
        jobs folder under the quota lock): call it from a thread.
        """
        active = self._active.get(job_id)
        if active is None:  # ended meanwhile (the service is shutting down)
            raise JobsUnavailable(503, "shutting_down", "the service is not accepting jobs", 1)
        if written <= active.reserved:
            return active.reserved
        granted = self.store.reserve(job_id, written, self.limits.max_bytes, GROW_AHEAD)
        if not granted:
            raise _storage_full("the upload does not fit in the jobs storage quota")
        active.reserved = granted
        return granted

    async def admit(self, job_id: str, upload: Path, scale: int, fmt: str, upload_name: str = "") -> JobRecord:
        """Check the stored upload and queue it; on any refusal the job's folder is removed and the error raised.

        Raises ``ImageError``/``VideoError`` (with their statuses), ``InvalidOptions`` (422).
        """
        active = self._active[job_id]
        try:
            record = await asyncio.to_thread(self._inspect, job_id, upload, scale, fmt)
        except BaseException:
            self.discard(job_id)
            raise
        if not self._accepting:
            self.discard(job_id)
            raise JobsUnavailable(503, "shutting_down", "the service is not accepting jobs", 1)
        record.upload_name = upload_name
        active.record = record
        try:
            self.store.write(record)
        except BaseException:
            self.discard(job_id)
            raise
        self.store.settle(job_id)  # the upload is whole: its file counts from now on
        self._entered(record, QUEUED)
        try:
            shared = self.store.enqueue(job_id, active.lock_fd)
        except BaseException:
            self.discard(job_id)
            raise
        if shared:  # any replica with a free runner takes it from the queue, this one included
            self._active.pop(job_id, None)
            self._count_active()
        return record

    def discard(self, job_id: str) -> None:
        """Forget a job that never made it to the queue (refused upload)."""
        active = self._active.pop(job_id, None)
        try:
            self.store.remove(job_id)
        except BackendUnavailable:  # the files go now; what Redis keeps of the upload, the janitor clears
            shutil.rmtree(self.store.folder(job_id), ignore_errors=True)
        finally:
            if active is not None:
                self.store.unlock(active.lock_fd)

    def _inspect(self, job_id: str, upload: Path, scale: int, fmt: str) -> JobRecord:
        self.pipeline.check_scale(scale)
        size = upload.stat().st_size
        if size == 0:
            raise InvalidVideo("the upload is empty")
        image = _image_header(upload, scale, self.pipeline.limits, self.limits.max_image_bytes)
        if image is not None:
            source_format, width, height, frames = image
            if fmt in VIDEO_CHOICES:
                raise InvalidOptions(f"format={fmt} is for videos; this upload is a {source_format} image")
            if size > self.limits.max_image_bytes:
                raise ImageTooLargeFile(f"image jobs take at most {self.limits.max_image_bytes} bytes")
            check_size(width, height, scale, self.pipeline.limits)
            out = OutputOptions("same" if fmt == "same" else fmt).resolve(source_format)
            media = OUTPUT_FORMATS[out]
            if frames > 1 and source_format in ("GIF", "PNG", "WEBP"):  # answered animated, as /upscale does
                out = animated_output(fmt, source_format)
                if out not in ANIMATION_OUTPUTS:
                    raise InvalidOptions(f"an animation cannot be {out}: choose {', '.join(ANIMATION_OUTPUTS)} or same")
                media = ANIMATION_OUTPUTS[out]
            name = f"input.{source_format.lower()}"
            upload.rename(upload.with_name(name))
            return JobRecord(job_id, "image", scale, out, media, name, f"result.{out}",
                             frames_total=1, input_bytes=size,
                             info={"source_format": source_format, "width": width, "height": height})
        if fmt not in ("same", *VIDEO_CHOICES):
            raise InvalidOptions(f"format={fmt} is for images; for a video choose mp4, webm or same")
        try:
            info = probe_video(upload, scale, self.limits.video)
        except InvalidVideo as exc:
            reason = str(exc).removeprefix("not a readable video: ")
            raise InvalidVideo(f"the upload is neither an accepted image (PNG, JPEG, WebP, BMP, GIF, TIFF) "
                               f"nor a video FFmpeg can read ({reason})") from None
        out = output_format(fmt, info.container)
        _, _, media_type, ext = VIDEO_FORMATS[out]
        name = "input.video"
        upload.rename(upload.with_name(name))
        return JobRecord(job_id, "video", scale, out, media_type, name, f"result.{ext}", frames_total=info.frames,
                         input_bytes=size, info=info.as_dict())

    # -- reading ----------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        """This process's live record if it owns the job, else the one on disk (another worker's, or finished)."""
        active = self._active.get(job_id)
        if active is not None and active.record.kind:
            if not self._cancelled_elsewhere(job_id):
                return active.record
            if active.task is None:  # queued here, deleted by another process: it ends now
                self._finish(active, CANCELLED, "cancelled", "cancelled")
            return None  # running: its runner sees the cancel within _WRITE_EVERY_S
        try:
            return self.store.read(job_id)
        except KeyError:
            return None
        # BackendUnavailable goes up: the route answers 503

    def result_file(self, record: JobRecord) -> Path | None:
        """The result file, only if it is a regular file directly in the job's folder; else ``None``."""
        return self.store.result_file(record)

    async def delete(self, job_id: str) -> bool:
        """Cancel the job if it is queued or running, and remove it and its files; ``False`` if unknown."""
        active = self._active.get(job_id)
        if active is not None and active.record.kind:
            gone = self._cancelled_elsewhere(job_id)  # deleted on another replica already: stop it, answer 404
            active.user_cancelled = True
            if active.task is not None:
                active.task.cancel()
                await asyncio.gather(active.task, return_exceptions=True)
            elif active.record.state == QUEUED:
                self._finish(active, CANCELLED, "cancelled", "cancelled")
            self.store.remove(job_id)
            return not gone
        if self.get(job_id) is None:
            return False
        self.store.remove(job_id)  # another process's job: it sees its folder gone and stops
        return True

    # -- running ----------------------------------------------------------------------------

    def _start_runner(self, index: int) -> asyncio.Task[None]:
        task = asyncio.create_task(self._work(), name=f"jobs-worker-{index}")
        task.add_done_callback(lambda t: self._runner_ended(t, index))
        return task

    def _runner_ended(self, task: asyncio.Task[None], index: int) -> None:
        """A runner should only end when :meth:`close` cancels it; otherwise log why and start another."""
        if self._closing or task not in self._workers:
            return
        reason = "was cancelled" if task.cancelled() else f"died: {task.exception()!r}"
        log.error("jobs runner %d %s; starting a new one", index, reason)
        self.runner_restarts += 1
        self._workers[self._workers.index(task)] = self._start_runner(index)

    async def _work(self) -> None:
        """Run queued jobs one after another, forever: nothing a job (or the backend) does ends this loop."""
        while not self._closing:  # a draining process takes no more work: another replica will
            try:
                job_id, lease = await self.store.next_job()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the backend is away: ask again in a moment
                log.warning("jobs runner: no next job (%s)", exc)
                await asyncio.sleep(1.0)
                continue
            active = self._active.get(job_id)
            if active is None and lease is not None:  # from a shared queue: admitted by any replica
                active = self._adopt(job_id, lease)
            if active is not None and self._closing and lease is not None:  # taken as the drain began
                self._hand_back(active, restarted=False)
                return
            if active is None or active.record.state != QUEUED:
                continue  # cancelled or failed while it waited
            try:
                active.task = asyncio.create_task(self._run(active), name=f"job-{job_id}")
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(active.task)
            except asyncio.CancelledError:
                raise  # close() stops the runner (it has already dealt with the job)
            except BaseException:  # _run catches everything; this is the net under the net
                log.exception("job %s: the runner caught what the job let through", job_id)
                if job_id in self._active:
                    self._finish(active, FAILED, "internal error (runner)", "internal_error")

    def _adopt(self, job_id: str, lease: Lease) -> _Active | None:
        """A job this process took from the shared queue (its lease held); ``None`` if it is no longer queued."""
        try:
            record = self.store.read(job_id)
        except Exception as exc:
            log.warning("job %s: could not read it from the queue (%s); it is taken over later", job_id, exc)
            return None  # the lease lapses and a janitor puts it back
        if record is None or record.state != QUEUED or self._cancelled_elsewhere(job_id):
            self.store.unlock(lease)
            return None
        record.owner_pid = os.getpid()
        active = _Active(record, lease)
        self._active[job_id] = active
        return active

    async def _run(self, active: _Active) -> None:
        """One job, start to end; every way it can end leaves it done, failed or cancelled, never running."""
        record = active.record
        folder = self.store.folder(record.id)
        # its own name: a replica that lost the job (and does not know yet) must not touch the new owner's
        partial = folder / f"partial.{secrets.token_hex(4)}.{record.result_name}"
        try:
            if self.store.cancel_requested(record.id):  # deleted by another process while it waited
                raise _Cancelled
            record.started = time.time()
            self._entered(record, RUNNING)
            self._save(active)
            if record.kind == "video":
                await self._run_video(active, folder / record.input_name, partial)
            else:
                await self._run_image(active, folder / record.input_name, partial)
            partial.rename(folder / record.result_name)
        except asyncio.CancelledError:
            if active.user_cancelled:
                self._finish(active, CANCELLED, "cancelled", "cancelled")
            elif not (self._closing and self._hand_back(active, restarted=True)):
                self._finish(active, FAILED, "the service shut down before the job finished", "shutting_down")
            return
        except _Cancelled:
            self._finish(active, CANCELLED, "cancelled", "cancelled")
            return
        except _QuotaExceeded:
            self._finish(active, FAILED, "the jobs storage quota filled up while the result was written",
                         "storage_full")
        except (VideoError, ImageError, EngineError, InvalidOptions) as exc:
            self._finish(active, FAILED, str(exc), _error_code(exc))
        except Exception as exc:  # a bug of ours, or the disk: the job ends with a reason, the runner goes on
            if self._cancelled_elsewhere(record.id):  # its folder went (a delete elsewhere) under the work
                self._finish(active, CANCELLED, "cancelled", "cancelled")
            else:
                log.exception("job %s failed", record.id)
                self._finish(active, FAILED, f"internal error ({type(exc).__name__})", "internal_error")
        else:
            try:
                record.result_bytes = (folder / record.result_name).stat().st_size
            except OSError:  # deleted between the rename and now
                self._finish(active, CANCELLED, "cancelled", "cancelled")
            else:
                record.progress = 1.0
                self._finish(active, DONE, None, None)
        finally:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)

    async def _run_video(self, active: _Active, src: Path, dst: Path) -> None:
        record = active.record

        def progress(done: int, total: int) -> None:
            if done > record.frames_done:
                self.observer.video_frames(record.scale, done - record.frames_done)
            record.frames_done, record.frames_total = done, max(total, done)
            record.progress = done / record.frames_total if record.frames_total else 0.0
            if record.started is not None:
                elapsed = time.time() - record.started
                record.fps = round(done / elapsed, 2) if elapsed > 0 else None
            now = time.monotonic()
            if now - active.last_write >= _WRITE_EVERY_S:
                if self.store.cancel_requested(record.id):
                    raise _Cancelled
                self._save(active)
            if now - active.last_check >= _QUOTA_EVERY_S:
                active.last_check = now
                try:
                    self.store.settle(record.id)  # what the partial result holds, for every replica's quota
                    over = self.store.usage() > self.limits.max_bytes
                except BackendUnavailable:
                    over = False  # checked again when the backend is back
                if over:
                    raise _QuotaExceeded

        result = await upscale_video(self.pipeline, src, dst, record.scale, record.format, progress,
                                     config=self.limits.encoder)
        record.info = {**record.info, "output": {"width": result.width, "height": result.height, "fps": result.fps,
                                                  "frames": result.frames, "audio": result.audio,
                                                  "seconds": round(result.seconds, 3), "encoder": result.encoder,
                                                  "frames_per_s": result.frames_per_s}}

    async def _run_image(self, active: _Active, src: Path, dst: Path) -> None:
        record = active.record
        data = await asyncio.to_thread(src.read_bytes)
        deadline = time.monotonic() + self.limits.image_timeout_s
        while True:
            try:
                asked = "same" if record.format == "gif" else record.format  # only same on a GIF answers a GIF
                result = await self.pipeline.upscale(data, record.scale, OutputOptions(asked), deadline=deadline)
                break
            except QueueFull as exc:  # the engine is busy with requests: the job waits its turn
                if time.monotonic() + exc.retry_after_s > deadline:
                    raise
                await asyncio.sleep(min(exc.retry_after_s, 1.0))
            except RESTARTING:  # the worker or the device process is coming back: the job waits for it
                if self.pipeline.lost is not None or time.monotonic() + RESTART_RETRY_S > deadline:
                    raise  # (this process's own device lost: only a restart of the process helps)
                await asyncio.sleep(RESTART_RETRY_S)
        await asyncio.to_thread(dst.write_bytes, result.body)
        record.frames_done = 1
        w, h = result.output_size
        record.info = {**record.info, "output": {"width": w, "height": h}}

    # -- bookkeeping ------------------------------------------------------------------------

    def _save(self, active: _Active) -> None:
        active.last_write = time.monotonic()
        try:
            self.store.write(active.record, active.lock_fd)
        except FileNotFoundError:  # deleted by another process
            raise _Cancelled from None
        except LeaseLost:  # another replica took the job over: stop, write nothing more
            active.lost = True
            raise _Cancelled from None
        except BackendUnavailable as exc:  # progress is written again in half a second; the job goes on
            log.warning("job %s: progress not saved (%s)", active.record.id, exc)

    def _entered(self, record: JobRecord, state: str) -> None:
        record.state = state
        self.observer.entered(record.kind, state)
        self._count_active()

    def _count_active(self) -> None:
        for s in ACTIVE:  # uploads still arriving (no kind yet) are not jobs yet: discard() need not recount
            self.observer.active(s, sum(1 for a in self._active.values() if a.record.kind and a.record.state == s))

    def _cancelled_elsewhere(self, job_id: str) -> bool:
        try:
            return self.store.cancel_requested(job_id)
        except (OSError, KeyError):
            return True

    def _hand_back(self, active: _Active, *, restarted: bool) -> bool:
        """Shutting down: put a job this process holds back in the shared queue for another replica to run
        from the start. ``False`` where the queue is this process's own (the caller fails the job then).

        A hand-back is no failure, so it does not count against :data:`MAX_TAKEOVERS` (a job
        whose replica is killed does): a rolling update restarts a long job, it does not lose it.
        """
        record = active.record
        if not self.store.shared_queue or self._active.get(record.id) is not active or active.lost:
            return False
        try:
            if restarted:  # before the queue has it: the next owner's partial result must not be ours to drop
                self.store.drop_files(record.id, keep=("job.json", "lock", record.input_name))
            if not self.store.requeue(_queued_again(record, record.attempts), active.lock_fd):
                return False
        except Exception as exc:  # the backend is away: the job fails here, as without a shared queue
            log.warning("job %s: could not hand it back to the queue (%s)", record.id, exc)
            return False
        self._active.pop(record.id, None)
        self._count_active()
        log.info("job %s: handed back to the queue for another replica (this one is shutting down)", record.id)
        return True

    def _finish(self, active: _Active, state: str, error: str | None, code: str | None) -> None:
        """End the job in ``state``: the bookkeeping always happens, the files are written if they can be."""
        record = active.record
        if self._active.get(record.id) is not active:
            return  # finished already (a cancel and the run's own ending can both get here)
        record.error, record.error_code = error, code
        record.finished = time.time()
        record.expires = record.finished + self.limits.ttl_s
        self._active.pop(record.id, None)
        kept = False
        try:
            self._entered(record, state)
            if active.lost:
                pass  # another replica owns it now
            elif not active.user_cancelled and state != CANCELLED:
                with contextlib.suppress(FileNotFoundError, KeyError):
                    self.store.drop_files(record.id, keep=("job.json", "lock", record.result_name))
                    self._write_end(active)
            else:
                self.store.remove(record.id)
        except BackendUnavailable as exc:  # keep the lease and the record: written when the backend is back
            log.warning("job %s: its end (%s) is written when the jobs backend is back (%s)", record.id, state, exc)
            self._unsaved[record.id] = active
            kept = True
        except Exception:  # the disk refused (full, read-only, replaced): the job has ended anyway
            log.exception("job %s: could not record its end (%s)", record.id, state)
        finally:
            if not kept:
                self.store.unlock(active.lock_fd)

    def _write_end(self, active: _Active) -> None:
        try:
            self.store.write(active.record, active.lock_fd)
        except LeaseLost:
            log.warning("job %s: taken over by another replica before its end was written", active.record.id)
            return
        self.store.settle(active.record.id)  # the result alone counts against the quota from now on

    def _flush_unsaved(self) -> None:
        """Write the ends of jobs that finished while the backend was away, now that it may be back."""
        for job_id, active in list(self._unsaved.items()):
            try:
                self._write_end(active)
            except BackendUnavailable:
                return
            except Exception:
                log.exception("job %s: could not record its end", job_id)
            self._unsaved.pop(job_id, None)
            self.store.unlock(active.lock_fd)

    # -- the heartbeat ----------------------------------------------------------------------

    async def _keepalive_loop(self) -> None:
        """Renew the leases of the jobs held here, write ends kept while the backend was away, refresh gauges."""
        while True:
            await asyncio.sleep(self.store.heartbeat_s)
            try:
                await self.beat()
            except Exception as exc:  # never let it end: the next beat may find the backend back
                log.warning("jobs heartbeat failed: %s", exc)

    async def beat(self) -> None:
        held = [*self._active.values(), *self._unsaved.values()]
        lost = await asyncio.to_thread(self.store.renew, [a.lock_fd for a in held])
        for active in held:
            if active.lock_fd in lost and active.record.id in self._active:
                log.error("job %s: its lease lapsed and another replica may run it; stopping here", active.record.id)
                active.lost = True
                if active.task is not None:
                    active.task.cancel()
        self._flush_unsaved()
        counts = await asyncio.to_thread(self.store.counts)
        for state, count in counts.items():
            self.observer.backend(state, count)

    # -- the janitor ------------------------------------------------------------------------

    async def _janitor_loop(self) -> None:
        period = max(1.0, min(60.0, self.limits.ttl_s / 4, self.store.janitor_s or 60.0))
        while True:
            await asyncio.sleep(period)
            try:
                self._drop_cancelled()
                await asyncio.to_thread(self.sweep)
            except BackendUnavailable as exc:
                log.warning("jobs janitor: %s", exc)
            except Exception:  # never let housekeeping take the service down
                log.exception("jobs janitor pass failed")

    def _drop_cancelled(self) -> None:
        """End this process's queued jobs that another process cancelled, so they stop holding queue places."""
        for active in list(self._active.values()):
            if _waiting(active) and self._cancelled_elsewhere(active.record.id):
                self._finish(active, CANCELLED, "cancelled", "cancelled")

    def sweep(self, now: float | None = None) -> None:
        """Fail jobs whose owner is gone, expire finished results, drop old tombstones and stray uploads.

        One odd folder (not a job's, removed by a sibling meanwhile, unreadable) is logged and skipped:
        it never stops the pass, nor the start-up that runs one.
        """
        now = now or time.time()
        for job_id in self.store.job_ids():
            if job_id in self._active or job_id in self._unsaved:
                continue
            try:
                self._sweep_one(job_id, now)
            except FileNotFoundError:
                pass  # a sibling process removed it meanwhile
            except BackendUnavailable:
                raise  # the whole pass waits for the backend
            except Exception:
                log.exception("jobs janitor: skipping %s", job_id)

    def _sweep_one(self, job_id: str, now: float) -> None:
        tombstone_s = max(self.limits.ttl_s * (TOMBSTONE_FACTOR - 1), 86400.0)
        record = self.store.read(job_id)
        if record is None:  # an upload whose process died before the job was queued (or no record of ours)
            if self.store.stray(job_id, now):
                self.store.remove(job_id)
            return
        if record.state in ACTIVE:
            lease = self.store.claim_orphan(job_id)  # None while its owner lives (or it waits in a shared queue)
            if lease is not None:
                try:
                    self._orphaned(job_id, lease, now)
                finally:
                    self.store.unlock(lease)
        elif record.expires is not None and now >= record.expires:
            if not record.expired:
                record.expired = True
                self.store.expire(record, record.expires + tombstone_s)
            elif now >= record.expires + tombstone_s:
                self.store.remove(record.id)

    def _orphaned(self, job_id: str, lease: Lease, now: float) -> None:
        """A queued or running job whose owner is gone: run it again elsewhere (once), else fail it with why."""
        record = self.store.read(job_id)  # again, now that it is ours
        if record is None or record.state not in ACTIVE:
            return
        if record.attempts < MAX_TAKEOVERS:
            retry = _queued_again(record, record.attempts + 1)
            self.store.drop_files(job_id, keep=("job.json", "lock", record.input_name))
            if self.store.requeue(retry, lease):
                log.warning("job %s: its owner (pid %d) stopped; queued again to run elsewhere",
                            job_id, record.owner_pid)
                return
        record.state, record.error, record.error_code = FAILED, INTERRUPTED, "interrupted"
        if record.attempts:
            record.error = f"{INTERRUPTED} (its replica stopped {record.attempts + 1} times)"
        record.finished, record.expires = now, now + self.limits.ttl_s
        self.store.drop_files(job_id, keep=("job.json", "lock"))
        self.store.write(record, lease)
        self.store.settle(job_id)
        self.observer.entered(record.kind, FAILED)


def _queued_again(record: JobRecord, attempts: int) -> JobRecord:
    """``record`` as it was when admitted: queued, nothing done, its upload kept, ``attempts`` runs behind it."""
    return JobRecord(record.id, record.kind, record.scale, record.format, record.media_type, record.input_name,
                     record.result_name, created=record.created, frames_total=record.frames_total,
                     input_bytes=record.input_bytes, upload_name=record.upload_name, info=record.info,
                     attempts=attempts)


def _waiting(active: _Active) -> bool:
    """Queued: admitted and not started (an upload still arriving has no kind yet)."""
    return bool(active.record.kind) and active.record.state == QUEUED and active.task is None


def _storage_full(message: str = "the jobs storage quota is full; retry later or delete finished jobs"
                  ) -> JobsUnavailable:
    return JobsUnavailable(507, "storage_full", message, 60)


class ImageTooLargeFile(ImageTooLarge):
    """An image upload over the image-job byte limit (413)."""


_CODES: tuple[tuple[type[Exception], str], ...] = (
    (ImageTooLarge, "image_too_large"), (UnsupportedImageType, "unsupported_media_type"),
    (ImageTooComplex, "image_too_complex"), (ImageError, "invalid_image"), (TooManyTiles, "image_too_large"),
    (DeadlineExceeded, "timeout"), (EngineClosed, "shutting_down"), (InvalidOptions, "invalid_parameters"),
    (DeviceLost, "device_lost"), (WorkerRestarted, "worker_restarted"), (EngineError, "engine_error"),
)


def _error_code(exc: Exception) -> str:
    """The same codes the HTTP errors carry (``app.api.errors.classify``), for a job's ``error_code``."""
    if isinstance(exc, VideoError):
        return exc.code
    return next((code for cls, code in _CODES if isinstance(exc, cls)), "internal_error")


def _image_header(path: Path, scale: int, limits: ImageLimits, max_bytes: int) -> tuple[str, int, int, int] | None:
    """(format, width, height, frames) of an upload that starts like an accepted image, else ``None`` (a video).

    The same structural checks as ``/upscale`` run before any Pillow parser (frame count
    included) reads it (:func:`app.imaging.decode.peek_file`); their refusals are 4xx.
    """
    header = peek_file(path, scale, limits, max_bytes)
    return None if header is None else (header.format, header.width, header.height, header.frames)
