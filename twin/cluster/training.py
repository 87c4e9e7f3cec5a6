"""Training in cluster mode: `POST /model/train` on `twin api`, from the history stream.

The workers send every closed history bucket and device event to `TWIN_HISTORY` before a
snapshot covers them (`twin.cluster.worker`). Each `twin api` reads that stream from the start
and follows it into a SQLite history store of its own, in a temporary directory (a copy: the
stream is the history, and an API restarted reads it again). A training job is `twin serve`'s
(`twin.trainer.Trainer`) on that copy; its model goes to the cluster's object store, and a
promoted one becomes its scope's active version, which every worker follows.

One job at a time in the cluster: the job's record is the key `job` of `twin_training`,
claimed by compare-and-swap and rewritten every second while it runs, so any API instance
shows it, and a record that stopped being rewritten (its API went away) does not block the
next job.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import KeyNotFoundError, KeyValueError
from nats.js.kv import KeyValue

from twin.cluster.layout import HISTORY_PREFIX, STREAM_HISTORY, TRAINING
from twin.cluster.models import SharedModels, scope_key
from twin.errors import Conflict
from twin.history import HistoryStore, Records
from twin.model.fleet import Attributes
from twin.model.predictor import Predictor
from twin.trainer import Trainer, TrainerBusy, job_for

log = logging.getLogger(__name__)

T = TypeVar("T")
JOB_KEY = "job"
REPORT_S = 1.0  # a running job's record is rewritten this often
STALE_S = 30.0  # a running job's record not rewritten for this long: its API went away


class HistoryLoading(Conflict):
    """This API has not read the history stream up to where it was when it started."""


class HistoryCopy:
    """`TWIN_HISTORY`, read from the start and followed into a local history store."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="twin-api-history-")
        self.store = HistoryStore(Path(self._dir.name) / "history.sqlite3")
        self.read = 0  # the stream sequence of the last message stored
        self.target = 0  # the stream's last sequence when this started
        self._decoder = msgspec.json.Decoder(Records)
        self._sub: Subscription | None = None
        self._started = 0.0

    async def start(self, nc: NATS) -> None:
        self.store.open()
        js = nc.jetstream()
        self.target = (await js.stream_info(STREAM_HISTORY)).state.last_seq
        self._started = time.monotonic()
        log.info("reading %s up to sequence %d for training", STREAM_HISTORY, self.target)
        self._sub = await js.subscribe(
            f"{HISTORY_PREFIX}.>", stream=STREAM_HISTORY, ordered_consumer=True, cb=self._on
        )

    async def _on(self, msg: Msg) -> None:
        try:
            records = self._decoder.decode(msg.data)
        except msgspec.DecodeError as exc:  # not a worker's: nothing to train on
            log.warning("skipping a message of %s that is not history: %s", STREAM_HISTORY, exc)
        else:
            self.store.write(*records.unpack())
        caught_up = self.read < self.target <= msg.metadata.sequence.stream
        self.read = msg.metadata.sequence.stream
        if caught_up:
            log.info(
                "read %s up to sequence %d in %.1f s: training can start",
                STREAM_HISTORY,
                self.target,
                time.monotonic() - self._started,
            )

    def ready(self) -> None:
        """Raise `HistoryLoading` while the copy is behind where the stream was at start."""
        if self.read < self.target:
            raise HistoryLoading(
                f"this twin api is still reading {STREAM_HISTORY} "
                f"({self.read} of {self.target} messages); try again shortly"
            )

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
        self.store.close()
        self._dir.cleanup()


class SharedHome:
    """The `ModelHome` of a training job on `twin api`: the cluster's shared models and its
    fleet view. Called from the job's thread; runs what it needs on the API's event loop."""

    def __init__(
        self,
        models: SharedModels,
        attributes: Callable[[str], Attributes],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.models = models
        self._attributes = attributes
        self._loop = loop

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=120)

    def model(self, scope: str) -> Predictor | None:
        version = self.models.active().get(scope_key(scope))
        return None if version is None else self._call(self.models.fetch(version))

    def keep(self, predictor: Predictor, activate: bool) -> None:
        self._call(self.models.publish(predictor, activate=activate))

    def attributes(self, machine: str) -> Attributes:
        return self._attributes(machine)


class ClusterTraining:
    """`POST /model/train` and the `training` of `GET /model`, on `twin api`."""

    def __init__(
        self,
        models: SharedModels,
        attributes: Callable[[str], Attributes],
        bucket_ms: int,
        max_window_ms: int,
    ):
        self.history = HistoryCopy()
        self._models = models
        self._attributes = attributes
        self._bucket_ms = bucket_ms
        self._max_window_ms = max_window_ms
        self._kv: KeyValue | None = None
        self._trainer: Trainer | None = None
        self._reporting: set[asyncio.Task[None]] = set()

    async def start(self, nc: NATS) -> None:
        await self.history.start(nc)
        self._kv = await nc.jetstream().key_value(TRAINING)
        home = SharedHome(self._models, self._attributes, asyncio.get_running_loop())
        self._trainer = Trainer(self.history.store, home, self._bucket_ms, self._max_window_ms)

    async def stop(self) -> None:
        for task in list(self._reporting):
            task.cancel()
        await asyncio.gather(*self._reporting, return_exceptions=True)
        await self.history.stop()

    def _ready(self) -> tuple[KeyValue, Trainer]:
        if self._kv is None or self._trainer is None:
            raise RuntimeError("not started")
        return self._kv, self._trainer

    async def _record(self) -> tuple[dict[str, Any] | None, int]:
        """The last job's record and its revision (0: none yet)."""
        kv, _ = self._ready()
        try:
            entry = await kv.get(JOB_KEY)
        except KeyNotFoundError:
            return None, 0
        return (json.loads(entry.value) if entry.value else None), entry.revision or 0

    async def job(self) -> dict[str, Any] | None:
        """The cluster's last training job, whichever API ran it."""
        record, _ = await self._record()
        if record is not None and _stale(record):
            return {
                **record,
                "state": "failed",
                "error": "the twin api running it stopped before it finished",
            }
        return record

    async def begin(
        self, site: str | None, horizon_ms: int, force: bool, windows_ms: tuple[int, ...]
    ) -> dict[str, Any]:
        """Check the request can train here and now, claim the cluster's job, start it."""
        kv, trainer = self._ready()
        self.history.ready()
        await asyncio.to_thread(trainer.check, site, windows_ms)
        record, revision = await self._record()
        if record is not None and record["state"] == "running" and not _stale(record):
            raise TrainerBusy("a training job is already running")
        job = job_for(site, horizon_ms, force, windows_ms)
        try:
            if revision:
                await kv.update(JOB_KEY, _encode(job), last=revision)
            else:
                await kv.create(JOB_KEY, _encode(job))
        except KeyValueError as exc:
            raise TrainerBusy("another twin api started a training job just now") from exc
        started = trainer.run(job)
        task = asyncio.create_task(self._report(job))
        self._reporting.add(task)
        task.add_done_callback(self._reporting.discard)
        log.info("training job %d for %s started", job["id"], job["scope"])
        return started

    async def _report(self, job: dict[str, Any]) -> None:
        """Rewrite the job's record while it runs, and until its end is written (a lost last
        write would leave it running, and then stale: reported failed though it finished)."""
        kv, _ = self._ready()
        while True:
            running = job["state"] == "running"
            try:
                await kv.put(JOB_KEY, _encode(job))
            except Exception as exc:  # the next round writes it again
                log.warning("could not write the training job's record: %s", exc)
            else:
                if not running:
                    break
            await asyncio.sleep(REPORT_S)
        log.info("training job %d for %s: %s", job["id"], job["scope"], job["state"])


def _encode(job: dict[str, Any]) -> bytes:
    return json.dumps({**job, "reported_at": int(time.time() * 1000)}).encode()


def _stale(record: dict[str, Any]) -> bool:
    reported = record.get("reported_at", 0)
    return bool(record["state"] == "running" and time.time() * 1000 - reported > STALE_S * 1000)
