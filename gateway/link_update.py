"""Update a kiosk board's firmware over its link, from the running gateway, and see it confirmed.

The gateway owns the serial port while it runs, so the update goes through the port's
`LinkIngest`: its read loop hands the board's UPDATE_REPLY frames to this module's
`LinkUpdater`, and every hello it accepts (`on_hello`). A technician asks for an update through
the local API (`POST /api/firmware/updates`, what `kiosk-gateway firmware update-over-link`
does); `start_update` checks everything it can before any byte goes to the board:

1. the bundle is verified against the release public key kept on this gateway
   (`<data_dir>/release-signing.pub.pem`), never against a key the caller brings: a bundle
   signed by another key, a manifest changed after signing, a file that does not hash to the
   manifest are refused here, and the board never hears of them;
2. the board is on that link, said hello, says it takes updates (CAP_UPDATE: its boot code
   guards a trial), and is the model the bundle is for.

Then `LinkUpdater.run` (a task; the request returns at once): OFFER, each file in chunks
(stop-and-wait: one request in flight, resent after `reply_timeout_s` without an answer),
COMMIT; the board checks every staged file's SHA-256 against the manifest, switches, resets.
The trust is split on purpose: the board has no Ed25519 (MicroPython has none), so the
signature is checked here, before the offer; the board checks the hashes, which catches what
the link or its flash did to the bytes, and keeps `firmware.sig`, so `firmware flash` and
`read_board` can check the signature on the board later.

A link that stays silent for `stall_timeout_s` ends the run as `failed`; the board keeps
running its version and keeps what it staged, so the same bundle sent again resumes where it
stopped (the board answers each file with the bytes it already holds). After the commit the
board's next hello decides: its new version (on trial; our ack confirms it) is `updated`; a
hello flagged CAP_ROLLED_BACK (the new version never got a hello acked within its boots) is
`rolled_back`; no hello within `confirm_timeout_s` is `failed`. Every outcome is logged,
appended to `<data_dir>/firmware-updates.jsonl`, and shown in `GET /api/status` under the
peripheral (`firmware_update`) and in `GET /api/firmware/updates`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from contract.wire import DeviceRef
from firmware import kiosk_link as link
from firmware import link_update as codec
from gateway.errors import GatewayError
from gateway.firmware_bundle import (
    MAX_BUNDLE_BYTES,
    RELEASE_PUBLIC_KEY_FILE,
    Bundle,
    BundleError,
    load_public_key,
    verify_bundle,
)
from gateway.flash import BOARD_MANIFEST, BOARD_SIGNATURE
from gateway.transports.base import TransportClosed

if TYPE_CHECKING:
    from gateway.ingest import LinkIngest

__all__ = [
    "CONFIRM_TIMEOUT_S",
    "FINAL_STATES",
    "MAX_BUNDLE_BYTES",
    "STALL_TIMEOUT_S",
    "UPDATE_LOG",
    "LinkUpdateError",
    "LinkUpdater",
    "UpdateStatus",
    "start_update",
    "update_views",
]

log = logging.getLogger(__name__)

UPDATE_LOG = "firmware-updates.jsonl"
CHUNK_SIZE = 192  # data bytes per chunk: a frame stays under a board UART's 256-byte receive buffer
REPLY_TIMEOUT_S = 1.0
STALL_TIMEOUT_S = 30.0
CONFIRM_TIMEOUT_S = 180.0  # the board's boot code gives a version on trial 2 boots of 60 s
MAX_OFFERS = 3  # the board forgot the offer (it lost new/) this often: give up

STATUS_NAMES = {
    codec.UPDATE_OK: "ok",
    codec.UPDATE_UNKNOWN: "unknown update",
    codec.UPDATE_NO_FILE: "no such file open",
    codec.UPDATE_BAD_REQUEST: "bad request",
    codec.UPDATE_NO_SPACE: "not enough flash",
    codec.UPDATE_FLASH_ERROR: "flash error",
    codec.UPDATE_CHECK_FAILED: "staged file does not match the manifest",
}
FINAL_STATES = frozenset({"updated", "rolled_back", "failed"})


# --- errors: each refusal before anything is sent, with the API's status and code ---------------


class LinkUpdateError(GatewayError):
    """An update that cannot start; nothing was sent to the board."""

    status = 409
    code = "update_refused"


class NoReleaseKey(LinkUpdateError):
    status = 503
    code = "no_release_key"


class BundleRefused(LinkUpdateError):
    status = 422
    code = "bundle_refused"


class UnknownDevice(LinkUpdateError):
    status = 404
    code = "unknown_device"


class BoardNotReady(LinkUpdateError):
    code = "board_not_ready"


class BoardCannotUpdate(LinkUpdateError):
    code = "no_link_update"


class WrongModel(LinkUpdateError):
    status = 422
    code = "wrong_model"


class UpdateRunning(LinkUpdateError):
    code = "update_running"


class _Failed(Exception):
    """Ends a run: the reason, in words for the technician."""


class _Restart(Exception):
    """The board no longer knows the offer (it lost new/): offer again."""


# --- what an update is and how it stands -----------------------------------------------------


def plan(bundle: Bundle) -> list[tuple[str, bytes]]:
    """The files as the board stages them: the signed manifest and its signature, then the files."""
    files = [(BOARD_MANIFEST, bundle.manifest_bytes), (BOARD_SIGNATURE, bundle.signature)]
    return files + [(entry["path"], bundle.files[entry["path"]]) for entry in bundle.file_entries]


@dataclass
class UpdateStatus:
    """One update of one board, as the API shows it."""

    update_id: str  # the manifest's SHA-256, first 16 hex digits
    port: str
    device_id: str
    model: str
    app: str
    from_version: str
    to_version: str
    total_bytes: int
    state: str = "offering"  # offering, transferring, committing, rebooting, then FINAL_STATES
    sent_bytes: int = 0  # bytes of the update the board holds now
    resumed_bytes: int = 0  # bytes it held from an earlier, interrupted run
    resends: int = 0
    detail: str | None = None
    started_ms: int = dataclasses.field(default_factory=lambda: time.time_ns() // 1_000_000)
    finished_ms: int | None = None

    @property
    def done(self) -> bool:
        return self.state in FINAL_STATES

    def view(self) -> dict[str, object]:
        return dataclasses.asdict(self)


class LinkUpdater:
    """Drives one update at a time over one link; made by `start_update` on first use."""

    def __init__(
        self,
        ingest: LinkIngest,
        *,
        record: Callable[[UpdateStatus], None] = lambda status: None,
        chunk_size: int = CHUNK_SIZE,
        reply_timeout_s: float = REPLY_TIMEOUT_S,
    ) -> None:
        if not 0 < chunk_size <= codec.MAX_CHUNK:
            raise ValueError(f"chunk_size must be 1..{codec.MAX_CHUNK}")
        self._ingest = ingest
        self._record = record
        self.chunk_size = chunk_size
        self.reply_timeout_s = reply_timeout_s
        self.status: UpdateStatus | None = None
        self.task: asyncio.Task[UpdateStatus] | None = None
        self._seq = 0
        self._waiting: tuple[int, asyncio.Future[tuple[int, int, int, str] | None]] | None = None
        self._hello: asyncio.Event = asyncio.Event()
        self._done: dict[int, int] = {}

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    # --- called by the link's read loop ------------------------------------------------------

    def on_reply(self, seq: int, payload: bytes) -> None:
        waiting = self._waiting
        if waiting is None or waiting[0] != seq or waiting[1].done():
            return  # a late answer to a request already resent and answered
        try:
            waiting[1].set_result(codec.decode_reply(payload))
        except link.LinkError as exc:
            log.warning("link %s: undecodable update reply (%s); resending", self._ingest.transport.name, exc)

    def on_hello(self, device: DeviceRef, capabilities: int) -> None:
        status = self.status
        if status is None or device.id != status.device_id:
            return
        if status.state == "committing" or status.state == "rebooting":
            self._conclude(status, device, capabilities)
            waiting = self._waiting
            if waiting is not None and not waiting[1].done():
                waiting[1].set_result(None)  # the board reset before our commit heard its reply
            self._hello.set()
        elif status.state == "updated" and capabilities & link.CAP_ROLLED_BACK:
            # Confirmed by our ack, yet the board rolled back: it never received that ack.
            self._conclude(status, device, capabilities)
            self._finish(status)

    def _conclude(self, status: UpdateStatus, device: DeviceRef, capabilities: int) -> None:
        if capabilities & link.CAP_ROLLED_BACK:
            status.state = "rolled_back"
            status.detail = (
                f"version {status.to_version} never had a hello acked within its trial boots; "
                f"the board rolled back to {device.firmware}"
            )
        elif device.firmware == status.to_version:
            status.state = "updated"
            status.detail = f"the board says hello with {device.firmware}; this ack confirms it"
        else:
            status.state = "failed"
            status.detail = f"the board came back with version {device.firmware}, not {status.to_version}"

    # --- the run ------------------------------------------------------------------------------

    def start(
        self, bundle: Bundle, device: DeviceRef, *, stall_timeout_s: float, confirm_timeout_s: float
    ) -> UpdateStatus:
        files = plan(bundle)
        manifest_sha256 = hashlib.sha256(bundle.manifest_bytes).digest()
        self.status = UpdateStatus(
            update_id=manifest_sha256.hex()[:16],
            port=self._ingest.transport.name,
            device_id=device.id,
            model=device.model,
            app=bundle.app,
            from_version=device.firmware,
            to_version=bundle.version,
            total_bytes=sum(len(data) for _, data in files),
        )
        self._hello = asyncio.Event()
        self.task = asyncio.create_task(
            self.run(self.status, files, manifest_sha256, stall_timeout_s, confirm_timeout_s),
            name=f"firmware update {device.id}",
        )
        return self.status

    async def run(
        self,
        status: UpdateStatus,
        files: Sequence[tuple[str, bytes]],
        manifest_sha256: bytes,
        stall_timeout_s: float,
        confirm_timeout_s: float,
    ) -> UpdateStatus:
        name = self._ingest.transport.name
        log.info(
            "link %s: firmware update of %s from %s to %s (%s, %d bytes) starts",
            name, status.device_id, status.from_version, status.to_version, status.update_id,
            status.total_bytes,
        )  # fmt: skip
        try:
            await self._transfer(status, files, manifest_sha256, stall_timeout_s)
            await self._commit(status, codec.update_id(manifest_sha256), stall_timeout_s)
            try:
                async with asyncio.timeout(confirm_timeout_s):
                    await self._hello.wait()
            except TimeoutError:
                status.state = "failed"
                status.detail = (
                    f"the board said no hello within {confirm_timeout_s:g} s after the commit; "
                    "see its console"
                )
        except _Failed as exc:
            status.state = "failed"
            status.detail = str(exc)
        except asyncio.CancelledError:
            status.state = "failed"
            status.detail = "the gateway stopped during the update; send it again to resume"
            self._finish(status)
            raise
        finally:
            self._waiting = None
        self._finish(status)
        return status

    def _finish(self, status: UpdateStatus) -> None:
        status.finished_ms = time.time_ns() // 1_000_000
        level = logging.INFO if status.state == "updated" else logging.WARNING
        log.log(
            level,
            "link %s: firmware update of %s to %s: %s: %s",
            status.port, status.device_id, status.to_version, status.state, status.detail,
        )  # fmt: skip
        try:
            self._record(status)
        except OSError as exc:
            log.error("link %s: could not record the update's outcome: %s", status.port, exc)

    async def _transfer(
        self,
        status: UpdateStatus,
        files: Sequence[tuple[str, bytes]],
        manifest_sha256: bytes,
        stall_timeout_s: float,
    ) -> None:
        update = codec.update_id(manifest_sha256)
        offer = codec.encode_offer(manifest_sha256, status.total_bytes, len(files), status.to_version)
        first = True
        for _attempt in range(MAX_OFFERS):
            answer = await self._ask(link.MSG_UPDATE_OFFER, offer, stall_timeout_s)
            if answer is None:
                raise _Failed("the board said hello again before it took the offer")
            code, _, staged, detail = answer
            if code != codec.UPDATE_OK:
                raise _Failed(f"the board refused the offer: {STATUS_NAMES.get(code, code)} {detail}".strip())
            if first:
                status.resumed_bytes = staged
                first = False
            status.state = "transferring"
            self._done = {}
            try:
                for index, (name, data) in enumerate(files):
                    await self._send_file(status, update, index, name, data, stall_timeout_s)
                return
            except _Restart:
                log.info("link %s: the board lost the staged update; offering it again", status.port)
        raise _Failed(f"the board lost the staged update {MAX_OFFERS} times; it keeps {status.from_version}")

    async def _send_file(
        self, status: UpdateStatus, update: int, index: int, name: str, data: bytes, stall_timeout_s: float
    ) -> None:
        request = codec.encode_file(update, index, len(data), name)
        while True:
            offset = self._check(await self._ask(link.MSG_UPDATE_FILE, request, stall_timeout_s), name)
            if offset is None:
                continue
            self._progress(status, index, offset)
            while offset < len(data):
                chunk = data[offset : offset + self.chunk_size]
                answer = await self._ask(
                    link.MSG_UPDATE_CHUNK, codec.encode_chunk(update, index, offset, chunk), stall_timeout_s
                )
                got = self._check(answer, name)
                if got is None:
                    break  # the board has no file open (it reset): ask for the file again
                if got > len(data):
                    raise _Failed(f"the board says it holds {got} bytes of {name}, which has {len(data)}")
                offset = got
                self._progress(status, index, offset)
            else:
                return

    def _check(self, answer: tuple[int, int, int, str] | None, name: str) -> int | None:
        """The offset in an OK answer; None for NO_FILE; _Restart / _Failed for the rest."""
        if answer is None:
            raise _Failed("the board said hello again in the middle of the transfer")
        code, _, offset, detail = answer
        if code == codec.UPDATE_OK:
            return offset
        if code == codec.UPDATE_NO_FILE:
            return None
        if code == codec.UPDATE_UNKNOWN:
            raise _Restart
        raise _Failed(f"the board refused {name}: {STATUS_NAMES.get(code, code)} {detail}".strip())

    def _progress(self, status: UpdateStatus, index: int, offset: int) -> None:
        self._done[index] = offset
        status.sent_bytes = sum(self._done.values())

    async def _commit(self, status: UpdateStatus, update: int, stall_timeout_s: float) -> None:
        status.state = "committing"
        answer = await self._ask(link.MSG_UPDATE_COMMIT, codec.encode_commit(update), stall_timeout_s)
        if answer is not None and status.state == "committing":
            code, _, _, detail = answer
            if code == codec.UPDATE_CHECK_FAILED:
                raise _Failed(
                    f"the board found {detail} staged wrong and cleared new/; it keeps {status.from_version}"
                )
            if code not in (codec.UPDATE_OK, codec.UPDATE_UNKNOWN):  # UNKNOWN: a resent commit, after it
                raise _Failed(
                    f"the board refused the commit: {STATUS_NAMES.get(code, code)} {detail}".strip()
                )
            status.state = "rebooting"
        log.info(
            "link %s: %s committed %s; waiting for its hello",
            status.port,
            status.device_id,
            status.to_version,
        )

    async def _ask(
        self, msg_type: int, payload: bytes, stall_timeout_s: float
    ) -> tuple[int, int, int, str] | None:
        """Send one request until its reply comes; None if a hello ends a commit's wait."""
        self._seq = self._seq % 0xFFFF + 1
        frame = link.encode_frame(msg_type, self._seq, payload)
        future: asyncio.Future[tuple[int, int, int, str] | None] = asyncio.get_running_loop().create_future()
        self._waiting = (self._seq, future)
        assert self.status is not None
        started = time.monotonic()
        while True:
            with contextlib.suppress(TransportClosed):  # the port is reopening: the next resend goes
                await self._ingest.transport.write(frame)
            try:
                async with asyncio.timeout(self.reply_timeout_s):
                    return await asyncio.shield(future)
            except TimeoutError:
                if time.monotonic() - started >= stall_timeout_s:
                    raise _Failed(
                        f"no answer from the board for {stall_timeout_s:g} s; it keeps running "
                        f"{self.status.from_version} and {self.status.sent_bytes} of "
                        f"{self.status.total_bytes} bytes staged: send the update again to resume"
                    ) from None
                self.status.resends += 1


# --- starting one ----------------------------------------------------------------------------


def _find_link(links: Sequence[LinkIngest], device: str) -> LinkIngest:
    for ingest in links:
        session = ingest.session
        if ingest.transport.name == device or (session is not None and session.device.id == device):
            return ingest
    known = [ingest.session.device.id for ingest in links if ingest.session]
    known += [ingest.transport.name for ingest in links]
    raise UnknownDevice(f"no board {device!r} on this gateway's links (known: {', '.join(known) or 'none'})")


def _release_key(data_dir: Path) -> Ed25519PublicKey:
    path = data_dir / RELEASE_PUBLIC_KEY_FILE
    if not path.exists():
        raise NoReleaseKey(
            f"this gateway has no release public key ({path}): copy release-signing.pub.pem there "
            "to take firmware updates"
        )
    try:
        return load_public_key(path)
    except BundleError as exc:
        raise NoReleaseKey(str(exc)) from exc


def _journal(data_dir: Path) -> Callable[[UpdateStatus], None]:
    def record(status: UpdateStatus) -> None:
        with (data_dir / UPDATE_LOG).open("a", encoding="utf-8") as journal:
            journal.write(json.dumps(status.view(), sort_keys=True) + "\n")

    return record


def start_update(
    links: Sequence[LinkIngest],
    data_dir: Path,
    device: str,
    bundle_data: bytes,
    *,
    stall_timeout_s: float = STALL_TIMEOUT_S,
    confirm_timeout_s: float = CONFIRM_TIMEOUT_S,
) -> UpdateStatus:
    """Check everything (the module's docstring, 1 and 2), then start the update as a task.

    `device` is the board's id (from its hello) or the serial port's path. Raises a
    LinkUpdateError subclass, and nothing has been sent, when anything is wrong.
    """
    key = _release_key(data_dir)
    try:
        bundle = verify_bundle(bundle_data, key)
    except BundleError as exc:
        log.warning("firmware update for %s refused, nothing sent: %s", device, exc)
        raise BundleRefused(f"refused, nothing was sent to the board: {exc}") from exc
    ingest = _find_link(links, device)
    session = ingest.session
    if session is None:
        raise BoardNotReady(f"the board on {ingest.transport.name} has not said hello (is it on?)")
    if not session.capabilities & link.CAP_UPDATE:
        raise BoardCannotUpdate(
            f"{session.device.id} (firmware {session.device.firmware}) does not take updates over the "
            "link: it has no boot.py to guard them; copy build/firmware/<target>/<app>/boot.py to it "
            "once over USB"
        )
    if bundle.manifest.get("model") != session.device.model:
        raise WrongModel(
            f"the bundle is {bundle.app} for {bundle.manifest.get('model')}; "
            f"{session.device.id} is a {session.device.model}"
        )
    updater = ingest.updater
    if updater is None:
        updater = ingest.updater = LinkUpdater(ingest, record=_journal(data_dir))
    if updater.running:
        raise UpdateRunning(f"an update of {session.device.id} is already running")
    return updater.start(
        bundle, session.device, stall_timeout_s=stall_timeout_s, confirm_timeout_s=confirm_timeout_s
    )


def update_views(links: Sequence[LinkIngest]) -> list[dict[str, object]]:
    """The last update of every link that had one, newest first."""
    statuses = [ingest.updater.status for ingest in links if ingest.updater and ingest.updater.status]
    return [status.view() for status in sorted(statuses, key=lambda status: -status.started_ms)]
