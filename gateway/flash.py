"""Put a signed firmware bundle on a peripheral board, check it there, and roll it back.

The board is reached with `mpremote` (the venv's, as a subprocess), always with `resume`, so no
soft reset interrupts it (on the CI board, the MicroPython unix port, a soft reset would end
it). Anything `mpremote connect` takes is a device: `/dev/ttyUSB0`, `/dev/ttyACM0`, or
`socket://127.0.0.1:PORT` for `simulators/repl_board.py`.

`flash` does, in this order:

1. verifies the bundle against the release public key; a bundle that fails is refused before
   the board is touched (not even connected to);
2. clears a staging folder `new/` on the board and copies every file, the manifest
   (`firmware.json`) and its signature (`firmware.sig`) into it with one `mpremote fs cp`;
3. on the board, hashes the staged files; only if every one matches the manifest does it move
   the installed version (the files its `firmware.json` lists, plus any file the new version
   would overwrite) into `prev/` and the staged files into place. A copy cut halfway leaves the
   running firmware as it was (a power cut during the few renames of the switch itself is not
   covered: flash again);
4. reads the installed state back (the manifest's bytes, the signature, each file's SHA-256
   computed on the board with `hashlib`) and checks it is exactly the bundle.

`rollback` swaps `prev/` and the installed version on the board (so a second rollback goes
forward again), then checks the restored version the same way: its signature by the release key
and every file's hash.

What runs on the board is `firmware/updater.py`'s source (sent with each step) and a few lines
per step: the same file-level code, names and folders as an update over the kiosk link
(`gateway/link_update.py`), which imports that module on the board.

Paths on the board are relative (a board's working directory is `/`), never absolute: on the
unix port an absolute path would be the host's. The board runs the new version after its next
reset (`mpremote connect DEVICE reset`, or the power switch); flashing does not reset it.

Not built: writing a full firmware image (MicroPython itself plus frozen modules) with esptool or
picotool. This module updates the application files on a board that already runs MicroPython.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.errors import GatewayError
from gateway.firmware_bundle import Bundle, verify_bundle

__all__ = [
    "BOARD_MANIFEST",
    "BOARD_SIGNATURE",
    "BoardConnection",
    "BoardError",
    "BoardState",
    "FlashError",
    "FlashResult",
    "RollbackResult",
    "find_mpremote",
    "flash",
    "read_board",
    "rollback",
]

BOARD_MANIFEST = "firmware.json"
BOARD_SIGNATURE = "firmware.sig"
STAGING_DIR = "new"
PREVIOUS_DIR = "prev"
_MARKER = "KIOSK-FLASH "


class FlashError(GatewayError):
    """The board does not hold what it should after a flash or a rollback; says which file."""


class BoardError(FlashError):
    """mpremote could not do what was asked: the board is absent, busy, or answered an error."""


# --- mpremote -----------------------------------------------------------------------------------


def find_mpremote() -> str:
    beside = Path(sys.executable).with_name("mpremote")
    found = str(beside) if beside.exists() else shutil.which("mpremote")
    if not found:
        raise BoardError("mpremote not found: pip install mpremote (a dependency of kiosk-edge)")
    return found


@dataclass(frozen=True)
class BoardConnection:
    """One board as `mpremote connect <device> resume ...` reaches it."""

    device: str
    mpremote: str = ""
    timeout_s: float = 120.0

    def command(self, *args: str) -> list[str]:
        return [self.mpremote or find_mpremote(), "connect", self.device, "resume", *args]

    def run(self, *args: str, on_line: Callable[[str], None] | None = None) -> str:
        """Run one mpremote command; its output, or BoardError with mpremote's own words."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # lines as they happen, for progress
        try:
            process = subprocess.Popen(
                self.command(*args),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        except OSError as exc:
            raise BoardError(f"cannot run mpremote: {exc}") from exc
        lines: list[str] = []
        assert process.stdout is not None and process.stderr is not None
        # A board that stops answering mid-command would hold the pipe open: kill mpremote then.
        watchdog = threading.Timer(self.timeout_s, process.kill)
        watchdog.start()
        try:
            for line in process.stdout:
                lines.append(line)
                if on_line is not None:
                    on_line(line.rstrip("\n"))
            stderr = process.stderr.read()
            status = process.wait()
        finally:
            timed_out = not watchdog.is_alive()
            watchdog.cancel()
        if timed_out:
            raise BoardError(f"{self.device}: mpremote {args[0]} did not finish in {self.timeout_s} s")
        output = "".join(lines)
        if status != 0:
            detail = (stderr.strip() or output.strip()).splitlines()
            raise BoardError(f"{self.device}: mpremote {args[0]} failed: {' / '.join(detail[-3:])}")
        return output

    def exec_json(self, *codes: str) -> list[Any]:
        """Run each of `codes` on the board in one mpremote session (`exec A + exec B`); each
        reports by printing one `KIOSK-FLASH <json>` line. Their answers, in order."""
        args: list[str] = []
        for code in codes:
            args += [*(["+"] if args else []), "exec", code]
        output = self.run(*args)
        return self.answers(output, len(codes))

    def answers(self, output: str, expected: int) -> list[Any]:
        """The `KIOSK-FLASH` answers in mpremote's output; BoardError unless there are `expected`."""
        answers = [
            json.loads(line[len(_MARKER) :]) for line in output.splitlines() if line.startswith(_MARKER)
        ]
        if len(answers) != expected:
            raise BoardError(f"{self.device}: the board gave no answer: {output.strip()[-200:]!r}")
        return answers


# --- code run on the board: firmware/updater.py (the board's file layout, which the link update
# path imports on the board), then each step. MicroPython: no f-strings on old ports, short.

_UPDATER_SOURCE = Path(__file__).resolve().parents[1] / "firmware" / "updater.py"
_SAY = """
def _say(x):
    print("KIOSK-FLASH " + json.dumps(x))
"""

_PREPARE = """
clear("new")
if not exists("prev"):
    os.mkdir("prev")
m, _ = installed()
_say({"version": m and m["version"], "app": m and m["app"]})
"""

_CHECK_AND_SWITCH = """
bad = check(FILES)
if bad:
    _say({"switched": False, "bad": bad})
else:
    m = switch(FILES)
    _say({"switched": True, "previous": m and m["version"]})
"""

_READ_BACK = """
out = {"manifest": None, "signature": None, "files": {}}
if exists("firmware.json"):
    with open("firmware.json", "rb") as f:
        out["manifest"] = binascii.hexlify(f.read()).decode()
    if exists("firmware.sig"):
        with open("firmware.sig", "rb") as f:
            out["signature"] = binascii.hexlify(f.read()).decode()
    m, _ = installed()
    for e in m["files"]:
        out["files"][e["path"]] = sha256_hex(e["path"]) if exists(e["path"]) else None
_say(out)
"""

_ROLLBACK = """
r = swap_prev()
if r is None:
    _say({"rolled_back": False})
else:
    _say({"rolled_back": True, "from": r[0] and r[0]["version"], "restored": r[1]})
"""


def _board_script(body: str, **params: object) -> str:
    assignments = "".join(f"{name} = {value!r}\n" for name, value in params.items())
    return _UPDATER_SOURCE.read_text(encoding="utf-8") + _SAY + assignments + body


# --- reading the board back ---------------------------------------------------------------------


@dataclass(frozen=True)
class BoardState:
    """What the board holds, as read back and checked: its manifest and version."""

    manifest: dict[str, Any] | None
    manifest_bytes: bytes | None

    @property
    def version(self) -> str | None:
        return None if self.manifest is None else str(self.manifest["version"])

    @property
    def app(self) -> str | None:
        return None if self.manifest is None else str(self.manifest["app"])


def read_board(board: BoardConnection, public_key: Ed25519PublicKey) -> BoardState:
    """Read the installed version back; FlashError unless the release key signed its manifest
    and every file on the board hashes to the manifest's SHA-256."""
    [answer] = board.exec_json(_board_script(_READ_BACK))
    return _check_read_back(board.device, answer, public_key)


def _check_read_back(device: str, answer: dict[str, Any], public_key: Ed25519PublicKey) -> BoardState:
    if answer["manifest"] is None:
        return BoardState(manifest=None, manifest_bytes=None)
    manifest_bytes = bytes.fromhex(answer["manifest"])
    if answer["signature"] is None:
        raise FlashError(f"{device}: {BOARD_SIGNATURE} is missing on the board")
    try:
        public_key.verify(bytes.fromhex(answer["signature"]), manifest_bytes)
    except InvalidSignature as exc:
        raise FlashError(f"{device}: {BOARD_MANIFEST} on the board is not signed by the release key") from exc
    manifest = json.loads(manifest_bytes)
    for entry in manifest["files"]:
        actual = answer["files"].get(entry["path"])
        if actual is None:
            raise FlashError(f"{device}: {entry['path']} is missing on the board")
        if actual != entry["sha256"]:
            raise FlashError(
                f"{device}: {entry['path']} on the board has SHA-256 {actual[:16]}…, "
                f"the manifest says {entry['sha256'][:16]}…"
            )
    return BoardState(manifest=manifest, manifest_bytes=manifest_bytes)


# --- flash and rollback -------------------------------------------------------------------------


@dataclass(frozen=True)
class FlashResult:
    app: str
    version: str
    previous_version: str | None
    files: int
    bytes: int


@dataclass(frozen=True)
class RollbackResult:
    version: str | None  # None: what came back has no manifest (a board set up by hand)
    rolled_back_from: str | None
    files: int


def _files_to_copy(bundle: Bundle) -> dict[str, bytes]:
    files = dict(bundle.files)
    files[BOARD_MANIFEST] = bundle.manifest_bytes
    files[BOARD_SIGNATURE] = bundle.signature
    return files


def flash(
    bundle_data: bytes,
    public_key: Ed25519PublicKey,
    board: BoardConnection,
    *,
    on_copied: Callable[[str], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> FlashResult:
    """Verify, copy, switch and check (see the module's docstring). `on_copied(name)` is called
    after each file reaches the board; `on_total(n)` first, with the number of files to copy."""
    bundle = verify_bundle(bundle_data, public_key)  # refuses before any contact with the board
    files = _files_to_copy(bundle)
    if on_total is not None:
        on_total(len(files))
    with tempfile.TemporaryDirectory(prefix="kiosk-flash-") as staging:
        local = []
        for name, data in sorted(files.items()):
            path = Path(staging) / name
            path.write_bytes(data)
            local.append(str(path))
        current: list[str] = []

        def copied_line(line: str) -> None:
            # mpremote prints "cp SRC DEST" as it starts each file: the one before is then done.
            if line.startswith("cp "):
                if current and on_copied is not None:
                    on_copied(current[0])
                current[:] = [Path(line[3:].rsplit(" ", 1)[0]).name]

        # One session: empty new/ (and make prev/), then copy everything into new/.
        output = board.run(
            "exec", _board_script(_PREPARE), "+", "fs", "cp", *local, f":{STAGING_DIR}/", on_line=copied_line
        )
        board.answers(output, 1)
        if current and on_copied is not None:
            on_copied(current[0])

    # One session: switch (only if every staged file hashes right on the board), then read back.
    hashes = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    switched, read_back = board.exec_json(
        _board_script(_CHECK_AND_SWITCH, FILES=hashes), _board_script(_READ_BACK)
    )
    if not switched["switched"]:
        bad = ", ".join(
            f"{name} ({'missing' if actual is None else 'corrupted in transfer'})"
            for name, actual in sorted(switched["bad"].items())
        )
        raise FlashError(
            f"{board.device}: staged files do not match the bundle: {bad}; the installed version is kept"
        )
    state = _check_read_back(board.device, read_back, public_key)
    if state.manifest_bytes != bundle.manifest_bytes:
        raise FlashError(f"{board.device}: the manifest read back is not the bundle's")
    return FlashResult(
        app=bundle.app,
        version=bundle.version,
        previous_version=switched["previous"],
        files=len(bundle.files),
        bytes=sum(len(data) for data in bundle.files.values()),
    )


def rollback(board: BoardConnection, public_key: Ed25519PublicKey) -> RollbackResult:
    """Put the previous version back (the current one goes to prev/), then check it as a flash is
    checked. FlashError when the board keeps no previous version."""
    answer, read_back = board.exec_json(_board_script(_ROLLBACK), _board_script(_READ_BACK))
    if not answer["rolled_back"]:
        raise FlashError(f"{board.device}: no previous version on the board ({PREVIOUS_DIR}/ is empty)")
    state = _check_read_back(board.device, read_back, public_key)
    return RollbackResult(version=state.version, rolled_back_from=answer["from"], files=answer["restored"])
