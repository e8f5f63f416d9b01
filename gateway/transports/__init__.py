"""Byte transports from peripherals: one interface, a back-end per kind of link."""

from gateway.transports.base import Transport, TransportClosed

__all__ = ["Transport", "TransportClosed"]
