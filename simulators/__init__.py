"""Simulated peripherals, links and patients: the hardware CI does not have."""
