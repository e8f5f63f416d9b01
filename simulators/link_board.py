"""A peripheral board on the MicroPython unix port that takes firmware over the kiosk link.

Its flash is a directory. `install(files)` puts a version there as a technician's first flash
over USB does (the bundle's files, `firmware.json`, `firmware.sig`, and the boot code); the board
process is `firmware/host/run_board.py` (boot.py, then the app) with that directory as its
working directory. Whenever the process ends -- the app reset the board after a committed update,
it crashed, or the boot code's trial deadline passed -- it is started again after
`restart_delay_s`, as a board's reset or watchdog starts boot.py and main.py again. `boots`
counts the starts, `exits` keeps each run's exit status, `output()` every run's console.

    with LinkBoard(app="bp_app", device_id="bp-0042",
                   options={"link_uart": f"uart:{cable.device_path}:115200",
                            "cuff_uart": f"uart:{cuff.path}:9600"}) as board:
        board.install(files)
        board.start()
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from simulators.chain import REPO_ROOT, micropython_binary

__all__ = ["LinkBoard"]

RUNNER = REPO_ROOT / "firmware" / "host" / "run_board.py"


class LinkBoard:
    def __init__(
        self,
        *,
        app: str,
        device_id: str,
        options: Mapping[str, str],
        flash_dir: Path | None = None,
        trial_boots: int = 2,
        trial_deadline_ms: int = 60000,
        restart_delay_s: float = 0.2,
    ) -> None:
        self._own_dir = flash_dir is None
        self.flash_dir = Path(tempfile.mkdtemp(prefix="link-board-")) if flash_dir is None else flash_dir
        self.flash_dir.mkdir(parents=True, exist_ok=True)
        self.app = app
        self.device_id = device_id
        self.options = dict(options)
        self.trial_boots = trial_boots
        self.trial_deadline_ms = trial_deadline_ms
        self.restart_delay_s = restart_delay_s
        self.boots = 0
        self.exits: list[int] = []
        self.log_path = Path(tempfile.mkstemp(prefix="link-board-", suffix=".log")[1])
        self._process: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    # --- the flash ----------------------------------------------------------------------------

    def install(self, files: Mapping[str, bytes]) -> None:
        """Write files (name -> bytes; `prev/x` for a sub-folder) onto the flash, as a USB flash does."""
        for name, data in files.items():
            path = self.flash_dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def flash_files(self) -> dict[str, bytes]:
        """Every file on the flash, by its path there (`prev/bp_app.mpy`)."""
        return {
            path.relative_to(self.flash_dir).as_posix(): path.read_bytes()
            for path in sorted(self.flash_dir.rglob("*"))
            if path.is_file() and path.suffix != ".pyc"
        }

    # --- life cycle ---------------------------------------------------------------------------

    def command(self) -> list[str]:
        return [
            micropython_binary(),
            str(RUNNER),
            str(self.flash_dir),
            self.app,
            self.device_id,
            "--trial-boots",
            str(self.trial_boots),
            "--trial-deadline-ms",
            str(self.trial_deadline_ms),
            *(f"{name}={value}" for name, value in self.options.items()),
        ]

    def start(self) -> LinkBoard:
        self._thread = threading.Thread(target=self._supervise, name=f"board-{self.device_id}", daemon=True)
        self._thread.start()
        return self

    def _supervise(self) -> None:
        while True:
            with self._lock, self.log_path.open("ab") as log:
                if self._stopping.is_set():
                    return
                log.write(b"--- power on\n")
                log.flush()
                self._process = subprocess.Popen(
                    self.command(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={"MICROPYPATH": "", "PATH": "/usr/bin:/bin"},
                )
                self.boots += 1
            status = self._process.wait()
            with self._lock:
                self.exits.append(status)
            if self._stopping.wait(self.restart_delay_s):
                return

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.flash_dir, ignore_errors=True)
        self.log_path.unlink(missing_ok=True)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return
            time.sleep(0.05)
        raise TimeoutError(f"the board never printed {text!r}: {self.output()[-2000:]}")

    def __enter__(self) -> LinkBoard:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
