"""The cluster's failure models: stored once in JetStream, the same everywhere.

A model is two objects in the object store `twin_models`, `<version>/model.joblib` and
`<version>/model.json` (its manifest), as `twin serve` keeps them in a directory. The
`twin_active_models` bucket holds each scope's active version (key: the scope, `:` as `.`).
Every worker follows the bucket: a version that becomes active is fetched into the worker's
own registry (`TWIN_DATA_DIR/models`) and scores its scope from then on, on every partition.
The first worker of a cluster with no default model publishes the one it has (a `create`: if
two race, both end up with the winner's). `twin cluster model push DIR` publishes a model
trained elsewhere (`twin train --out DIR`) and makes it active.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS
from nats.js.errors import KeyValueError, NotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from twin.cluster.layout import ACTIVE_MODELS, MODELS, ClusterError, Mirror, connect
from twin.config import Settings
from twin.model.predictor import MANIFEST_FILE, MODEL_FILE, ModelMismatch, Predictor
from twin.model.registry import Registry

log = logging.getLogger(__name__)


def scope_key(scope: str) -> str:
    return scope.replace(":", ".")


class SharedModels:
    """One process's view of the cluster's models, over its local registry."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._store: ObjectStore | None = None
        self._active: KeyValue | None = None
        self.mirror: Mirror | None = None
        self._manifests: dict[str, dict[str, Any]] = {}

    async def start(self, nc: NATS) -> None:
        js = nc.jetstream()
        self._store = await js.object_store(MODELS)
        self._active = await js.key_value(ACTIVE_MODELS)
        self.mirror = Mirror(self._active)
        await self.mirror.start()

    async def stop(self) -> None:
        if self.mirror is not None:
            await self.mirror.stop()

    def active(self) -> dict[str, str]:
        """Each scope's active version, as the bucket says (key -> version)."""
        mirror = _ready(self.mirror)
        return {k: e.value.decode() for k, e in list(mirror.entries.items()) if e.value}

    async def manifest(self, version: str) -> dict[str, Any]:
        """A version's manifest; read from the store once (a version never changes)."""
        if version not in self._manifests:
            found = await _ready(self._store).get(f"{version}/{MANIFEST_FILE}")
            self._manifests[version] = json.loads(found.data or b"{}")
        return self._manifests[version]

    async def fetch(self, version: str) -> Predictor:
        """The model of `version`, from the local registry or else from the object store."""
        directory = self.registry.root / version
        if not (directory / MANIFEST_FILE).exists():
            store = _ready(self._store)
            partial = directory.with_suffix(".part")
            partial.mkdir(parents=True, exist_ok=True)
            for name in (MODEL_FILE, MANIFEST_FILE):
                found = await store.get(f"{version}/{name}")
                (partial / name).write_bytes(found.data or b"")
            partial.rename(directory)
            log.info("fetched model %s from %s", version, MODELS)
        return await asyncio.to_thread(Predictor.load, directory)

    async def stored(self) -> list[dict[str, Any]]:
        """Every stored model's manifest, newest first (candidates that were not promoted
        too)."""
        try:
            objects = await _ready(self._store).list(ignore_deletes=True)
        except NotFoundError:
            return []
        found = [
            await self.manifest(o.name.removesuffix(f"/{MANIFEST_FILE}"))
            for o in objects
            if o.name.endswith(f"/{MANIFEST_FILE}")
        ]
        return sorted(found, key=lambda m: m.get("created_at", ""), reverse=True)

    async def publish(
        self, predictor: Predictor, *, activate: bool = True, only_if_none: bool = False
    ) -> bool:
        """Store the model and, with `activate`, make it its scope's active one; with
        `only_if_none`, only when the scope has none yet (False if another one is)."""
        directory = self.registry.root / predictor.version
        if not (directory / MANIFEST_FILE).exists():
            await asyncio.to_thread(predictor.save, directory)
        store = _ready(self._store)
        for name in (MODEL_FILE, MANIFEST_FILE):
            await store.put(f"{predictor.version}/{name}", (directory / name).read_bytes())
        if not activate:
            log.info("model %s stored as a candidate for %s", predictor.version, predictor.scope)
            return False
        key, value = scope_key(predictor.scope), predictor.version.encode()
        if not only_if_none:
            await _ready(self._active).put(key, value)
            return True
        try:
            await _ready(self._active).create(key, value)
        except KeyValueError:
            return False
        return True


def _ready(handle: Any) -> Any:
    if handle is None:
        raise ClusterError("not connected to NATS")
    return handle


def push(settings: Settings, directory: Path) -> str:
    """`twin cluster model push DIR`: publish a saved model and make it active."""
    try:
        predictor = Predictor.load(directory)
    except ModelMismatch as exc:
        raise ClusterError(str(exc)) from exc

    async def main() -> str:
        nc = await connect(settings, "twin-model-push")
        shared = SharedModels(Registry(settings.models_dir))
        try:
            await shared.start(nc)
            await shared.publish(predictor)
        finally:
            await shared.stop()
            await nc.close()
        return f"model {predictor.version} is now active for {predictor.scope} on every worker"

    return asyncio.run(main())
