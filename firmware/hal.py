"""Hardware abstraction: the board's `machine.UART`, or the host shim on the unix port.

Drivers only use `read`, `readinto`, `write` and `any`, and register `pollable(uart)` with
`select.poll`, which is what `machine.UART` offers on ESP32 and RP2040 ports.
"""

try:
    from machine import UART  # noqa: F401  (board)

    def pollable(uart):
        return uart

except ImportError:  # MicroPython unix port: a pseudo-terminal stands in for the UART pins
    from hal_unix import UART, pollable  # noqa: F401
