"""Shared fixtures: a real Mosquitto broker on a free loopback port; every FHIR resource validated."""

from __future__ import annotations

import getpass
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_bridge import fhir_map
from simulators.chain import free_port, port_open, wait_for


@pytest.fixture(autouse=True)
def validate_every_fhir_resource(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process tests validate every resource the bridge maps with fhir.resources, not once per
    shape as the running bridge does (tests/unit/test_fhir_validation_cache.py covers that)."""
    monkeypatch.setattr(fhir_map, "VALIDATE_EVERY_RESOURCE", True)


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if not found:
        pytest.fail("mosquitto is not installed: run ./dev test, which installs it")
    return found


class Mosquitto:
    """A Mosquitto process we can stop and start again on the same port (a broker restart).

    With `tls` (CA, broker certificate, broker key) it listens for TLS only and requires a client
    certificate from that CA, whose common name becomes the client's user name, as in production.
    """

    def __init__(
        self, workdir: Path, tls: tuple[Path, Path, Path] | None = None, acl_file: Path | None = None
    ) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.config = workdir / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1"]
        if tls is None:
            lines.append("allow_anonymous true")
        else:
            ca, cert, key = tls
            lines += [
                f"cafile {ca}",
                f"certfile {cert}",
                f"keyfile {key}",
                "require_certificate true",
                "use_identity_as_username true",
                "allow_anonymous false",
                f"user {getpass.getuser()}",  # read the 0600 key as its owner, not as "mosquitto"
            ]
            if acl_file is not None:
                lines.append(f"acl_file {acl_file}")
        lines += [
            "persistence false",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        self.config.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.workdir / "mosquitto.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen([mosquitto_binary(), "-c", str(self.config)], stdout=log, stderr=log)
        log.close()
        wait_for(lambda: port_open(self.port), timeout=10, what="mosquitto")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def stopped_mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker that is configured but not running yet: the 4G link is down."""
    broker = Mosquitto(tmp_path)
    yield broker
    broker.stop()


def run_on_micropython(script: str, *args: str, timeout: float = 60) -> str:
    """Run tests/micropython/<script> on the unix port; fail with its output unless all passed."""
    import subprocess

    from simulators.chain import REPO_ROOT, micropython_binary

    result = subprocess.run(
        [micropython_binary(), str(REPO_ROOT / "tests" / "micropython" / script), str(REPO_ROOT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 failed" in result.stdout, result.stdout
    return result.stdout
