"""A simulated MicroPython board for CI: the unix port's REPL on a pseudo-terminal, bridged to TCP.

A technician's tools reach a real board with `mpremote connect /dev/ttyUSB0 ...`. Here the
same `mpremote` reaches the MicroPython unix port with
`mpremote connect socket://127.0.0.1:PORT resume ...`: the REPL runs on the slave side of a pty
and a thread copies bytes between the pty's master and one TCP client at a time (pyserial's
`socket://` URL). `resume` matters: a soft reset (Ctrl-D) would end the unix port. A bare pty
is not enough for mpremote, because pyserial's RTS ioctl on it fails with EIO.

The board's "flash" is a directory: the interpreter runs with its working directory there, so
what `mpremote fs cp` writes (relative paths, as on a board whose cwd is `/`) lands in it, and
`flash_files()` shows it. Output the board writes while no client is connected is dropped, as
on a USB serial port nobody has open. `reboot()` restarts the interpreter on the same
directory: what a power cycle does to a board. A soft reset (`mpremote ... soft-reset`, or
Ctrl-D) ends the interpreter, and the board stays off until `reboot()`.

    with ReplBoard(files={"machine.py": stand_in}) as board:
        subprocess.run(["mpremote", "connect", board.url, "resume", "exec", "print(1)"])
        board.flash_files()
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import socket
import subprocess
import tempfile
import termios
import threading
import tty
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from simulators.chain import micropython_binary

__all__ = ["ReplBoard"]

_CHUNK = 4096


class ReplBoard:
    """The MicroPython unix port's REPL, reachable as `socket://127.0.0.1:<port>`."""

    def __init__(
        self,
        *,
        flash_dir: Path | None = None,
        files: Mapping[str, bytes] | None = None,
        micropython: str | None = None,
    ) -> None:
        self._own_dir = flash_dir is None
        self.flash_dir = Path(tempfile.mkdtemp(prefix="repl-board-")) if flash_dir is None else flash_dir
        self.flash_dir.mkdir(parents=True, exist_ok=True)
        for name, data in (files or {}).items():
            path = self.flash_dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        self._micropython = micropython or micropython_binary()
        self._listener: socket.socket | None = None
        self._master_fd = -1
        self._slave_fd = -1
        self._process: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._prompt = threading.Event()  # set when the board's REPL prompt appears after a (re)boot
        self._tail = b""
        self.port = 0

    @property
    def url(self) -> str:
        """What `mpremote connect` takes."""
        return f"socket://127.0.0.1:{self.port}"

    # --- life cycle -------------------------------------------------------------------------

    def start(self) -> ReplBoard:
        self._master_fd, self._slave_fd = os.openpty()
        # A raw line, as a USB serial port is: no "\n" -> "\r\n" on output (the REPL writes its own
        # "\r\n"; a doubled "\r" breaks mpremote's raw-REPL handshake), no echo, no signals.
        tty.setraw(self._slave_fd)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._bridge, name=f"repl-board-{self.port}", daemon=True)
        self._thread.start()
        self._start_interpreter()
        return self

    def reboot(self) -> None:
        """Power-cycle: a new interpreter on the same flash (modules imported before are gone)."""
        self._stop_interpreter()
        self._start_interpreter()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._stop_interpreter()
        if self._listener is not None:
            self._listener.close()
        for fd in (self._master_fd, self._slave_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._own_dir:
            shutil.rmtree(self.flash_dir, ignore_errors=True)

    def __enter__(self) -> ReplBoard:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- the board's flash ------------------------------------------------------------------

    def flash_files(self) -> dict[str, bytes]:
        """Every file on the board's flash, by its path there (`prev/bp_app.mpy`)."""
        return {
            path.relative_to(self.flash_dir).as_posix(): path.read_bytes()
            for path in sorted(self.flash_dir.rglob("*"))
            if path.is_file()
        }

    # --- internals --------------------------------------------------------------------------

    def _start_interpreter(self) -> None:
        # Only the flash directory on the module path, as on a board (no ~/.micropython/lib).
        env = {**os.environ, "MICROPYPATH": ""}
        self._prompt.clear()
        self._tail = b""
        termios.tcflush(self._slave_fd, termios.TCIFLUSH)  # nothing typed at the old one reaches it
        self._process = subprocess.Popen(
            [self._micropython],
            stdin=self._slave_fd,
            stdout=self._slave_fd,
            stderr=self._slave_fd,
            cwd=self.flash_dir,
            env=env,
            start_new_session=True,
        )
        # The banner and first prompt are what a board prints at boot: wait for the REPL to be up.
        if not self._prompt.wait(timeout=10):
            status = self._process.poll()
            raise RuntimeError(
                "micropython did not show its REPL prompt within 10 s"
                + ("" if status is None else f" (exited with status {status})")
            )

    def _stop_interpreter(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def _bridge(self) -> None:
        """Copy bytes pty <-> the one connected TCP client; drop board output nobody reads."""
        assert self._listener is not None
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ, "accept")
        selector.register(self._master_fd, selectors.EVENT_READ, "board")
        client: socket.socket | None = None
        try:
            while not self._stopping.is_set():
                for key, _ in selector.select(timeout=0.1):
                    if key.data == "accept":
                        incoming, _ = self._listener.accept()
                        if client is not None:  # a second tool at once: the port is busy
                            incoming.close()
                            continue
                        client = incoming
                        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        selector.register(client, selectors.EVENT_READ, "client")
                    elif key.data == "board":
                        try:
                            data = os.read(self._master_fd, _CHUNK)
                        except OSError:
                            continue
                        if not self._prompt.is_set():
                            self._tail = (self._tail + data)[-8:]
                            if self._tail.endswith(b">>> "):
                                self._prompt.set()
                        if client is not None:
                            try:
                                client.sendall(data)
                            except OSError:
                                selector.unregister(client)
                                client.close()
                                client = None
                    elif client is not None:
                        try:
                            data = client.recv(_CHUNK)
                            # mpremote (pyserial) writes small pieces with Nagle on: ack at once, or
                            # every raw-REPL round trip waits out our delayed ACK (40 ms).
                            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
                        except OSError:
                            data = b""
                        if not data:
                            selector.unregister(client)
                            client.close()
                            client = None
                            continue
                        os.write(self._master_fd, data)
        finally:
            if client is not None:
                client.close()
            selector.close()
