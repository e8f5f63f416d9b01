"""A technician's day, end to end: the commands of the README typed in order against real processes.

Issue 7: "done when a technician's whole install-and-update runs in CI end to end". The pieces
have their own tests (test_gateway_provision, test_deploy, test_firmware_flash,
test_firmware_link_update); here they run one after the other, each on what the step before
left behind:

1. The bridge operator's side is running: the community's CA (`kiosk-bridge ca init`, `ca issue`
   for the broker and the bridge), Mosquitto over TLS with the generated ACL (`kiosk-bridge acl`),
   `kiosk-bridge run` over SQLite with `--ca-dir`. The operator makes a technician's token
   (`kiosk-bridge token add … --role technician`).
2. The technician installs the gateway (`deploy/install.sh --root`: the gateway's file system is a
   directory), provisions it over that install (`kiosk-gateway provision … --force`, as the
   README says after install.sh), the operator regenerates the ACL and sends the broker SIGHUP;
   install.sh runs again (an upgrade) and keeps the provisioned configuration and keys. The
   technician makes the release key, builds the shipped 0.1.0 bundle, flashes it over USB
   (`kiosk-gateway firmware flash`, mpremote against simulators/repl_board.py), and the same flash
   directory becomes the board in the kiosk (simulators/link_board.py, the MicroPython unix port on
   a pty). The gateway starts with the installed unit's own ExecStart, under a NOTIFY_SOCKET as
   systemd gives it (Type=notify: READY=1).
3. A reading from the board reaches the bridge: the fleet API (technician's token) and the FHIR
   Observation (admin's token).
4. 0.2.0 is built and signed and goes over the kiosk link (`firmware update-over-link`); the
   board says hello with it, `kiosk-gateway peripherals` shows it, and the next reading reaches
   the bridge from firmware 0.2.0.
5. A version that crashes on import is rolled back by the board, which says hello with 0.2.0
   again; readings still reach the bridge.

What is not the real system, and why: install.sh with --root only prints what acts on the running
machine (apt-get, useradd, pip into /opt/kiosk-gateway, systemctl), so the gateway runs from this
venv's `kiosk-gateway` with the installed unit's arguments, its paths under the root; and since
paths inside the root are not rewritten, provision is given the root's paths, which its
configuration then names. The provisioned `[api] port = 8700` is edited to a free port, as a
technician edits gateway.toml (8700 may be taken on a CI machine).

The steps are logged to tests/artifacts/technician/technician-day.log.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud_bridge.fhir_map import READING_SYSTEM
from gateway.config import load_config
from gateway.firmware_bundle import RELEASE_PRIVATE_KEY_FILE, RELEASE_PUBLIC_KEY_FILE
from gateway.link_update import UPDATE_LOG
from simulators.chain import REPO_ROOT, Chain, port_open, wait_for
from simulators.link_board import LinkBoard
from simulators.repl_board import ReplBoard
from simulators.residents import BloodPressure
from tests.component.test_deploy import (
    INSTALL,
    SYSTEMD_ANALYZE,
    NotifySocket,
    relocate,
    shims,  # noqa: F401  (a fixture: install.sh's system commands only note their calls)
    unit_settings,
    verify_problems,
)
from tests.component.test_firmware_link_update import _variant, installed_files
from tests.conftest import Mosquitto

pytestmark = [pytest.mark.mosquitto, pytest.mark.micropython]

BIN = Path(sys.executable).parent
KIOSK_GATEWAY, KIOSK_BRIDGE = str(BIN / "kiosk-gateway"), str(BIN / "kiosk-bridge")
GATEWAY_ID, DEVICE_ID, SITE = "gw-lishui-07", "bp-0107", "Lishui village clinic"
V1, V2, BAD = "0.1.0", "0.2.0", "0.3.0-crash"
ARTIFACT = REPO_ROOT / "tests" / "artifacts" / "technician" / "technician-day.log"
BP_PANEL, SYSTOLIC = "85354-9", "8480-6"


class Day:
    """The technician's terminal: each command run as typed, in the technician's working directory
    (release-keys/, build/bundles/), and a short log of the steps (no command output, so no token)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.home = tmp / "technician"
        self.home.mkdir()
        self.started = time.monotonic()
        self.lines: list[str] = []

    def note(self, text: str) -> None:
        self.lines.append(f"[{time.monotonic() - self.started:5.1f}s] {text.replace(str(self.tmp), '$TMP')}")

    def step(self, title: str) -> None:
        self.lines.append("")
        self.note(f"== {title}")

    def run(
        self, *argv: str | Path, expect: int = 0, env: dict[str, str] | None = None, stdout_only: bool = False
    ) -> str:
        """The command's output (stdout and stderr, or with `stdout_only` what it prints for a pipe)."""
        command = [str(arg) for arg in argv]
        shown = shlex.join([Path(command[0]).name, *command[1:]])
        result = subprocess.run(
            command, cwd=self.home, capture_output=True, text=True, timeout=120,
            env={**os.environ, "COLUMNS": "200", **(env or {})},
        )  # fmt: skip
        output = result.stdout + result.stderr
        self.note(f"$ {shown}  -> exit {result.returncode}")
        assert result.returncode == expect, f"{shown}: exit {result.returncode}, expected {expect}\n{output}"
        return result.stdout if stdout_only else output

    def save(self) -> None:
        ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
        ARTIFACT.write_text("\n".join(self.lines).lstrip() + "\n")


def top_level(board: LinkBoard) -> dict[str, bytes]:
    """The files at the top of the board's flash (the installed version), journal aside."""
    return {
        name: data
        for name, data in board.flash_files().items()
        if "/" not in name and name != "bp_app.journal"
    }


def test_a_technician_installs_a_gateway_and_updates_its_board_over_the_kiosk_link(
    tmp_path: Path,
    shims: tuple[dict[str, str], Path],  # noqa: F811
) -> None:
    install_env, system_calls = shims
    day = Day(tmp_path)
    try:
        with contextlib.ExitStack() as cleanup:
            _the_day(day, cleanup, install_env, system_calls)
    except BaseException as exc:
        day.note(f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        raise
    finally:
        day.note("done")
        day.save()


def _the_day(
    day: Day, cleanup: contextlib.ExitStack, install_env: dict[str, str], system_calls: Path
) -> None:
    tmp = day.tmp
    ops = tmp / "bridge-operator"
    ca, acl = ops / "ca", ops / "mosquitto.acl"

    # 1. The bridge is running; the operator makes the technician's token. ------------------------
    day.step("1. bridge operator: CA, broker over TLS with the ACL, kiosk-bridge run, tokens")
    day.run(KIOSK_BRIDGE, "ca", "init", "--ca-dir", ca)
    day.run(KIOSK_BRIDGE, "ca", "issue", "broker", "--server-name", "127.0.0.1", "--out-dir", ops / "broker",
            "--ca-dir", ca)  # fmt: skip
    day.run(KIOSK_BRIDGE, "ca", "issue", "kiosk-bridge", "--out-dir", ops / "bridge", "--ca-dir", ca)
    broker = Mosquitto(ops, tls=(ca / "ca.crt", ops / "broker/broker.crt", ops / "broker/broker.key"),
                       acl_file=acl)  # fmt: skip
    chain = Chain(workdir=tmp / "chain", broker_port=broker.port, gateway_id=GATEWAY_ID, device_id=DEVICE_ID)
    cleanup.callback(broker.stop)
    cleanup.callback(chain.close)  # the bridge, the cable and the cuff
    db = chain.bridge_db
    db.parent.mkdir(parents=True)
    assert "rules for 0 gateway(s)" in day.run(KIOSK_BRIDGE, "acl", "--db", db, "--out", acl)
    broker.start()
    chain._spawn(
        "bridge",
        [KIOSK_BRIDGE, "run", "--db", str(db), "--mqtt-port", str(broker.port),
         "--http-port", str(chain.bridge_port), "--ca-dir", str(ca), "--mqtt-ca", str(ca / "ca.crt"),
         "--mqtt-cert", str(ops / "bridge/kiosk-bridge.crt"),
         "--mqtt-key", str(ops / "bridge/kiosk-bridge.key"),
         "--alert-rules", str(REPO_ROOT / "device_profiles/alert_rules/cn.toml")],
    )  # fmt: skip
    subscribed = "bridge: subscribed to"
    wait_for(lambda: subscribed in chain.log("bridge"), timeout=30, what="the bridge on the broker")
    bridge_url = f"http://127.0.0.1:{chain.bridge_port}"
    wait_for(lambda: port_open(chain.bridge_port), timeout=30, what="the bridge's HTTP API")
    token_add = (KIOSK_BRIDGE, "token", "add")
    technician = day.run(*token_add, "li.tech", "--role", "technician", "--db", db, stdout_only=True).strip()
    chain.bridge_token = day.run(*token_add, "ops", "--role", "admin", "--db", db, stdout_only=True).strip()
    assert technician.startswith("kb_") and chain.bridge_token.startswith("kb_")
    day.note("bridge subscribed over TLS; technician and admin tokens made")

    def fleet() -> list[dict[str, Any]]:
        headers = {"Authorization": f"Bearer {technician}"}
        return httpx.get(f"{bridge_url}/fleet/gateways", headers=headers, timeout=5).raise_for_status().json()

    # 2. Install, provision, first flash over USB, start the gateway with the board on its link. --
    day.step("2. technician: install.sh --root, provision --force, ACL + SIGHUP, install.sh again")
    root = tmp / "gateway-root"  # the gateway's file system
    config = root / "etc/kiosk-gateway/gateway.toml"
    data = root / "var/lib/kiosk-gateway"
    profiles = root / "opt/kiosk-gateway/device_profiles"
    unit = root / "etc/systemd/system/kiosk-gateway.service"
    out = day.run("bash", INSTALL, "--root", root, "--gateway-id", GATEWAY_ID, env=install_env)
    assert "would run: systemctl enable --now kiosk-gateway.service" in out, out
    assert f"wrote {config}" in out and load_config(config).gateway_id == GATEWAY_ID  # the example, for now
    assert (profiles / "kx-bp100.toml").is_file() and unit.is_file()
    if SYSTEMD_ANALYZE is not None:
        assert verify_problems(relocate(unit, tmp / "verify-root", tmp / "verify-units")) == []
        day.note("installed unit passes systemd-analyze verify")
    assert system_calls.read_text() == ""  # --root: nothing ran on this machine

    out = day.run(
        KIOSK_GATEWAY, "provision", GATEWAY_ID, "--bridge", bridge_url, "--site", SITE,
        "--serial", chain.cable.gateway_path, "--mqtt-host", "127.0.0.1", "--mqtt-port", str(broker.port),
        "--data-dir", data, "--config", config, "--profiles-dir", profiles, "--force",
        env={"KIOSK_BRIDGE_TOKEN": technician},
    )  # fmt: skip
    assert f"provisioned {GATEWAY_ID}" in out and "TLS with the community CA's certificate" in out, out
    assert "kept aside" in out and technician not in out  # install.sh's example config, kept
    provisioned = load_config(config)
    assert provisioned.gateway_id == GATEWAY_ID
    assert (provisioned.data_dir, provisioned.profiles_dir) == (data, profiles)
    assert [p.path for p in provisioned.serial] == [chain.cable.gateway_path]
    assert provisioned.mqtt.port == broker.port and provisioned.mqtt.tls is not None
    assert [(g["gateway_id"], g["site"], g["status"]) for g in fleet()] == [(GATEWAY_ID, SITE, "active")]
    assert "rules for 1 gateway(s)" in day.run(KIOSK_BRIDGE, "acl", "--db", db, "--out", acl)
    assert broker.process is not None
    broker.process.send_signal(signal.SIGHUP)
    day.note("enrolled, certificate signed by the CA, broker rules reloaded (SIGHUP)")

    before = {path: path.read_bytes() for path in (config, *data.iterdir())}
    out = day.run("bash", INSTALL, "--root", root, "--gateway-id", GATEWAY_ID, env=install_env)
    assert f"kept: {config} exists" in out and "kept: keys exist" in out, out
    assert {path: path.read_bytes() for path in (config, *data.iterdir())} == before
    # The one edit: the kiosk API's port (8700 as provisioned) to one free on this machine.
    head, api = config.read_text().split("[api]")
    assert "port = 8700" in api
    config.write_text(head + "[api]" + api.replace("port = 8700", f"port = {chain.gateway_api_port}"))
    chain.gateway_config = config
    api_url = f"http://127.0.0.1:{chain.gateway_api_port}"

    day.step("2b. technician: release key, 0.1.0 bundle, first flash over USB (mpremote)")
    day.run(KIOSK_GATEWAY, "firmware", "keygen", "--out", "release-keys")
    key, public = f"release-keys/{RELEASE_PRIVATE_KEY_FILE}", f"release-keys/{RELEASE_PUBLIC_KEY_FILE}"
    build = (KIOSK_GATEWAY, "firmware", "build", "bp_app", "--target", "esp32", "--key", key,
             "--out", "build/bundles")  # fmt: skip
    day.run(*build)
    bundles = day.home / "build/bundles"
    v1 = bundles / f"bp_app-{V1}-esp32.zip"
    day.run("cp", public, data)  # the release key this gateway trusts
    flash_dir = tmp / "board-flash"
    with ReplBoard(flash_dir=flash_dir) as usb:
        out = day.run(KIOSK_GATEWAY, "firmware", "flash", v1, "--device", usb.url, "--public-key", public)
        assert f"flashed bp_app {V1} to {usb.url}" in out, out
    board = LinkBoard(
        app="bp_app",
        device_id=DEVICE_ID,
        options={
            "link_uart": f"uart:{chain.cable.device_path}:115200",
            "cuff_uart": f"uart:{chain.cuff.path}:9600",
            "journal_path": "bp_app.journal",  # the board's main.py: /bp_app.journal
        },
        flash_dir=flash_dir,
    )
    cleanup.callback(board.close)
    cleanup.callback(lambda: print(  # shown when the test fails
        *(f"--- {name} log\n{chain.log(name)[-3000:]}" for name in ("bridge", "gateway")),
        f"--- board console\n{board.output()[-3000:]}", sep="\n",
    ))  # fmt: skip
    assert top_level(board) == installed_files(v1.read_bytes())

    day.step("2c. the gateway as its unit starts it (Type=notify), the board on its serial link")
    [exec_start] = unit_settings(unit)["ExecStart"]
    program, *args = shlex.split(exec_start)
    assert program == "/opt/kiosk-gateway/bin/kiosk-gateway"
    assert args == ["run", "--config", "/etc/kiosk-gateway/gateway.toml"]
    notify_dir = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="sdn-"))  # a short socket path
    systemd = NotifySocket(f"{notify_dir}/notify")
    cleanup.callback(systemd.sock.close)
    # systemd's environment for a Type=notify unit; the program is what pip would put in /opt.
    environment = f"NOTIFY_SOCKET={notify_dir}/notify"
    gateway = chain._spawn("gateway", ["env", environment, KIOSK_GATEWAY, "run", "--config", str(config)])
    cleanup.callback(chain.stop, "gateway")  # first: it holds the board's cable
    ready = systemd.wait_for("READY=1", timeout=60, process=gateway)
    assert "STATUS=1 peripheral(s)" in ready, ready
    board.start()
    peripheral = wait_for_board(api_url, V1)
    assert "link_update" in peripheral["capabilities"]
    day.note(f"READY=1 from the gateway; {DEVICE_ID} says hello with {V1}")

    # 3. Readings reach the bridge. ----------------------------------------------------------------
    day.step("3. a reading from the board reaches the bridge")
    reaches_bridge(day, chain, fleet, systolic=128, firmware=V1, count=1)

    # 4. A new version, built, signed, sent over the kiosk link. -----------------------------------
    day.step(f"4. technician: build {V2}, update over the kiosk link")
    _variant(day.home, V2, lambda source: source)  # the new release's firmware sources
    day.run(*build, "--src", f"firmware-{V2}")
    v2 = bundles / f"bp_app-{V2}-esp32.zip"
    day.run(KIOSK_GATEWAY, "firmware", "verify", v2, "--public-key", public)
    out = day.run(KIOSK_GATEWAY, "firmware", "update-over-link", v2, "--device", DEVICE_ID, "--api", api_url)
    assert f"updated {DEVICE_ID} from {V1} to {V2}" in out, out
    peripheral = wait_for_board(api_url, V2)
    assert peripheral["firmware_update"]["state"] == "updated"
    out = day.run(KIOSK_GATEWAY, "peripherals", "--api", api_url)
    assert f"{V2} (update to {V2}: updated)" in out, out
    wait_for(lambda: "firmware.trial" not in top_level(board), timeout=10, what="the trial confirmed")
    assert top_level(board) == installed_files(v2.read_bytes())
    day.note(f"{DEVICE_ID} runs {V2} (trial confirmed; {V1} kept in prev/)")
    reaches_bridge(day, chain, fleet, systolic=134, firmware=V2, count=2)

    # 5. A bad version is rolled back by the board. ----------------------------------------------
    day.step(f"5. technician: a bad build ({BAD}, crashes on import) is rolled back")
    _variant(day.home, BAD, lambda source: source + f'\nraise RuntimeError("{BAD} dies on import")\n')
    day.run(*build, "--src", f"firmware-{BAD}")
    bad = bundles / f"bp_app-{BAD}-esp32.zip"
    out = day.run(KIOSK_GATEWAY, "firmware", "update-over-link", bad, "--device", DEVICE_ID, "--api", api_url,
                  expect=2)  # fmt: skip
    assert "update rolled back" in out and f"rolled back to {V2}" in " ".join(out.split()), out
    peripheral = wait_for_board(api_url, V2)
    assert peripheral["firmware_update"]["state"] == "rolled_back"
    assert board.output().count(f"{BAD} dies on import") == 2  # two trial boots, then prev/ back
    out = day.run(KIOSK_GATEWAY, "peripherals", "--api", api_url)
    assert f"{V2} (update to {BAD}: rolled back)" in out, out
    wait_for(lambda: "firmware.rolled_back" not in top_level(board), timeout=10, what="the rollback reported")
    assert top_level(board) == installed_files(v2.read_bytes())
    day.note(f"{DEVICE_ID} rolled {BAD} back and says hello with {V2}")
    reaches_bridge(day, chain, fleet, systolic=141, firmware=V2, count=3)

    # The day as the gateway and the bridge recorded it.
    journal = [json.loads(line) for line in (data / UPDATE_LOG).read_text().splitlines()]
    outcomes = [(entry["to_version"], entry["state"]) for entry in journal]
    assert outcomes == [(V2, "updated"), (BAD, "rolled_back")]
    [record] = fleet()
    assert (record["last_seq"], record["missing"], record["refusals_24h"]) == (3, 0, 0)
    assert "Traceback" not in chain.log("gateway") and "Traceback" not in chain.log("bridge")
    day.note("gateway update journal: updated, rolled_back; bridge: 3 readings, no gap, no refusal")


def wait_for_board(api_url: str, version: str, timeout: float = 30) -> dict[str, Any]:
    """The board's entry in the gateway's status once its hello says `version`."""

    def says_hello() -> dict[str, Any] | None:
        status = httpx.get(f"{api_url}/api/status", timeout=5).raise_for_status().json()
        [peripheral] = status["peripherals"]
        return peripheral if (peripheral["device"] or {}).get("firmware") == version else None

    return wait_for(says_hello, timeout=timeout, what=f"the board's hello with firmware {version}")


def reaches_bridge(day: Day, chain: Chain, fleet: Any, *, systolic: int, firmware: str, count: int) -> None:
    """Measure on the cuff; the bridge then holds `count` readings, the last from `firmware`, and its
    FHIR record the BP panel with this systolic value."""
    chain.cuff.measure(BloodPressure(systolic=systolic, diastolic=82, pulse=71))

    def arrived() -> dict[str, Any] | None:
        [record] = fleet()
        devices = record["devices"]
        return record if devices and devices[0]["readings"] == count else None

    record = wait_for(arrived, timeout=45, what=f"reading {count} at the bridge")
    [device] = record["devices"]
    assert (device["device_id"], device["model"], device["firmware"]) == (DEVICE_ID, "KX-BP100", firmware)
    seq = record["last_seq"]
    reading = f"{GATEWAY_ID}/{seq}/{BP_PANEL}"  # the panel's identifier, as a doctor's system searches it
    [found] = chain.bridge_get("/fhir/Observation", identifier=f"{READING_SYSTEM}|{reading}")["entry"]
    panel = found["resource"]
    assert panel["identifier"] == [{"system": READING_SYSTEM, "value": reading}]
    values = {c["code"]["coding"][0]["code"]: c["valueQuantity"]["value"] for c in panel["component"]}
    assert values[SYSTOLIC] == systolic
    day.note(f"bridge: reading {GATEWAY_ID}/{seq} from {DEVICE_ID} firmware {firmware}, "
             f"FHIR Observation {BP_PANEL} systolic {systolic}")  # fmt: skip
