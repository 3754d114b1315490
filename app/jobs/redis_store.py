"""Jobs shared by replicas: records, queue, leases, cancels and quota on Redis; files on a shared volume.

Chosen by ``SR_JOBS_REDIS_URL``. Redis holds what must be agreed on at once by
every replica (who runs a job, whether it was cancelled, how many bytes the
quota has left, which job is next); the uploads and results stay plain files in
``SR_JOBS_DIR``, a volume every replica mounts (compose: a named volume; Kubernetes:
a ReadWriteMany PVC), so ``/result`` is a ``FileResponse`` with range requests on
any replica. Keys, under ``SR_JOBS_REDIS_PREFIX`` (``sr:jobs:``):

=================  ==========================================================================
``job:<id>``       the record (JSON, validated on every read as ``job.json`` is)
``queue``          list of queued job ids; a replica with a free runner pops one and takes its
                   lease in one script, so a job is always either queued or owned
``lease:<id>``     the owner's token, with a time to live of ``SR_JOBS_LEASE_S``; the owner
                   renews it every third of that (a heartbeat), and only it may write the record
``running``        set of running job ids (``/metrics``)
``cancel:<id>``    a ``DELETE`` on any replica; the owner sees it within half a second
``bytes``          hash id → bytes the job holds (its reservation while uploading, then its
                   files); a reservation is granted by a script, so replicas cannot overbook
``ids``            sorted set of the jobs the janitors look after (removed at expiry)
=================  ==========================================================================

A job whose lease lapses (its replica was killed, or lost Redis for longer than the
lease) is claimed by the first janitor to see it: put back in the queue once, then
failed with the reason. At expiry the files are deleted and the record kept as a
tombstone (410) with a Redis expiry of its own, so nothing is left behind.

Every Redis error becomes :class:`BackendUnavailable` (503 on the routes): the jobs
stop, the rest of the service goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import ParamSpec, TypeVar

from app.jobs.backend import BackendUnavailable, Lease, LeaseLost
from app.jobs.store import RUNNING, JobRecord, JobStore, record_from, valid_id

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")
POLL_S = 0.5  # an idle runner asks for the next queued job this often
CANCEL_KEEP_S = 24 * 3600  # a cancel outlives any owner that could still look for it

# Reserve: grant need (up to need + ahead) when the others' holdings leave room. KEYS: bytes; ARGV: id, need, limit, ahead
_RESERVE = """
local held = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local need, limit, ahead = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if need <= held then return held end
local total = 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do total = total + tonumber(v) end
local free = limit - (total - held)
if free < need then return 0 end
local grant = math.min(need + ahead, free)
redis.call('HSET', KEYS[1], ARGV[1], grant)
return grant
"""
# Pop the next queued job and take its lease in one step. KEYS: queue, running; ARGV: lease prefix, token, ms
_TAKE = """
local id = redis.call('LPOP', KEYS[1])
if not id then return false end
redis.call('SET', ARGV[1] .. id, ARGV[2], 'PX', ARGV[3])
redis.call('SADD', KEYS[2], id)
return id
"""
# Extend a lease still ours; 0 if another holds it (or it lapsed). KEYS: lease; ARGV: token, ms
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# Write the record while the lease is ours. KEYS: job, lease, running; ARGV: json, token (or ''), running?
_WRITE = """
if ARGV[2] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
if ARGV[3] == '1' then redis.call('SADD', KEYS[3], ARGV[4]) else redis.call('SREM', KEYS[3], ARGV[4]) end
return 1
"""
# Drop a lease if it is ours. KEYS: lease, running; ARGV: token, id
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""
# Take an orphan: no lease, and not waiting in the queue. KEYS: lease, queue; ARGV: token, ms, id
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('LPOS', KEYS[2], ARGV[3]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


def _guarded(method: Callable[P, T]) -> Callable[P, T]:
    """Redis errors (down, timed out, refused) become :class:`BackendUnavailable`: a 503, never a 500."""
    import redis

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, redis.ReadOnlyError) as exc:
            raise BackendUnavailable(f"the jobs backend (Redis) is unavailable: {type(exc).__name__}") from exc

    return call


class RedisJobStore(JobStore):
    """:class:`app.jobs.backend.JobBackend` on Redis; inherits only the file handling of :class:`JobStore`."""

    shared_queue = True

    def __init__(self, root: Path, url: str, prefix: str = "sr:jobs:", lease_s: float = 30.0) -> None:
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError:
            raise RuntimeError("SR_JOBS_REDIS_URL needs the redis client: pip install -e '.[redis]'") from None
        super().__init__(root)
        self.prefix = prefix
        self.lease_ms = int(lease_s * 1000)
        self.heartbeat_s = lease_s / 3
        self.janitor_s = lease_s / 4  # an orphan is claimed within a lease and a quarter of its owner's death
        # Short timeouts and no retries: a request must get its 503 at once, not wait out a dead server.
        self.redis = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=1.0,
                                          retry=Retry(NoBackoff(), 0), health_check_interval=0)
        self._scripts = {name: self.redis.register_script(text) for name, text in (
            ("reserve", _RESERVE), ("take", _TAKE), ("renew", _RENEW), ("write", _WRITE), ("unlock", _UNLOCK),
            ("claim", _CLAIM))}
        self.token = f"{os.uname().nodename}:{os.getpid()}:{secrets.token_hex(6)}"

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def ping(self) -> None:
        """Raise :class:`BackendUnavailable` unless Redis answers (logged at start-up, never fatal)."""
        _guarded(self.redis.ping)()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.redis.close()

    # -- records --------------------------------------------------------------------------------

    @_guarded
    def write(self, record: JobRecord, lease: Lease = None) -> None:
        token = lease[1] if lease else ""
        ok = self._scripts["write"](
            keys=[self._key("job", record.id), self._key("lease", record.id), self._key("running")],
            args=[json.dumps(asdict(record)), token, "1" if record.state == RUNNING else "0", record.id])
        if not ok:
            raise LeaseLost(record.id)

    @_guarded
    def read(self, job_id: str) -> JobRecord | None:
        if not valid_id(job_id):
            return None
        data = self.redis.get(self._key("job", job_id))
        if data is None:
            return None
        try:
            return record_from(json.loads(data), job_id)
        except (ValueError, RecursionError) as exc:
            log.warning("job %s: ignoring its record: %s", job_id, exc)
            return None

    @_guarded
    def job_ids(self) -> list[str]:
        known = {i.decode() for i in self.redis.zrange(self._key("ids"), 0, -1)}
        return sorted(known | set(super().job_ids()))  # and folders Redis no longer knows (they are strays)

    @_guarded
    def remove(self, job_id: str) -> None:
        if not valid_id(job_id):
            return
        pipe = self.redis.pipeline()
        pipe.set(self._key("cancel", job_id), "1", ex=CANCEL_KEEP_S)
        pipe.delete(self._key("job", job_id))
        pipe.lrem(self._key("queue"), 0, job_id)
        pipe.hdel(self._key("bytes"), job_id)
        pipe.zrem(self._key("ids"), job_id)
        pipe.srem(self._key("running"), job_id)
        pipe.execute()
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    @_guarded
    def expire(self, record: JobRecord, tombstone_until: float) -> None:
        """Delete the job's folder; the record stays as a tombstone that Redis itself drops at ``tombstone_until``."""
        shutil.rmtree(self.folder(record.id), ignore_errors=True)
        pipe = self.redis.pipeline()
        pipe.set(self._key("job", record.id), json.dumps(asdict(record)), pxat=int(tombstone_until * 1000))
        pipe.hdel(self._key("bytes"), record.id)
        pipe.zrem(self._key("ids"), record.id)
        pipe.delete(self._key("cancel", record.id))
        pipe.execute()

    # -- ownership ------------------------------------------------------------------------------

    @_guarded
    def lock(self, job_id: str) -> Lease:
        token = f"{self.token}:{secrets.token_hex(4)}"
        pipe = self.redis.pipeline()
        pipe.set(self._key("lease", job_id), token, px=self.lease_ms)
        pipe.zadd(self._key("ids"), {job_id: 0})
        pipe.execute()
        return job_id, token

    def unlock(self, lease: Lease) -> None:
        """Drop the lease if it is still ours; with Redis away it lapses by itself within the lease time."""
        if not lease:
            return
        job_id, token = lease
        try:
            self._scripts["unlock"](keys=[self._key("lease", job_id), self._key("running")], args=[token, job_id])
        except Exception as exc:
            log.warning("job %s: could not release its lease (%s); it lapses by itself", job_id, exc)

    @_guarded
    def renew(self, leases: Sequence[Lease]) -> list[Lease]:
        leases = [lease for lease in leases if lease]
        if not leases:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for job_id, token in leases:
            self._scripts["renew"](keys=[self._key("lease", job_id)], args=[token, self.lease_ms], client=pipe)
        return [lease for lease, ok in zip(leases, pipe.execute(), strict=True) if not ok]

    @_guarded
    def owner_alive(self, job_id: str) -> bool:
        return bool(self.redis.exists(self._key("lease", job_id)))

    @_guarded
    def claim_orphan(self, job_id: str) -> Lease | None:
        token = f"{self.token}:{secrets.token_hex(4)}"
        got = self._scripts["claim"](keys=[self._key("lease", job_id), self._key("queue")],
                                     args=[token, self.lease_ms, job_id])
        return (job_id, token) if got else None

    def stray(self, job_id: str, now: float) -> bool:
        if self.owner_alive(job_id):
            return False
        try:
            age = now - self.folder(job_id).lstat().st_mtime
        except (OSError, KeyError):
            return True  # no folder, no record, no owner: only the entry in `ids` is left
        return age > 60

    # -- cancels --------------------------------------------------------------------------------

    def request_cancel(self, job_id: str) -> None:
        _guarded(self.redis.set)(self._key("cancel", job_id), "1", ex=CANCEL_KEEP_S)

    def cancel_requested(self, job_id: str) -> bool:
        """A cancel, or the record gone; ``False`` while Redis is away (the job goes on, its files are ours)."""
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.exists(self._key("cancel", job_id))
            pipe.exists(self._key("job", job_id))
            cancel, present = pipe.execute()
        except Exception:
            return False
        return bool(cancel) or not present

    # -- space ----------------------------------------------------------------------------------

    @_guarded
    def usage(self) -> int:
        return sum(int(v) for v in self.redis.hvals(self._key("bytes")))

    @_guarded
    def reserve(self, job_id: str, need: int, limit: int, ahead: int = 0) -> int:
        return int(self._scripts["reserve"](keys=[self._key("bytes")], args=[job_id, need, limit, ahead]))

    @_guarded
    def settle(self, job_id: str) -> None:
        folder = self.folder(job_id)
        held = self._held(folder) if folder.exists() else 0
        self.redis.hset(self._key("bytes"), job_id, held)

    def release(self, job_id: str) -> None:
        self.settle(job_id)

    # -- the queue (shared by every replica) ----------------------------------------------------

    @_guarded
    def enqueue(self, job_id: str, lease: Lease) -> bool:
        pipe = self.redis.pipeline()  # MULTI: the job is queued and let go in one step
        pipe.rpush(self._key("queue"), job_id)
        pipe.delete(self._key("lease", job_id))
        pipe.execute()
        return True

    async def next_job(self) -> tuple[str, Lease]:
        take = _guarded(self._scripts["take"])
        while True:
            token = f"{self.token}:{secrets.token_hex(4)}"
            job_id = take(keys=[self._key("queue"), self._key("running")],
                          args=[self._key("lease", ""), token, self.lease_ms])
            if job_id:
                return job_id.decode(), (job_id.decode(), token)
            await asyncio.sleep(POLL_S)

    @_guarded
    def waiting(self) -> int:
        return int(self.redis.llen(self._key("queue")))

    @_guarded
    def requeue(self, record: JobRecord, lease: Lease) -> bool:
        job_id, token = lease
        if self.redis.get(self._key("lease", job_id)) != token.encode():
            return False
        pipe = self.redis.pipeline()
        pipe.set(self._key("job", job_id), json.dumps(asdict(record)))
        pipe.srem(self._key("running"), job_id)
        pipe.rpush(self._key("queue"), job_id)
        pipe.delete(self._key("lease", job_id))
        pipe.execute()
        return True

    @_guarded
    def counts(self) -> dict[str, int]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.llen(self._key("queue"))
        pipe.scard(self._key("running"))
        queued, running = pipe.execute()
        return {"queued": int(queued), "running": int(running)}

    def keys(self) -> list[str]:
        """Every key of these jobs (tests: nothing is left behind)."""
        return sorted(k.decode() for k in self.redis.scan_iter(match=self.prefix + "*"))

