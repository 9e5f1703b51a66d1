"""protocol name in devices.yaml → adapter class. Adding a protocol adds one line here.

Classes are imported lazily so that a deployment without, say, OPC UA devices never imports asyncua.
"""
from __future__ import annotations

import importlib

from adapters.base import Adapter

ADAPTERS: dict[str, str] = {
    "mqtt": "adapters.mqtt:MqttAdapter",
    "modbus": "adapters.modbus:ModbusAdapter",
    "opcua": "adapters.opcua:OpcUaAdapter",
}


def adapter_class(protocol: str) -> type[Adapter]:
    try:
        module, _, name = ADAPTERS[protocol].partition(":")
    except KeyError:
        raise ValueError(f"no adapter for protocol {protocol!r} (known: {sorted(ADAPTERS)})") from None
    return getattr(importlib.import_module(module), name)
