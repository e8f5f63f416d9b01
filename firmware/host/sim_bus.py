"""Client of the simulated bus (simulators/bus_server.py): I2C, SPI and GPIO as socket messages.

On the unix port there are no pins, so `hal_unix` sends every bus transaction to the simulator
process over a Unix socket and waits for the answer, as the bus would. Pin edges (data-ready
lines) arrive on a second socket that the application polls, and become pin IRQ callbacks.

Request:  op:u8 target:u8 length:u16le data      Response: status:u8 length:u16le data
Buffers are allocated once, so a driver's steady-state sample path allocates nothing here.
"""

import socket
import struct

try:
    from micropython import const
except ImportError:

    def const(value):
        return value


OP_HELLO = const(0)
OP_I2C_WRITE = const(1)
OP_I2C_READ = const(2)
OP_SPI_XFER = const(3)
OP_PIN_READ = const(4)
OP_PIN_WRITE = const(5)
OP_PIN_WATCH = const(6)

STATUS_OK = const(0)
STATUS_NACK = const(1)
STATUS_BAD_REQUEST = const(2)

ROLE_COMMANDS = const(1)
ROLE_EVENTS = const(2)

_MAX_DATA = const(512)


class BusError(OSError):
    pass


def _connect(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(struct.pack("H", socket.AF_UNIX) + path.encode() + b"\x00")
    return sock


class SimBus:
    def __init__(self, path):
        self._cmd = _connect(path)
        self._evt = _connect(path)
        self._head = bytearray(4)
        self._count = bytearray(2)
        self._one = bytearray(1)
        self._resp_head = bytearray(3)
        self._resp = bytearray(_MAX_DATA)
        self._resp_view = memoryview(self._resp)
        self._views = {}
        self._edge = bytearray(16)
        self._handlers = {}
        self._request(OP_HELLO, ROLE_COMMANDS, b"")
        self._evt.write(bytes((OP_HELLO, ROLE_EVENTS, 0, 0)))
        self._evt.setblocking(False)

    def _view(self, length):
        # One cached memoryview per reply length: the steady state allocates nothing.
        view = self._views.get(length)
        if view is None:
            view = self._views[length] = self._resp_view[:length]
        return view

    @staticmethod
    def _read_exact(sock, buf):
        got = sock.readinto(buf)
        while got is not None and got < len(buf):
            more = sock.readinto(memoryview(buf)[got:])  # rare partial read: may allocate
            if not more:
                break
            got += more
        if got != len(buf):
            raise BusError("simulated bus closed")

    def _request(self, op, target, data, into=None):
        """Send one transaction; the reply lands in `into` (when it fits exactly) or self._resp."""
        struct.pack_into("<BBH", self._head, 0, op, target, len(data))
        self._cmd.write(self._head)
        if data:
            self._cmd.write(data)
        self._read_exact(self._cmd, self._resp_head)
        status = self._resp_head[0]
        length = self._resp_head[1] | (self._resp_head[2] << 8)
        if length:
            if into is not None and len(into) == length:
                self._read_exact(self._cmd, into)
            else:
                self._read_exact(self._cmd, self._view(length))
        if status == STATUS_NACK:
            raise BusError("no device acknowledged at %d" % target)
        if status != STATUS_OK:
            raise BusError("bus rejected op %d" % op)
        return length

    # I2C
    def i2c_write(self, addr, data):
        self._request(OP_I2C_WRITE, addr, data)

    def i2c_read_into(self, addr, buf):
        struct.pack_into("<H", self._count, 0, len(buf))
        if self._request(OP_I2C_READ, addr, self._count, into=buf) != len(buf):
            raise BusError("short I2C read from %d" % addr)

    # SPI: the selected chip is the one whose chip-select pin is low
    def spi_xfer_into(self, bus, wbuf, rbuf):
        if self._request(OP_SPI_XFER, bus, wbuf, into=rbuf) != len(rbuf):
            raise BusError("short SPI transfer on bus %d" % bus)

    # GPIO
    def pin_read(self, pin):
        self._request(OP_PIN_READ, pin, b"", into=self._one)
        return self._one[0]

    def pin_write(self, pin, value):
        self._one[0] = 1 if value else 0
        self._request(OP_PIN_WRITE, pin, self._one)

    def pin_watch(self, pin, handler):
        self._handlers[pin] = handler
        self._request(OP_PIN_WATCH, pin, b"")

    def events(self):
        """The object to register with select.poll; readable when a watched pin had an edge."""
        return self._evt

    def dispatch(self):
        """Call the IRQ handler of each pin whose edge has arrived (the unix port's 'interrupt')."""
        count = self._evt.readinto(self._edge)
        if count is None:
            return
        if count == 0:
            raise BusError("simulated bus closed")
        for i in range(count):
            handler = self._handlers.get(self._edge[i])
            if handler is not None:
                handler(self._edge[i])
