"""The embedded MQTT broker for `twin demo`: amqtt, in its own thread and event loop.

amqtt is the maintained pure-Python broker, so the demo needs nothing but pip. It speaks MQTT
3.1.1 only, so the demo's twin and devices use 3.1.1 (persistent session via clean_session=False);
production brokers (Mosquitto, EMQX) get MQTT 5.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from amqtt.broker import Broker

from twin.errors import BrokerError

log = logging.getLogger(__name__)


class EmbeddedBroker:
    """Runs an amqtt broker on `host:port` until `stop`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 1883) -> None:
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: Broker | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def _config(self) -> dict[str, Any]:
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }

    def start(self, timeout: float = 10.0) -> None:
        self._thread = threading.Thread(target=self._run, name="embedded-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise BrokerError(
                f"the embedded broker could not listen on {self.host}:{self.port}: {self._error}"
            )
        log.info("embedded MQTT broker (amqtt, MQTT 3.1.1) on %s:%d", self.host, self.port)

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)

        async def boot() -> None:
            self._broker = Broker(self._config())
            await self._broker.start()

        try:
            loop.run_until_complete(boot())
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()
        loop.close()

    def stop(self) -> None:
        loop, broker = self._loop, self._broker
        if loop is None or broker is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(broker.shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)
