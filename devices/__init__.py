"""Device simulator and publishers: AI4I 2020 machine physics over the twin's MQTT contract."""

from devices.fleet import Fleet, FleetOptions
from devices.publisher import DevicePublisher, NetworkLoop
from devices.simulator import Machine, make_fleet

__all__ = ["DevicePublisher", "Fleet", "FleetOptions", "Machine", "NetworkLoop", "make_fleet"]
