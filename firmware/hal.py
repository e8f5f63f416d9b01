"""Hardware abstraction: the board's `machine` peripherals, or the host shims on the unix port.

Drivers use only what `machine.UART/I2C/SPI/Pin` offer on the ESP32 and RP2040 ports. The
application loop polls `irq_source()` and calls `service_irqs()`: on a board the hardware runs
pin IRQs by itself (irq_source() is None, service_irqs() does nothing); on the unix port pin
edges come from the simulated bus and run there. `reset()` restarts the board: on the unix port
the process exits with `hal_unix.RESET_EXIT` and whatever runs it starts it again.
"""

try:
    from machine import I2C, SPI, UART, Pin  # noqa: F401  (board)

    def pollable(uart):
        return uart

    def irq_source():
        return None

    def service_irqs():
        pass

    def reset():
        import machine

        machine.reset()

except ImportError:  # MicroPython unix port: ptys stand in for UARTs, a socket for the buses
    from hal_unix import I2C, SPI, UART, Pin, irq_source, pollable, reset, service_irqs  # noqa: F401
