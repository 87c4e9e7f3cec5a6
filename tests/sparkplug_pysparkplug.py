"""An edge node on pysparkplug (https://pypi.org/project/pysparkplug/), nobody here wrote it:
run in its own virtual environment (it pins paho-mqtt < 2) by tests/test_sparkplug.py.

Group `pysp`, edge node `edge9`, device `cnc7`: NBIRTH and DBIRTH on connect, DDATA by name
every 100 ms, then DDATA with aliases only (the name left out); runs until killed."""

import argparse
import time

from pysparkplug import (
    Client,
    DataType,
    DData,
    Device,
    EdgeNode,
    Message,
    MessageType,
    Metric,
    QoS,
    Topic,
)


def now() -> int:
    return int(time.time() * 1000)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    client = Client()
    node = EdgeNode("pysp", "edge9", [], client)
    device = Device(
        "cnc7",
        [
            Metric(
                timestamp=now(),
                name="Coolant/Temperature",
                datatype=DataType.DOUBLE,
                value=21.5,
                alias=1,
            ),
            Metric(
                timestamp=now(), name="Spindle/Load", datatype=DataType.DOUBLE, value=10.0, alias=2
            ),
            Metric(
                timestamp=now(), name="Serial", datatype=DataType.STRING, value="SN-42", alias=3
            ),
            Metric(timestamp=now(), name="Axis Count", datatype=DataType.INT32, value=5, alias=4),
        ],
    )
    node.register(device)
    node.connect("127.0.0.1", port=args.port, blocking=False)
    time.sleep(1.0)
    for i in range(10):
        load = Metric(
            timestamp=now(), name="Spindle/Load", datatype=DataType.DOUBLE, value=20.0 + i, alias=2
        )
        node.update_device("cnc7", [load])
        time.sleep(0.1)
    topic = Topic(
        message_type=MessageType.DDATA, group_id="pysp", edge_node_id="edge9", device_id="cnc7"
    )
    while True:
        alias_only = Metric(
            timestamp=now(), name=None, datatype=DataType.DOUBLE, value=99.0, alias=2
        )
        payload = DData(now(), seq=node._seq, metrics=(alias_only,))
        client.publish(Message(topic=topic, payload=payload, qos=QoS.AT_MOST_ONCE, retain=False))
        print("published alias-only DDATA", flush=True)
        time.sleep(0.5)


if __name__ == "__main__":
    main()
