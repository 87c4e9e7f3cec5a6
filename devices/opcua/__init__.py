"""The OPC UA gateway (`python -m devices.opcua --config gateway.toml`): machines' OPC UA
values published as the twin's MQTT contract, through a store-and-forward outbox."""
