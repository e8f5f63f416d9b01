"""The ids the FHIR mapping must give, computed here from the uuid module itself."""

from __future__ import annotations

import uuid

# fhir_map.ID_NAMESPACE, pinned here on purpose: a change would rename every stored resource.
NAMESPACE = uuid.UUID("b3ef8c0d-e43e-4ee2-9202-5ee2196eca72")


def uid(name: str) -> str:
    """A shared resource (resident, device, gateway, flag, task): uuid5 of "system|value"."""
    return str(uuid.uuid5(NAMESPACE, name))


def reading_uid(name: str, measured_at_ms: int) -> str:
    """A reading's own resource (an Observation, its Provenance): uuid5's digest with the
    measurement time in its first 48 bits, version 8 (fhir_map.reading_resource_id)."""
    raw = bytearray(measured_at_ms.to_bytes(6, "big") + uuid.uuid5(NAMESPACE, name).bytes[6:])
    raw[6] = (raw[6] & 0x0F) | 0x80
    return str(uuid.UUID(bytes=bytes(raw)))
