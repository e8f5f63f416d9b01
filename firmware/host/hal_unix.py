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
