"""A board's firmware updated over the kiosk link, through the running gateway, with rollback.

Real parts throughout: the BP board firmware on the MicroPython unix port (`firmware/host/run_board.py`
under `simulators/link_board.py`, which starts the process again whenever it ends, as a reset
does), a simulated cuff and a serial cable on ptys, the `kiosk-gateway run` process, and the
technician's `kiosk-gateway firmware update-over-link` command talking to its local API. The
bundles are built from the real firmware sources by the real mpy-cross and signed by a release
key made for the test: 0.1.0 as shipped, and copies of the sources that say 0.2.0-test, that
crash on import, or that never say hello. The board's flash starts as a technician's first USB
install leaves it: the 0.1.0 bundle's files, its signed manifest and signature.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.firmware_bundle import (
    FIRMWARE_SRC,
    RELEASE_PUBLIC_KEY_FILE,
    build_bundle,
    create_release_keys,
    load_private_key,
    read_bundle,
)
from gateway.link_update import UPDATE_LOG
from simulators.bp_cuff import SimulatedCuff
from simulators.chain import REPO_ROOT, free_port, micropython_binary, port_open, wait_for
from simulators.link_board import LinkBoard
from simulators.residents import BloodPressure
from simulators.serial_cable import SerialCable
from tests.conftest import run_on_micropython

pytestmark = pytest.mark.micropython

DEVICE = "bp-0042"
TRIAL_DEADLINE_MS = 2500
V1, V2, CRASH, SILENT = "0.1.0", "0.2.0-test", "0.3.0-crash", "0.4.0-silent"


# --- bundles ----------------------------------------------------------------------------------


def _variant(out: Path, version: str, edit: Callable[[str], str]) -> Path:
    """A copy of firmware/ whose bp_app.py says `version` and is changed by `edit`."""
    src = out / f"firmware-{version}"
    shutil.copytree(FIRMWARE_SRC, src, ignore=shutil.ignore_patterns("__pycache__"))
    source = (src / "bp_app.py").read_text()
    assert f'FIRMWARE_VERSION = "{V1}"' in source
    (src / "bp_app.py").write_text(
        edit(source.replace(f'FIRMWARE_VERSION = "{V1}"', f'FIRMWARE_VERSION = "{version}"'))
    )
    return src


def _never_says_hello(source: str) -> str:
    hello = "    client.hello(link.encode_hello("
    assert hello in source
    return source.replace(hello, "    (lambda payload: None)(link.encode_hello(")  # builds it, never sends it


@dataclass(frozen=True)
class Release:
    key_dir: Path
    bundles: dict[str, Path]

    def data(self, version: str) -> bytes:
        return self.bundles[version].read_bytes()


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Release:
    out = tmp_path_factory.mktemp("link-update-bundles")
    private_path, _ = create_release_keys(out / "keys")
    key = load_private_key(private_path)
    sources = {
        V1: FIRMWARE_SRC,
        V2: _variant(out, V2, lambda source: source),
        CRASH: _variant(
            out, CRASH, lambda source: source + '\nraise RuntimeError("0.3.0-crash dies on import")\n'
        ),
        SILENT: _variant(out, SILENT, _never_says_hello),
    }
    bundles = {
        version: build_bundle("bp_app", target="esp32", private_key=key, out_dir=out, src=src)
        for version, src in sources.items()
    }
    bundles["glucose"] = build_bundle("glucose_app", target="esp32", private_key=key, out_dir=out)
    return Release(out / "keys", bundles)


def installed_files(bundle_data: bytes) -> dict[str, bytes]:
    """What a flashed version leaves on the board: its files, signed manifest and signature."""
    bundle = read_bundle(bundle_data)
    return {**bundle.files, "firmware.json": bundle.manifest_bytes, "firmware.sig": bundle.signature}


# --- the kiosk: gateway process, cable, cuff, board ------------------------------------------


class Kiosk:
    def __init__(self, workdir: Path, release: Release) -> None:
        self.workdir = workdir
        self.release = release
        self.cable = SerialCable()
        self.cuff = SimulatedCuff(inflate_seconds=0.05)
        self.api_port = free_port()
        self.data_dir = workdir / "gateway"
        subprocess.run(
            [sys.executable, "-m", "gateway.cli", "init", "--data-dir", str(self.data_dir)],
            check=True, cwd=REPO_ROOT, capture_output=True,
        )  # fmt: skip
        shutil.copy(release.key_dir / RELEASE_PUBLIC_KEY_FILE, self.data_dir / RELEASE_PUBLIC_KEY_FILE)
        self.config = workdir / "gateway.toml"
        self.config.write_text(
            f'gateway_id = "gw-update-test"\n'
            f'data_dir = "{self.data_dir}"\n'
            f'profiles_dir = "{REPO_ROOT / "device_profiles"}"\n'
            f'[[serial]]\npath = "{self.cable.gateway_path}"\n'
            f"[mqtt]\nport = {free_port()}\nreconnect_min_s = 5\nreconnect_max_s = 30\n"  # no broker: offline
            f"[api]\nport = {self.api_port}\n"
        )
        self.gateway_log = workdir / "gateway.log"
        self.gateway: subprocess.Popen[bytes] | None = None
        self.board = LinkBoard(
            app="bp_app",
            device_id=DEVICE,
            options={
                "link_uart": f"uart:{self.cable.device_path}:115200",
                "cuff_uart": f"uart:{self.cuff.path}:9600",
            },
            flash_dir=workdir / "board-flash",
            trial_deadline_ms=TRIAL_DEADLINE_MS,
        )

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> None:
        with self.gateway_log.open("ab") as log:
            self.gateway = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "--config", str(self.config)],
                cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_for(lambda: port_open(self.api_port), timeout=30, what="the gateway's API")
        self.board.install(installed_files(self.release.data(V1)))
        self.board.start()
        self.wait_for_board(V1)

    def close(self) -> None:
        self.board.close()
        if self.gateway is not None:
            self.gateway.terminate()
            self.gateway.wait(timeout=15)
        self.cuff.close()
        self.cable.close()

    def peripheral(self) -> dict[str, Any]:
        status = httpx.get(f"{self.api}/api/status", timeout=5).raise_for_status().json()
        [peripheral] = status["peripherals"]
        return peripheral

    def wait_for_board(self, version: str, timeout: float = 15) -> dict[str, Any]:
        def says_hello() -> dict[str, Any] | None:
            peripheral = self.peripheral()
            device = peripheral["device"] or {}
            return peripheral if device.get("firmware") == version else None

        return wait_for(says_hello, timeout=timeout, what=f"a hello with firmware {version}")

    def update(self, bundle: Path, *extra: str) -> subprocess.Popen[str]:
        """The technician's command, running."""
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "firmware", "update-over-link", str(bundle),
             "--device", DEVICE, "--api", self.api, *extra],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip

    def update_and_wait(self, bundle: Path, *extra: str, timeout: float = 40) -> tuple[int, str]:
        process = self.update(bundle, *extra)
        output, _ = process.communicate(timeout=timeout)
        return process.returncode, output

    def installed(self, folder: str = "") -> dict[str, bytes]:
        prefix = folder + "/" if folder else ""
        return {
            name[len(prefix) :]: data
            for name, data in self.board.flash_files().items()
            if name.startswith(prefix) and "/" not in name[len(prefix) :]
        }

    def journal(self) -> list[dict[str, Any]]:
        path = self.data_dir / UPDATE_LOG
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def measure_and_see_it_stored(self, systolic: int) -> None:
        before = self.peripheral()["counters"]["readings_stored"]
        self.cuff.measure(BloodPressure(systolic=systolic, diastolic=80, pulse=70))
        wait_for(
            lambda: self.peripheral()["counters"]["readings_stored"] > before,
            timeout=10, what="the reading stored at the gateway",
        )  # fmt: skip


@pytest.fixture
def kiosk(tmp_path: Path, release: Release) -> Iterator[Kiosk]:
    kiosk = Kiosk(tmp_path, release)
    try:
        kiosk.start()
        yield kiosk
    finally:
        console = kiosk.board.output()
        kiosk.close()
        print("--- gateway log\n" + kiosk.gateway_log.read_text(errors="replace")[-4000:])
        print("--- board console\n" + console[-4000:])  # shown when a test fails


def staged_bytes(kiosk: Kiosk) -> int:
    """Bytes of the update in the board's new/ (not its record of the offer, new/.offer)."""
    files = kiosk.board.flash_files()
    return sum(len(data) for name, data in files.items() if name.startswith("new/") and name != "new/.offer")


# --- the tests ------------------------------------------------------------------------------


def test_a_signed_bundle_goes_over_the_link_and_the_board_says_hello_with_it(kiosk: Kiosk) -> None:
    assert "link_update" in kiosk.peripheral()["capabilities"]

    code, output = kiosk.update_and_wait(kiosk.release.bundles[V2])

    assert code == 0, output
    assert f"updated {DEVICE} from {V1} to {V2}" in output
    assert "every SHA-256 checked on the board" in output
    peripheral = kiosk.wait_for_board(V2)
    assert peripheral["firmware_update"]["state"] == "updated"
    assert peripheral["firmware_update"]["sent_bytes"] == peripheral["firmware_update"]["total_bytes"]
    # The new version is installed byte for byte, the old one kept in prev/, nothing left staged;
    # the trial ended when the gateway acked the new version's hello.
    wait_for(lambda: "firmware.trial" not in kiosk.installed(), timeout=5, what="the trial confirmed")
    assert kiosk.installed() == installed_files(kiosk.release.data(V2))
    assert kiosk.installed("prev") == installed_files(kiosk.release.data(V1))
    assert not any(name.startswith("new/") for name in kiosk.board.flash_files())
    assert kiosk.board.boots == 2  # one reset: the one after the commit
    assert "on_trial" in peripheral["capabilities"]  # what the hello our ack confirmed said
    # The new version works: a measurement reaches the gateway.
    kiosk.measure_and_see_it_stored(131)
    assert [(entry["to_version"], entry["state"]) for entry in kiosk.journal()] == [(V2, "updated")]
    table = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "peripherals", "--api", kiosk.api],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, env={**os.environ, "COLUMNS": "250"},
    )  # fmt: skip
    assert f"{V2} (update to {V2}: updated)" in table.stdout, table.stdout


def _tampered(data: bytes) -> bytes:
    """The bundle with one byte of bp_app.mpy changed, the signed manifest left as it was."""
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            content = source.read(info.filename)
            if info.filename == "files/bp_app.mpy":
                content = content[:100] + bytes([content[100] ^ 0x01]) + content[101:]
            target.writestr(info, content)
    return out.getvalue()


def _signed_by_another_key(data: bytes) -> bytes:
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            content = source.read(info.filename)
            if info.filename == "manifest.sig":
                content = Ed25519PrivateKey.generate().sign(source.read("manifest.json"))
            target.writestr(info, content)
    return out.getvalue()


def test_a_tampered_bundle_is_refused_before_any_byte_goes_to_the_board(kiosk: Kiosk, tmp_path: Path) -> None:
    time.sleep(0.5)  # the board's status after its hello has been acked: the link is quiet now
    before_bytes, before_flash = kiosk.cable.stats.to_device, kiosk.board.flash_files()
    v2 = kiosk.release.data(V2)
    cases = {
        "tampered.zip": (_tampered(v2), "does not match the signed manifest"),
        "other-key.zip": (_signed_by_another_key(v2), "signature does not match"),
        "glucose.zip": (kiosk.release.data("glucose"), "is a KX-BP100"),
    }
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        code, output = kiosk.update_and_wait(tmp_path / name)
        assert code == 1, output
        assert "refused" in output and reason in " ".join(output.split()), output

    assert kiosk.cable.stats.to_device == before_bytes  # not one byte went down the link
    assert kiosk.board.flash_files() == before_flash
    assert kiosk.board.boots == 1
    assert kiosk.peripheral()["firmware_update"] is None
    assert kiosk.peripheral()["device"]["firmware"] == V1


def test_a_version_that_crashes_on_import_is_rolled_back_and_the_old_one_says_hello(kiosk: Kiosk) -> None:
    code, output = kiosk.update_and_wait(kiosk.release.bundles[CRASH])

    assert code == 2, output
    assert "update rolled back" in output and f"rolled back to {V1}" in " ".join(output.split())
    peripheral = kiosk.wait_for_board(V1)
    assert peripheral["firmware_update"]["state"] == "rolled_back"
    # Two trial boots died on import (the board's console has the traceback), the third put
    # prev/ back; the failed version is in prev/ now, and no marker is left once the gateway
    # has heard the rollback.
    assert kiosk.board.output().count("0.3.0-crash dies on import") == 2
    assert kiosk.board.boots == 4
    wait_for(lambda: "firmware.rolled_back" not in kiosk.installed(), timeout=5, what="the rollback reported")
    assert kiosk.installed() == installed_files(kiosk.release.data(V1))
    assert kiosk.installed("prev") == installed_files(kiosk.release.data(CRASH))
    kiosk.measure_and_see_it_stored(128)
    assert "rolled a firmware update back" in kiosk.gateway_log.read_text()


def test_a_version_that_never_says_hello_is_rolled_back_after_its_trial_deadline(kiosk: Kiosk) -> None:
    started = time.monotonic()
    code, output = kiosk.update_and_wait(kiosk.release.bundles[SILENT])

    assert code == 2, output
    assert "update rolled back" in output
    assert time.monotonic() - started >= 2 * TRIAL_DEADLINE_MS / 1000  # two boots of the deadline
    assert kiosk.board.output().count(f"{SILENT} up as {DEVICE}") == 2
    assert kiosk.board.output().count("trial deadline passed") == 2
    kiosk.wait_for_board(V1)
    assert kiosk.installed() == installed_files(kiosk.release.data(V1))


def test_a_link_cut_mid_transfer_resumes_and_the_update_completes(kiosk: Kiosk) -> None:
    kiosk.cable.baudrate = 38400  # slow enough to cut it half way: about 5 s for the bundle
    total = sum(len(data) for data in installed_files(kiosk.release.data(V2)).values())
    process = kiosk.update(kiosk.release.bundles[V2])
    wait_for(lambda: staged_bytes(kiosk) > total // 3, timeout=20, what="a third of the bundle staged")
    kiosk.cable.plugged = False
    time.sleep(3)  # three reply timeouts: several resends are lost too
    staged_during_cut = staged_bytes(kiosk)
    kiosk.cable.plugged = True

    output, _ = process.communicate(timeout=40)

    assert process.returncode == 0, output
    assert total // 3 < staged_during_cut < total
    peripheral = kiosk.wait_for_board(V2)
    assert peripheral["firmware_update"]["resends"] >= 2
    assert kiosk.installed() == installed_files(kiosk.release.data(V2))


def test_a_cut_longer_than_the_give_up_time_keeps_the_old_version_and_a_rerun_resumes(kiosk: Kiosk) -> None:
    kiosk.cable.baudrate = 38400
    total = sum(len(data) for data in installed_files(kiosk.release.data(V2)).values())
    process = kiosk.update(kiosk.release.bundles[V2], "--give-up-after", "2")
    wait_for(lambda: staged_bytes(kiosk) > total // 2, timeout=20, what="half the bundle staged")
    kiosk.cable.plugged = False

    output, _ = process.communicate(timeout=30)

    assert process.returncode == 2, output
    assert "no answer from the board for 2 s" in " ".join(output.split())
    assert kiosk.peripheral()["firmware_update"]["state"] == "failed"
    kiosk.cable.plugged = True
    # The board never stopped: the old version runs on, and measures.
    assert kiosk.board.boots == 1
    kiosk.measure_and_see_it_stored(140)
    assert kiosk.peripheral()["device"]["firmware"] == V1
    staged = staged_bytes(kiosk)

    code, output = kiosk.update_and_wait(kiosk.release.bundles[V2])

    assert code == 0, output
    resumed = kiosk.wait_for_board(V2)["firmware_update"]["resumed_bytes"]
    assert resumed == staged > total // 2
    assert f"{resumed} B were already on the board" in output
    assert kiosk.installed() == installed_files(kiosk.release.data(V2))
    assert [entry["state"] for entry in kiosk.journal()] == ["failed", "updated"]


def test_the_board_end_stages_checks_resumes_and_rolls_back_on_micropython(tmp_path: Path) -> None:
    """tests/micropython/link_update_board.py: the board's updater driven frame by frame,
    including its own SHA-256 check and a 64 KB file through it without the heap growing."""
    output = run_on_micropython("link_update_board.py", str(tmp_path))
    assert "8 passed, 0 failed" in output
    assert "heap grown" in output


# A stand-in `machine` for the generated boot.py on the unix port: its timer fires at once.
_MACHINE = """
class Timer:
    ONE_SHOT = 0
    def __init__(self, id):
        print("timer", id)
    def init(self, mode, period, callback):
        print("deadline", period)
        callback(self)
def reset():
    print("reset")
"""


@pytest.mark.parametrize("boots", [0, 2])
def test_the_generated_boot_py_arms_the_deadline_or_rolls_back(tmp_path: Path, boots: int) -> None:
    """The boot.py firmware/build.py makes for a board: on trial it arms a reset at the deadline
    (the stand-in timer fires at once: the trial is unconfirmed, so it resets); once the trial
    boots are used up it puts prev/ back before main.py would run."""
    from firmware.boards.esp32 import BOARD
    from firmware.build import TRIAL_BOOTS, TRIAL_DEADLINE_MS, boot_source

    (tmp_path / "boot.py").write_text(boot_source(BOARD))
    shutil.copy(FIRMWARE_SRC / "updater.py", tmp_path / "updater.py")
    (tmp_path / "machine.py").write_text(_MACHINE)
    (tmp_path / "app.py").write_text("new")
    (tmp_path / "firmware.json").write_text('{"version": "2", "files": [{"path": "app.py"}]}')
    (tmp_path / "prev").mkdir()
    (tmp_path / "prev" / "app.py").write_text("old")
    (tmp_path / "prev" / "firmware.json").write_text('{"version": "1", "files": [{"path": "app.py"}]}')
    (tmp_path / "firmware.trial").write_text(json.dumps({"version": "2", "previous": "1", "boots": boots}))

    result = subprocess.run(
        [micropython_binary(), "boot.py"], cwd=tmp_path, capture_output=True, text=True, timeout=30,
        env={"MICROPYPATH": ""},
    )  # fmt: skip

    assert result.returncode == 0 and "Traceback" not in result.stdout, result.stdout + result.stderr
    if boots < TRIAL_BOOTS:
        assert result.stdout.splitlines()[-3:] == ["timer -1", f"deadline {TRIAL_DEADLINE_MS}", "reset"]
        assert json.loads((tmp_path / "firmware.trial").read_text())["boots"] == boots + 1
        assert (tmp_path / "app.py").read_text() == "new"
    else:
        assert "rolled back to 1" in result.stdout
        assert (tmp_path / "app.py").read_text() == "old" and (
            tmp_path / "prev" / "app.py"
        ).read_text() == "new"
        assert json.loads((tmp_path / "firmware.rolled_back").read_text()) == {"failed": "2", "version": "1"}
        assert not (tmp_path / "firmware.trial").exists()
