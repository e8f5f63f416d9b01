"""Deployment on a gateway: the systemd units (checked by systemd-analyze), sd_notify on a real
unix datagram socket (alone and from the running gateway), install.sh staged into a temporary
root, and the example configuration."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.config import load_config
from gateway.keys import create_keys
from gateway.profiles import load_profiles
from gateway.systemd_notify import Notifier, watchdog_forever, watchdog_interval_s
from simulators.chain import free_port

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
INSTALL = DEPLOY / "install.sh"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")

needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (Debian package systemd)"
)


# systemd-analyze verify ---------------------------------------------------------------------
def relocate(unit: Path, prefix: Path, out_dir: Path, *, make_binaries: bool = True) -> Path:
    """A copy of `unit` whose Exec binaries (/opt/kiosk-gateway/bin/..., /usr/bin/cage) are made
    under `prefix`: verify insists that they exist, and this machine has none of them."""
    text = unit.read_text()
    for binary in set(re.findall(r"^Exec\w+=[-@:+!]*(/\S+)", text, re.MULTILINE)):
        fake = Path(f"{prefix}{binary}")
        text = re.sub(rf"^(Exec\w+=[-@:+!]*){re.escape(binary)}(?=\s)", rf"\g<1>{fake}", text, flags=re.M)
        if make_binaries:
            fake.parent.mkdir(parents=True, exist_ok=True)
            fake.write_text("#!/bin/sh\nexit 0\n")
            fake.chmod(0o755)
    out_dir.mkdir(parents=True, exist_ok=True)
    copy = out_dir / unit.name
    copy.write_text(text)
    return copy


def verify_problems(unit: Path) -> list[str]:
    """What `systemd-analyze verify` says about `unit`. It exits 0 on an unknown directive (it only
    warns, "Unknown key ..., ignoring"), so every line naming the unit counts as a problem too."""
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = [line for line in (result.stdout + result.stderr).splitlines() if unit.name in line]
    if result.returncode != 0:
        lines.append(f"exit status {result.returncode}: {result.stderr.strip()}")
    return lines


def test_units_are_there() -> None:
    assert {unit.name for unit in UNITS} >= {
        "kiosk-gateway.service",
        "kiosk-ui.service",
        "kiosk-bridge.service",
    }


@needs_systemd_analyze
@pytest.mark.parametrize("unit", UNITS, ids=lambda unit: unit.name)
def test_unit_passes_systemd_analyze_verify(unit: Path, tmp_path: Path) -> None:
    copy = relocate(unit, tmp_path / "root", tmp_path / "units")
    assert verify_problems(copy) == []


@needs_systemd_analyze
def test_verify_fails_on_a_mistyped_directive(tmp_path: Path) -> None:
    unit = tmp_path / "src" / "kiosk-gateway.service"
    unit.parent.mkdir()
    text = (DEPLOY / "systemd" / "kiosk-gateway.service").read_text()
    assert "\nRestart=on-failure\n" in text
    unit.write_text(text.replace("\nRestart=on-failure\n", "\nRestrat=on-failure\n"))
    problems = verify_problems(relocate(unit, tmp_path / "root", tmp_path / "units"))
    assert any("Restrat" in line for line in problems), problems


@needs_systemd_analyze
def test_verify_fails_when_the_binary_is_missing(tmp_path: Path) -> None:
    unit = DEPLOY / "systemd" / "kiosk-gateway.service"
    problems = verify_problems(relocate(unit, tmp_path / "root", tmp_path / "units", make_binaries=False))
    assert any("kiosk-gateway" in line and "not executable" in line for line in problems), problems


def unit_settings(unit: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in unit.read_text().replace("\\\n", " ").splitlines():  # a trailing \ continues a line
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_gateway_unit_runs_the_installed_gateway_under_systemd_supervision() -> None:
    """The unit and install.sh must agree on where things are, and the unit must ask for what
    gateway/systemd_notify.py provides."""
    settings = unit_settings(DEPLOY / "systemd" / "kiosk-gateway.service")
    assert settings["ExecStart"] == [
        "/opt/kiosk-gateway/bin/kiosk-gateway run --config /etc/kiosk-gateway/gateway.toml"
    ]
    assert settings["Type"] == ["notify"]
    assert int(settings["WatchdogSec"][0]) > 0
    assert settings["Restart"] == ["on-failure"]
    assert settings["User"] == ["kiosk"]
    assert settings["StateDirectory"] == ["kiosk-gateway"]
    assert settings["ReadWritePaths"] == ["/var/lib/kiosk-gateway"]
    assert "dialout" in settings["SupplementaryGroups"][0].split()
    for hardening in ("NoNewPrivileges", "PrivateTmp"):
        assert settings[hardening] == ["yes"]
    assert settings["ProtectSystem"] == ["strict"]
    # Serial boards are device nodes: nothing may restrict the gateway's devices.
    for device_limit in ("PrivateDevices", "DevicePolicy", "DeviceAllow", "ProtectClock"):
        assert device_limit not in settings
    script = INSTALL.read_text()
    assert "PREFIX=/opt/kiosk-gateway" in script
    assert "CONF_DIR=/etc/kiosk-gateway" in script
    assert "DATA_DIR=/var/lib/kiosk-gateway" in script


# sd_notify ----------------------------------------------------------------------------------
class NotifySocket:
    """The service manager's end: a bound unix datagram socket that collects what arrives."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.received: list[tuple[float, str]] = []

    def receive(self, timeout: float) -> list[str]:
        """Everything that arrives within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        got = []
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            self.received.append((time.monotonic(), message))
            got.append(message)
        return got

    def wait_for(self, line: str, timeout: float, process: subprocess.Popen[bytes] | None = None) -> str:
        """The message holding `line`; fails at once if `process` (the sender) has ended."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise AssertionError(f"the process ended (status {process.returncode}) before {line}")
            got = self.receive(0.2)
            if any(line in message.splitlines() for message in got):
                return next(message for message in got if line in message.splitlines())
        raise AssertionError(f"no {line} within {timeout} s; got {[m for _, m in self.received]}")


@pytest.fixture
def notify_socket() -> Iterator[tuple[str, NotifySocket]]:
    # A short directory: a unix socket path must fit in 108 bytes.
    with tempfile.TemporaryDirectory(prefix="sdn-") as directory:
        path = f"{directory}/notify"
        sink = NotifySocket(path)
        try:
            yield path, sink
        finally:
            sink.sock.close()


def test_notifier_sends_ready_status_watchdog_and_stopping(notify_socket: tuple[str, NotifySocket]) -> None:
    path, sink = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("2 peripheral(s)")
    assert notifier.watchdog()
    assert notifier.status("syncing")
    assert notifier.stopping()
    assert sink.receive(0.5) == [
        "READY=1\nSTATUS=2 peripheral(s)",
        "WATCHDOG=1",
        "STATUS=syncing",
        "STOPPING=1",
    ]


def test_notifier_reaches_an_abstract_socket() -> None:
    name = f"kiosk-notify-test-{os.getpid()}-{time.monotonic_ns()}"
    sink = NotifySocket(b"\0" + name.encode())
    try:
        assert Notifier({"NOTIFY_SOCKET": f"@{name}"}).ready()
        assert sink.receive(0.5) == ["READY=1"]
    finally:
        sink.sock.close()


async def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog()
    assert not notifier.stopping()
    # No supervisor, no watchdog: it returns at once instead of pinging nobody for ever.
    await asyncio.wait_for(watchdog_forever(lambda: True, notifier=notifier, interval_s=0.01), timeout=1)


def test_a_vanished_supervisor_is_logged_not_raised(tmp_path: Path) -> None:
    assert not Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")}).ready()


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    pid = str(os.getpid())
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid}) == 15.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None  # not ours
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "soon"}) is None


async def test_watchdog_pings_at_the_interval_only_while_healthy(
    notify_socket: tuple[str, NotifySocket],
) -> None:
    path, sink = notify_socket
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}  # WatchdogSec=0.2 s: ping every 0.1 s
    interval = watchdog_interval_s(env)
    assert interval == pytest.approx(0.1)
    healthy = True
    task = asyncio.create_task(watchdog_forever(lambda: healthy, notifier=Notifier(env), interval_s=interval))
    try:
        pings = await asyncio.to_thread(sink.receive, 0.75)
        assert pings.count("WATCHDOG=1") >= 5, pings
        times = [at for at, message in sink.received if message == "WATCHDOG=1"]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(0.05 < gap < 0.3 for gap in gaps), gaps

        healthy = False
        await asyncio.to_thread(sink.receive, 0.15)  # a ping already under way may still land
        sick = await asyncio.to_thread(sink.receive, 0.6)
        assert "WATCHDOG=1" not in sick, sick  # systemd kills the service after WatchdogSec

        healthy = True
        again = await asyncio.to_thread(sink.receive, 0.5)
        assert again.count("WATCHDOG=1") >= 3, again
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    statuses = [message for _, message in sink.received if message.startswith("STATUS=")]
    assert statuses and "health check failed" in statuses[0]


def test_running_gateway_says_ready_pings_and_says_stopping(
    notify_socket: tuple[str, NotifySocket], tmp_path: Path
) -> None:
    """`kiosk-gateway run` as systemd starts it (Type=notify, WatchdogSec=1): READY=1 once its API
    answers, WATCHDOG=1 every half second, STOPPING=1 and exit status 0 on SIGTERM."""
    path, sink = notify_socket
    data_dir = tmp_path / "data"
    create_keys(data_dir)
    api_port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'gateway_id = "gw-notify"\ndata_dir = "{data_dir}"\nprofiles_dir = "{REPO / "device_profiles"}"\n'
        f"[mqtt]\nport = {free_port()}\n"  # no broker: the gateway runs offline, as at a new site
        f"[api]\nport = {api_port}\n"
    )
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"}
    log = (tmp_path / "gateway.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "-c", str(config)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        try:
            ready = sink.wait_for("READY=1", timeout=60, process=process)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{(tmp_path / 'gateway.log').read_text()[-3000:]}") from None
        assert "STATUS=0 peripheral(s)" in ready
        assert httpx.get(f"http://127.0.0.1:{api_port}/api/status", timeout=5).status_code == 200
        pings = sink.receive(1.8)
        assert pings.count("WATCHDOG=1") >= 2, pings
        process.send_signal(signal.SIGTERM)
        sink.wait_for("STOPPING=1", timeout=15)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
    assert "stopped" in (tmp_path / "gateway.log").read_text()


# install.sh ---------------------------------------------------------------------------------
SYSTEM_COMMANDS = ("systemctl", "useradd", "groupadd", "usermod", "chown", "runuser", "apt-get", "python3")


@pytest.fixture
def shims(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A PATH on which every command that would change this machine only notes its call."""
    bin_dir, calls = tmp_path / "shims", tmp_path / "calls"
    bin_dir.mkdir()
    calls.touch()
    for name in SYSTEM_COMMANDS:
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\n')
        shim.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, calls


def install(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALL), "--root", str(root), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_install_with_root_stages_files_and_runs_nothing_on_this_machine(
    tmp_path: Path, shims: tuple[dict[str, str], Path]
) -> None:
    env, calls = shims
    root = tmp_path / "root"
    first = install(root, env, "--gateway-id", "gw-village-07")
    assert first.returncode == 0, first.stderr

    unit = root / "etc/systemd/system/kiosk-gateway.service"
    assert unit.read_text() == (DEPLOY / "systemd/kiosk-gateway.service").read_text()
    config_path = root / "etc/kiosk-gateway/gateway.toml"
    config = load_config(config_path)
    assert config.gateway_id == "gw-village-07"
    assert config.data_dir == Path("/var/lib/kiosk-gateway")
    assert config.profiles_dir == Path("/opt/kiosk-gateway/device_profiles")
    assert config_path.stat().st_mode & 0o777 == 0o640
    # The profiles the configuration names are installed there, and load.
    assert load_profiles(root / str(config.profiles_dir).lstrip("/"))
    assert (root / "var/lib/kiosk-gateway").is_dir()
    assert (root / "var/lib/kiosk-gateway").stat().st_mode & 0o777 == 0o700

    assert not (root / "etc/systemd/system/kiosk-ui.service").exists()  # only with --kiosk-ui

    assert calls.read_text() == ""  # with --root: printed, not run
    for planned in (
        "would run: useradd --system --user-group --groups dialout,bluetooth",
        "would run: systemctl daemon-reload",
        "would run: systemctl enable --now kiosk-gateway.service",
        "kiosk-gateway init --data-dir /var/lib/kiosk-gateway",
    ):
        assert planned in first.stdout, first.stdout


def test_install_twice_keeps_the_configuration_and_changes_nothing_else(
    tmp_path: Path, shims: tuple[dict[str, str], Path]
) -> None:
    env, calls = shims
    root = tmp_path / "root"
    assert install(root, env, "--gateway-id", "gw-village-07").returncode == 0
    config_path = root / "etc/kiosk-gateway/gateway.toml"
    edited = config_path.read_text().replace('path = "/dev/ttyUSB0"', 'path = "/dev/ttyAMA0"')
    config_path.write_text(edited)
    # A profile added on the gateway itself stays through an upgrade.
    local_profile = root / "opt/kiosk-gateway/device_profiles/local-model.toml"
    local_profile.write_text("# added on this gateway\n")
    before = tree(root)

    second = install(root, env, "--gateway-id", "gw-other")
    assert second.returncode == 0, second.stderr
    assert "kept: " in second.stdout
    assert tree(root) == before
    assert load_config(config_path).gateway_id == "gw-village-07"
    assert load_config(config_path).serial[0].path == "/dev/ttyAMA0"
    assert calls.read_text() == ""


def test_install_with_kiosk_ui_adds_the_screen(tmp_path: Path, shims: tuple[dict[str, str], Path]) -> None:
    env, calls = shims
    root = tmp_path / "root"
    result = install(root, env, "--gateway-id", "gw-1", "--kiosk-ui")
    assert result.returncode == 0, result.stderr
    unit = root / "etc/systemd/system/kiosk-ui.service"
    assert unit.read_text() == (DEPLOY / "systemd/kiosk-ui.service").read_text()
    for planned in (
        "would run: apt-get install -y cage chromium",
        "would run: useradd --system --user-group --home-dir /var/lib/kiosk-ui",
        "would run: systemctl enable --now kiosk-ui.service",
    ):
        assert planned in result.stdout, result.stdout
    assert result.stdout.count("would run: apt-get update") == 1
    assert calls.read_text() == ""


def test_kiosk_screen_opens_the_gateways_page_after_the_gateway() -> None:
    settings = unit_settings(DEPLOY / "systemd" / "kiosk-ui.service")
    assert "kiosk-gateway.service" in settings["After"][0].split()
    assert settings["User"] == ["kiosk-ui"]  # not the gateway's user: no keys, no database
    api = load_config(DEPLOY / "gateway.example.toml").api
    assert f"http://{api.host}:{api.port}/" in settings["ExecStart"][0]


def test_install_dry_run_changes_nothing(tmp_path: Path, shims: tuple[dict[str, str], Path]) -> None:
    env, calls = shims
    root = tmp_path / "root"
    result = install(root, env, "--gateway-id", "gw-1", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert not root.exists()
    assert "would write: " in result.stdout and "Dry run: nothing was changed." in result.stdout
    assert calls.read_text() == ""


def test_install_refuses_a_bad_gateway_id_before_doing_anything(
    tmp_path: Path, shims: tuple[dict[str, str], Path]
) -> None:
    env, calls = shims
    result = install(tmp_path / "root", env, "--gateway-id", "gw 1/../x")
    assert result.returncode != 0
    assert "gateway id" in result.stderr
    assert not (tmp_path / "root").exists()
    assert calls.read_text() == ""


def test_install_script_is_clean_shell() -> None:
    assert subprocess.run(["bash", "-n", str(INSTALL)], capture_output=True).returncode == 0
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (Debian package shellcheck); bash -n passed")
    result = subprocess.run([shellcheck, str(INSTALL)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_wheel_carries_what_the_installed_gateway_loads(tmp_path: Path) -> None:
    """install.sh pip-installs the package into /opt/kiosk-gateway, away from the checkout: every
    file the gateway reads at run time (its page, styles, scripts: anything under gateway/ that is
    not Python) must be in the wheel, or the installed gateway does not start. Device profiles are
    installed by install.sh itself."""
    source = tmp_path / "src"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(".*", "__pycache__", "*.pyc", "build", "*.egg-info"),
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").glob("kiosk_edge-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert "kiosk-gateway = gateway.__main__:main" in entry_points  # `run` loads only the service
    assert {"gateway/__main__.py", "gateway/run_command.py", "gateway/cli.py"} <= names
    data_files = {
        path.relative_to(REPO).as_posix()
        for path in (REPO / "gateway").rglob("*")
        if path.is_file() and path.suffix not in {".py", ".pyc"} and "__pycache__" not in path.parts
    }
    assert data_files - names == set(), "add them to [tool.setuptools.package-data] in pyproject.toml"


# the example configuration ------------------------------------------------------------------
def test_example_config_loads(tmp_path: Path) -> None:
    example = DEPLOY / "gateway.example.toml"
    config = load_config(example)
    assert config.data_dir == Path("/var/lib/kiosk-gateway")  # the unit's StateDirectory
    assert config.serial and config.mqtt.tls is None
    # The commented TLS block is valid once the operator uncomments it.
    text = example.read_text()
    for key in ("[mqtt.tls]", "ca_file", "cert_file", "key_file"):
        text = text.replace(f"# {key}", key)
    with_tls = tmp_path / "gateway.toml"
    with_tls.write_text(text)
    tls = load_config(with_tls).mqtt.tls
    assert tls is not None and tls.key_file == Path("/var/lib/kiosk-gateway/mqtt-tls.key")
