"""Chip-level models of the kiosk's sensor parts, served to firmware by simulators/bus_server.py."""
