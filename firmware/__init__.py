"""MicroPython firmware for the kiosk peripheral boards.

Modules here are flashed flat onto the board (`import kiosk_link`). This `__init__` only lets the
CPython gateway and tests import the code that runs on both sides (`firmware.kiosk_link`).
"""
