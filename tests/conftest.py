"""Shared fixtures: a real Mosquitto broker on a free loopback port; a real PostgreSQL server (Debian's
package) with a fresh database per test; every FHIR resource validated."""

from __future__ import annotations

import getpass
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
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
    certificate from that CA, whose common name becomes the client's user name, as in production;
    with `crlfile` too, it refuses the certificates that revocation list names.
    """

    def __init__(
        self,
        workdir: Path,
        tls: tuple[Path, Path, Path] | None = None,
        acl_file: Path | None = None,
        crlfile: Path | None = None,
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
            if crlfile is not None:
                lines.append(f"crlfile {crlfile}")
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


class PostgresServer:
    """A throw-away PostgreSQL cluster from Debian's `postgresql` package: `initdb` into a temporary
    directory, `pg_ctl start` on a free loopback port (its unix socket in that directory too),
    trust authentication for the one role `kiosk`. PostgreSQL refuses to run as root, so as root
    the cluster belongs to the package's `postgres` system user."""

    ROLE = "kiosk"

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="kiosk-pg-"))
        self.data = self.workdir / "data"
        self.run_as = "postgres" if os.geteuid() == 0 else None
        if self.run_as is not None:
            owner = pwd.getpwnam(self.run_as)
            os.chown(self.workdir, owner.pw_uid, owner.pw_gid)
        self._names = itertools.count(1)

    def _run(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.run_as is not None:
            command = ["runuser", "-u", self.run_as, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=self.workdir)
        if result.returncode != 0:
            log = self.workdir / "postgres.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:1])} failed: {result.stdout}{result.stderr}{tail}")

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", self.ROLE, "--auth=trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")  # fmt: skip
        options = (
            f"-p {self.port} -k {self.workdir} -h 127.0.0.1"
            " -c fsync=off -c full_page_writes=off"  # a test cluster: speed over crash safety
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.workdir / "postgres.log"),
                  "-o", options, "-w", "-t", "60", "start")  # fmt: skip

    def url(self, dbname: str) -> str:
        return f"postgresql://{self.ROLE}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A new, empty database; its URL."""
        import psycopg

        name = f"bridge_{next(self._names)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)


def postgres_bindir() -> Path | None:
    """The newest installed server's binaries (Debian: /usr/lib/postgresql/<major>/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries are not installed (./dev test installs Debian's postgresql)")
    server = PostgresServer(bindir)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the session's PostgreSQL server."""
    return postgres_server.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def bridge_db(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """The bridge's store on each back-end: a SQLite file path, then a PostgreSQL URL."""
    if request.param == "sqlite":
        return tmp_path / "bridge.db"
    return request.getfixturevalue("postgres_url")


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
