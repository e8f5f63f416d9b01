"""Pseudo-terminals standing in for UART wiring."""

from __future__ import annotations

import contextlib
import os
import termios
import tty
from dataclasses import dataclass


@dataclass
class PtyPort:
    """One pty: we hold the master; a peer (firmware, pyserial) opens `path`.

    We also keep the slave open ourselves, so the master never sees EIO/hang-up while the peer
    process is restarting (as a real wire stays connected while a board reboots).
    """

    master_fd: int
    slave_fd: int
    path: str

    @classmethod
    def open(cls) -> PtyPort:
        master_fd, slave_fd = os.openpty()
        tty.setraw(slave_fd)
        tty.setraw(master_fd)
        attrs = termios.tcgetattr(slave_fd)
        attrs[6][termios.VMIN] = 0
        attrs[6][termios.VTIME] = 0
        termios.tcsetattr(slave_fd, termios.TCSANOW, attrs)
        os.set_blocking(master_fd, False)
        return cls(master_fd, slave_fd, os.ttyname(slave_fd))

    def close(self) -> None:
        for fd in (self.master_fd, self.slave_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
