"""Host shim: a `machine.UART` look-alike backed by a pseudo-terminal, for the unix port in CI.

The tty is put in raw mode with VMIN=0/VTIME=0 so `readinto` returns what is waiting instead of
blocking until the buffer is full, as a board UART with timeout=0 does. Never call flush() on a
tty here: the unix port raises EINVAL.
"""

import termios

_BAUD = {
    9600: termios.B9600,
    57600: termios.B57600,
    115200: termios.B115200,
    230400: termios.B230400,
    460800: termios.B460800,
    921600: termios.B921600,
}
_CC = 6
_VMIN = 6  # index in c_cc on Linux
_VTIME = 5


class UART:
    def __init__(self, path, baudrate=115200):
        self._file = open(path, "r+b")
        fd = self._file.fileno()
        termios.setraw(fd)
        attrs = termios.tcgetattr(fd)
        attrs[4] = attrs[5] = _BAUD[baudrate]
        attrs[_CC][_VMIN] = 0
        attrs[_CC][_VTIME] = 0
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        self.baudrate = baudrate

    def readinto(self, buf):
        count = self._file.readinto(buf)
        return count or None

    def read(self, nbytes=64):
        data = self._file.read(nbytes)
        return data or None

    def write(self, data):
        return self._file.write(data)

    def close(self):
        self._file.close()


def pollable(uart):
    return uart._file


RESET_EXIT = 75  # exit status of a board process that reset itself (machine.reset on a board)


def reset():
    """machine.reset() for the unix port: end the process; its supervisor starts it again, as a
    board's reset starts boot.py and main.py again (simulators/link_board.py)."""
    raise SystemExit(RESET_EXIT)


# --- I2C, SPI and GPIO on the simulated bus ------------------------------------------------

_bus = None


def attach_bus(path):
    """Connect the process to the chip simulators (simulators/bus_server.py) listening at path."""
    global _bus
    from sim_bus import SimBus

    _bus = SimBus(path)
    return _bus


def _the_bus():
    if _bus is None:
        raise OSError("no simulated bus attached: call hal_unix.attach_bus(path) first")
    return _bus


def irq_source():
    """Pollable that becomes readable when a pin IRQ is due (None when no bus is attached)."""
    return None if _bus is None else _bus.events()


def service_irqs():
    """Run due pin IRQ handlers; on a board the hardware does this and hal's version is a no-op."""
    if _bus is not None:
        _bus.dispatch()


class I2C:
    """machine.I2C subset: writeto, readfrom_into, readfrom_mem_into, writeto_mem."""

    def __init__(self, id=0, scl=None, sda=None, freq=400000):
        self._bus = _the_bus()
        self._reg = bytearray(1)

    def writeto(self, addr, buf, stop=True):
        self._bus.i2c_write(addr, buf)
        return len(buf)

    def readfrom_into(self, addr, buf):
        self._bus.i2c_read_into(addr, buf)

    def readfrom(self, addr, nbytes):
        buf = bytearray(nbytes)
        self._bus.i2c_read_into(addr, buf)
        return bytes(buf)

    def readfrom_mem_into(self, addr, memaddr, buf, addrsize=8):
        self._reg[0] = memaddr
        self._bus.i2c_write(addr, self._reg)
        self._bus.i2c_read_into(addr, buf)

    def readfrom_mem(self, addr, memaddr, nbytes, addrsize=8):
        buf = bytearray(nbytes)
        self.readfrom_mem_into(addr, memaddr, buf)
        return bytes(buf)

    def writeto_mem(self, addr, memaddr, buf, addrsize=8):
        self._bus.i2c_write(addr, bytes((memaddr,)) + bytes(buf))


class SPI:
    """machine.SPI subset: write, readinto, write_readinto. Chip select is a separate Pin."""

    def __init__(self, id=1, baudrate=1000000, polarity=0, phase=0, bits=8, firstbit=0):
        self._bus = _the_bus()
        self._id = id
        self._scratch = {}

    def _filled(self, length, value):
        buf = self._scratch.get((length, value))
        if buf is None:
            buf = self._scratch[(length, value)] = bytearray([value] * length)
        return buf

    def write_readinto(self, write_buf, read_buf):
        self._bus.spi_xfer_into(self._id, write_buf, read_buf)

    def write(self, buf):
        self._bus.spi_xfer_into(self._id, buf, self._filled(len(buf), 0xFF))

    def readinto(self, buf, write=0x00):
        self._bus.spi_xfer_into(self._id, self._filled(len(buf), write), buf)


class Pin:
    """machine.Pin subset on the simulated bus; irq() handlers run from service_irqs()."""

    IN = 0
    OUT = 1
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_FALLING = 1
    IRQ_RISING = 2

    def __init__(self, id, mode=-1, pull=-1, value=None):
        self._bus = _the_bus()
        self._id = id
        if value is not None:
            self.value(value)

    def value(self, x=None):
        if x is None:
            return self._bus.pin_read(self._id)
        self._bus.pin_write(self._id, x)
        return None

    def __call__(self, x=None):
        return self.value(x)

    def on(self):
        self._bus.pin_write(self._id, 1)

    def off(self):
        self._bus.pin_write(self._id, 0)

    def irq(self, handler=None, trigger=IRQ_FALLING):
        pin = self

        def call(_pin_id):
            handler(pin)

        self._bus.pin_watch(self._id, call)
