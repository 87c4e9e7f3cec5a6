"""The baseline: a bare paho-mqtt subscriber that only counts (run by bench.ingest).

Persistent session, QoS 1, acknowledging each message as paho does by default. Prints one JSON
line: messages received, the seconds from CONNACK to the last expected message, and the wall
time of that last message (`last_at`, for a clock started by the publisher).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from typing import Any

import msgspec
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--topic", default="factory/+/+/telemetry")
    parser.add_argument(
        "--expect", type=int, default=0, help="messages to wait for; 0: subscribe and exit"
    )
    args = parser.parse_args()

    done = threading.Event()
    state: dict[str, Any] = {"count": 0, "t0": None, "t1": None, "last_at": None}

    def on_connect(client: mqtt.Client, *_: Any) -> None:
        state["t0"] = time.perf_counter()
        client.subscribe(args.topic, qos=1)

    def on_subscribe(*_: Any) -> None:
        if args.expect == 0:
            done.set()

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        state["count"] += 1
        if state["count"] >= args.expect:
            state["t1"] = time.perf_counter()
            state["last_at"] = time.time()
            done.set()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="bench-bare", protocol=MQTTProtocolVersion.MQTTv5
    )
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = 65535
    client.connect("127.0.0.1", args.port, clean_start=False, properties=props)
    client.loop_start()
    if not done.wait(600):
        print(f"bare subscriber: timed out at {state['count']} messages", file=sys.stderr)
        return 1
    client.disconnect()
    client.loop_stop()
    seconds = (state["t1"] - state["t0"]) if state["t1"] else 0.0
    result = {"messages": state["count"], "seconds": seconds, "last_at": state["last_at"]}
    print(msgspec.json.encode(result).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
