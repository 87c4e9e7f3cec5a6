"""An OPC UA server for the gateway tests: asyncua's, on 127.0.0.1 only.

It loads the OPC Foundation's DI, IA and Machinery nodesets first (`--nodesets`), so that the
plant's own namespace, `urn:example:plant`, is not at the index a client would guess (2), then
holds one machine object, `Objects/Mill1`, with two variables:

- `SpindleSpeed` (`s=Mill1.SpindleSpeed`): 1000 + a counter, every 100 ms;
- `Torque` (numeric id `--torque-id`, found by browse path): 40 to 44.

Values carry a source timestamp 5 s before the server's clock, so a test can tell the source's
time from the gateway's. While the `--control` file says `bad`, Torque's status is
BadSensorFailure and it has no value.

Run: `python -m tests.opcua_server --port P --nodesets DIR --torque-id N --control FILE`;
it prints `ready` once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

from asyncua import ua
from asyncua.server.server import Server

NAMESPACE = "urn:example:plant"
NODESETS = ("Opc.Ua.Di.NodeSet2.xml", "Opc.Ua.IA.NodeSet2.xml", "Opc.Ua.Machinery.NodeSet2.xml")
SOURCE_LAG = timedelta(seconds=5)


async def serve(port: int, nodesets: Path, torque_id: int, control: Path) -> None:
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    for name in NODESETS:
        # The current DI nodeset lists a few nodes before their parents, which asyncua's
        # strict import refuses; those nodes are left out, the rest loads.
        await server.import_xml(str(nodesets / name), strict_mode=False)
    index = await server.register_namespace(NAMESPACE)
    mill = await server.nodes.objects.add_object(
        ua.NodeId("Mill1", index), ua.QualifiedName("Mill1", index)
    )
    speed = await mill.add_variable(
        ua.NodeId("Mill1.SpindleSpeed", index), ua.QualifiedName("SpindleSpeed", index), 0.0
    )
    torque = await mill.add_variable(
        ua.NodeId(torque_id, index), ua.QualifiedName("Torque", index), 0.0
    )
    async with server:
        print(f"ready: {NAMESPACE} is ns={index}", flush=True)
        counter = 0
        while True:
            counter += 1
            now = datetime.now(UTC)
            source = now - SOURCE_LAG
            await speed.write_value(_value(1000.0 + counter, source, now))
            if control.exists() and control.read_text().strip() == "bad":
                bad = ua.StatusCode(ua.StatusCodes.BadSensorFailure)
                await torque.write_value(ua.DataValue(StatusCode=bad, ServerTimestamp=now))
            else:
                await torque.write_value(_value(40.0 + counter % 5, source, now))
            await asyncio.sleep(0.1)


def _value(number: float, source: datetime, now: datetime) -> ua.DataValue:
    variant = ua.Variant(number, ua.VariantType.Double)
    return ua.DataValue(variant, SourceTimestamp=source, ServerTimestamp=now)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--nodesets", type=Path, required=True)
    parser.add_argument("--torque-id", type=int, default=1000)
    parser.add_argument("--control", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the nodeset import warns about every left-out node
    asyncio.run(serve(args.port, args.nodesets, args.torque_id, args.control))


if __name__ == "__main__":
    main()
