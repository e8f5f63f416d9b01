"""The production deployment of several bridge workers: TLS client certificates, the generated
broker rules, one PostgreSQL.

Everything is set up with the commands an operator runs (`kiosk-bridge ca init`, `ca issue`,
`ca sign`, `enrol`, `acl --bridge-user …`; `kiosk-gateway init`, `tls-request`). Mosquitto
listens for TLS only, requires a certificate from the community's CA, takes its common name as
the user name and applies the generated `acl_file`. Two `kiosk-bridge run --worker …` processes
connect with their own certificates; four gateways (their real outbox and sync engine, in this
process) send their readings over TLS. Every reading is stored exactly once and every gateway
holds all its readings acked.

Then the refusals: a batch published with one gateway's certificate on another gateway's topic
never reaches the bridge (the same bytes under the right certificate are stored, so it would have
been); a client without a certificate cannot connect; and a third worker, whose certificate the
rules do not name, joins the shared subscription (granted) and receives nothing, while the
broker still gives it its turn: the messages of those turns are lost to the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest
import typer
from paho.mqtt.enums import CallbackAPIVersion
from typer.testing import CliRunner

from contract.wire import ack_topic, decode_ack, encode_batch, up_topic
from gateway.config import MqttConfig, SyncConfig, TlsConfig
from gateway.keys import PUBLIC_KEY_FILE, TLS_CERT_FILE, TLS_KEY_FILE, TLS_REQUEST_FILE, GatewayKeys
from gateway.store import Outbox
from gateway.sync import MqttSync
from simulators.chain import free_port
from tests.component.bridge_readings import bp_reading
from tests.component.outbox_readings import bp_new_reading as reading
from tests.conftest import Mosquitto
from tests.e2e.test_bridge_workers import stop_gateways

pytestmark = pytest.mark.mosquitto

GATEWAYS = ("gw-tls-a", "gw-tls-b", "gw-tls-c", "gw-tls-d")
WORKERS = ("w1", "w2")  # certificates bridge-w1, bridge-w2, named in the rules
UNNAMED = "w9"  # certificate bridge-w9: a valid certificate the rules do not name
PER_GATEWAY = 300
BRIDGE = Path(sys.executable).with_name("kiosk-bridge")


def _cli(app: typer.Typer, *args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"{args[:2]}: {result.output}"
    return result.output


@dataclass
class Site:
    """What the operator made: the CA, the broker's and workers' certificates, the gateways'
    keys and certificates, the registry in PostgreSQL and the broker's rules."""

    ca: Path
    broker: tuple[Path, Path, Path]  # CA, certificate, key
    bridge_dir: Path  # bridge-<worker>.crt/.key
    gateway_dirs: dict[str, Path]
    acl: Path
    ack_key: Path  # the one key every worker signs its acks with
    ack_public: Path  # its public half, which every gateway is given

    def worker_argv(self, name: str) -> list[str]:
        """The options a worker named `name` is run with: its certificate and the ack key."""
        return [
            "--mqtt-ca", str(self.ca),
            "--mqtt-cert", str(self.bridge_dir / f"bridge-{name}.crt"),
            "--mqtt-key", str(self.bridge_dir / f"bridge-{name}.key"),
            "--ack-key", str(self.ack_key),
        ]  # fmt: skip

    def gateway_tls(self, gateway_id: str) -> TlsConfig:
        data = self.gateway_dirs[gateway_id]
        return TlsConfig(ca_file=self.ca, cert_file=data / TLS_CERT_FILE, key_file=data / TLS_KEY_FILE)


def set_up(workdir: Path, db_url: str) -> Site:
    from cloud_bridge.cli import app as bridge
    from gateway.cli import app as gateway

    ca_dir = str(workdir / "ca")
    _cli(bridge, "ca", "init", "--ca-dir", ca_dir)
    ack_key, ack_public = workdir / "bridge-ack.key", workdir / "bridge-ack.pub.pem"
    _cli(bridge, "ack-key", "init", "--path", str(ack_key))
    ack_public.write_text(_cli(bridge, "ack-key", "show", "--path", str(ack_key)))
    _cli(bridge, "ca", "issue", "broker", "--server-name", "127.0.0.1", "--out-dir", str(workdir / "broker"),
         "--ca-dir", ca_dir)  # fmt: skip
    for worker in (*WORKERS, UNNAMED):
        issued = workdir / "bridge"
        _cli(bridge, "ca", "issue", f"bridge-{worker}", "--out-dir", str(issued), "--ca-dir", ca_dir)
    gateway_dirs = {}
    for gateway_id in GATEWAYS:
        data = gateway_dirs[gateway_id] = workdir / gateway_id
        _cli(gateway, "init", "--data-dir", str(data))
        _cli(gateway, "tls-request", gateway_id, "--data-dir", str(data))
        _cli(bridge, "ca", "sign", gateway_id, "--request", str(data / TLS_REQUEST_FILE),
             "--out", str(data / TLS_CERT_FILE), "--ca-dir", ca_dir)  # fmt: skip
        _cli(bridge, "enrol", gateway_id, "--public-key", str(data / PUBLIC_KEY_FILE), "--db", db_url)
    acl = workdir / "mosquitto.acl"
    users = [arg for worker in WORKERS for arg in ("--bridge-user", f"bridge-{worker}")]
    written = _cli(bridge, "acl", "--db", db_url, "--out", str(acl), *users)
    assert f"rules for {len(GATEWAYS)} gateway(s) and bridge bridge-w1, bridge-w2" in written
    ca = workdir / "ca" / "ca.crt"
    return Site(
        ca, (ca, workdir / "broker" / "broker.crt", workdir / "broker" / "broker.key"),
        workdir / "bridge", gateway_dirs, acl, ack_key, ack_public,
    )  # fmt: skip


class TlsWorker:
    """`kiosk-bridge run --worker NAME` over TLS with the certificate bridge-NAME."""

    def __init__(self, name: str, db_url: str, broker: Mosquitto, site: Site, workdir: Path) -> None:
        self.name = name
        self.http_port = free_port()
        self.log = workdir / f"bridge-{name}.log"
        self.argv = [
            str(BRIDGE), "run", "--db", db_url, "--mqtt-port", str(broker.port),
            "--http-port", str(self.http_port), "--worker", name, *site.worker_argv(name),
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([*self.argv, *extra], stdout=log, stderr=log)

    def wait_subscribed(self) -> None:
        deadline = time.monotonic() + 30
        while b"subscribed to $share/bridge/kiosk/+/up" not in self.log.read_bytes():
            assert self.process is not None and self.process.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"worker {self.name} did not subscribe over TLS"
            time.sleep(0.05)

    def messages(self) -> int:
        """MQTT messages this worker received (its /metrics; open, no token)."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5) as answer:
            text = answer.read().decode("utf-8")
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "kiosk_bridge_messages_total":
                    return int(sample.value)
        return 0

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


class CertClient:
    """A paho client under a certificate (the gateway's, when it publishes by hand)."""

    def __init__(self, broker: Mosquitto, ca: Path, cert: Path, key: Path, client_id: str) -> None:
        self.received: list[bytes] = []
        self.subscribed = False
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311
        )
        self.client.tls_set(
            ca_certs=str(ca), certfile=str(cert), keyfile=str(key), tls_version=ssl.PROTOCOL_TLS_CLIENT
        )
        self.client.on_message = lambda c, u, m: self.received.append(bytes(m.payload))
        self.client.on_subscribe = lambda *args: setattr(self, "subscribed", True)
        self.client.connect("127.0.0.1", broker.port, keepalive=10)
        self.client.loop_start()

    async def subscribe(self, topic_filter: str) -> None:
        self.client.subscribe(topic_filter, qos=1)
        deadline = time.monotonic() + 5
        while not self.subscribed:
            assert time.monotonic() < deadline, f"no SUBACK for {topic_filter}"
            await asyncio.sleep(0.02)

    async def settle(self, expected: int) -> None:
        """Wait for `expected` messages (5 s at most), then a little longer: anything more the
        broker would deliver is here by then."""
        deadline = time.monotonic() + 5
        while len(self.received) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connects(broker: Mosquitto, ca: Path, cert: Path | None = None, key: Path | None = None) -> bool:
    """True when the broker answers CONNECT with success; False when TLS or the broker refuses."""
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    outcome: list[bool] = []
    client.on_connect = lambda c, u, f, reason, p: outcome.append(not reason.is_failure)
    client.on_disconnect = lambda *args: outcome.append(False)
    try:
        client.tls_set(
            ca_certs=str(ca),
            certfile=None if cert is None else str(cert),
            keyfile=None if key is None else str(key),
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
        client.connect("127.0.0.1", broker.port, keepalive=5)
        deadline = time.monotonic() + 5
        while not outcome and time.monotonic() < deadline:
            client.loop(timeout=0.1)
    except (ssl.SSLError, OSError):
        return False
    finally:
        with contextlib.suppress(Exception):
            client.disconnect()
    return bool(outcome) and outcome[0]


def head(db_url: str, gateway_id: str) -> tuple[bytes, int, int]:
    """The bridge's chain head for a gateway: (last hash, last batch number, last seq)."""
    with psycopg.connect(db_url, autocommit=True) as db:
        row = db.execute(
            "SELECT last_hash, last_batch_no, last_seq FROM gateways WHERE gateway_id = %s", (gateway_id,)
        ).fetchone()
    assert row is not None
    return bytes(row[0]), int(row[1]), int(row[2])


def readings_of(db_url: str, gateway_id: str) -> list[int]:
    with psycopg.connect(db_url, autocommit=True) as db:
        return [seq for (seq,) in db.execute(
            "SELECT seq FROM readings WHERE gateway_id = %s ORDER BY seq", (gateway_id,)
        )]  # fmt: skip


async def send_until_acked(
    site: Site,
    broker: Mosquitto,
    per_gateway: int,
    outboxes: dict[str, Outbox],
    tasks: list[asyncio.Task[None]],
) -> float:
    """Every gateway's real outbox and sync engine over TLS: `per_gateway` readings each, added 25
    at a time, until all are acked. Returns the seconds that took. What it opens and starts goes
    into `outboxes` and `tasks`, for the caller to stop and close however the test ends."""
    syncs: dict[str, MqttSync] = {}
    for gateway_id in GATEWAYS:
        outboxes[gateway_id] = await Outbox.open(
            site.gateway_dirs[gateway_id] / "gateway.db",
            gateway_id,
            GatewayKeys.load(site.gateway_dirs[gateway_id]),
        )
        syncs[gateway_id] = MqttSync(
            gateway_id,
            outboxes[gateway_id],
            MqttConfig(port=broker.port, tls=site.gateway_tls(gateway_id), keepalive_s=5,
                       reconnect_min_s=0.5, reconnect_max_s=2),
            SyncConfig(batch_min_readings=10, batch_max_readings=30, ack_timeout_s=2.0,
                       idle_poll_s=0.2, time_probe_wait_s=0.5, bridge_ack_key_file=site.ack_public),
        )  # fmt: skip
        tasks.append(asyncio.create_task(syncs[gateway_id].run()))

    async def produce(gateway_id: str) -> None:
        for first in range(1, per_gateway + 1, 25):
            await outboxes[gateway_id].add_readings([reading(n) for n in range(first, first + 25)])
            syncs[gateway_id].wake()
            await asyncio.sleep(0.05)

    started = time.monotonic()
    await asyncio.gather(*(produce(gateway_id) for gateway_id in GATEWAYS))
    while True:
        synced = {g: (await outbox.status()).synced for g, outbox in outboxes.items()}
        if all(count == per_gateway for count in synced.values()):
            return time.monotonic() - started
        assert time.monotonic() - started < 30, f"not all acked in time: {synced}"
        await asyncio.sleep(0.2)


async def test_workers_over_tls_with_the_generated_rules(tmp_path: Path, postgres_url: str) -> None:
    site = set_up(tmp_path, postgres_url)
    broker = Mosquitto(tmp_path, tls=site.broker, acl_file=site.acl)
    broker.start()
    workers = [TlsWorker(name, postgres_url, broker, site, tmp_path) for name in WORKERS]
    unnamed = TlsWorker(UNNAMED, postgres_url, broker, site, tmp_path)
    outboxes: dict[str, Outbox] = {}
    tasks: list[asyncio.Task[None]] = []
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            await asyncio.to_thread(worker.wait_subscribed)

        elapsed = await send_until_acked(site, broker, PER_GATEWAY, outboxes, tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        tasks.clear()
        received = {worker.name: worker.messages() for worker in workers}
        assert all(received.values()), f"both workers take batches over TLS: {received}"

        # Every reading stored once, every gateway's chain at the bridge ending where the gateway
        # holds its newest batch acked.
        with psycopg.connect(postgres_url, autocommit=True) as db:
            rows = db.execute("SELECT gateway_id, seq FROM readings").fetchall()
            refusals = [reason for (reason,) in db.execute("SELECT reason FROM refusals")]
        expected = {(g, seq) for g in GATEWAYS for seq in range(1, PER_GATEWAY + 1)}
        assert len(rows) == len(expected) and set(rows) == expected
        for gateway_id in GATEWAYS:
            _, head_no, last_seq = head(postgres_url, gateway_id)
            assert last_seq == PER_GATEWAY
            acked = await _last_acked_batch(site.gateway_dirs[gateway_id] / "gateway.db")
            assert head_no == acked, gateway_id
        assert all(reason.startswith("out of chain order") for reason in refusals), refusals[:5]

        # Refusal: gw-tls-a's certificate publishes a batch for gw-tls-b, signed with gw-tls-b's
        # key and chained to its head, so the bridge would store it if it ever got it.
        victim, forger = GATEWAYS[1], GATEWAYS[0]
        last_hash, head_no, last_seq = head(postgres_url, victim)
        batch, _ = encode_batch(
            [bp_reading(victim, seq) for seq in range(last_seq + 1, last_seq + 4)],
            prev_hash=last_hash,
            signing_key=GatewayKeys.load(site.gateway_dirs[victim]).signing,
            number=head_no + 1,
        )
        before = sum(worker.messages() for worker in workers)
        forger_tls = site.gateway_tls(forger)
        forging = CertClient(broker, site.ca, forger_tls.cert_file, forger_tls.key_file, "forger")
        try:
            forging.client.publish(up_topic(victim), batch, qos=1).wait_for_publish(5)
            await asyncio.sleep(1.5)
        finally:
            forging.close()
        assert readings_of(postgres_url, victim) == list(range(1, PER_GATEWAY + 1))
        assert sum(worker.messages() for worker in workers) == before, "the forged batch reached a worker"

        # The same bytes under the victim's own certificate: stored and acked.
        victim_tls = site.gateway_tls(victim)
        by_hand = CertClient(broker, site.ca, victim_tls.cert_file, victim_tls.key_file, "by-hand")
        try:
            await by_hand.subscribe(ack_topic(victim))
            by_hand.client.publish(up_topic(victim), batch, qos=1).wait_for_publish(5)
            await by_hand.settle(1)
            assert len(by_hand.received) == 1, "no ack for the genuine batch"
            ack = decode_ack(by_hand.received[0])
            assert ack.error is None and ack.head_number == head_no + 1 and ack.acked == last_seq + 3
            assert readings_of(postgres_url, victim) == list(range(1, PER_GATEWAY + 4))

            # Refusal: a worker whose certificate the rules do not name. It subscribes (Mosquitto
            # grants any subscription) and then receives nothing; but the broker hands it its turn
            # all the same, and drops that message. Six copies of the stored batch (replays, each
            # re-acked by the worker that gets it) over three members: two are lost.
            unnamed.start("--session-expiry", "0")
            await asyncio.to_thread(unnamed.wait_subscribed)
            before = sum(worker.messages() for worker in workers)
            by_hand.received.clear()
            for _ in range(6):
                by_hand.client.publish(up_topic(victim), batch, qos=1).wait_for_publish(5)
            await by_hand.settle(4)
        finally:
            by_hand.close()
        assert unnamed.messages() == 0, "a worker the rules do not name received batches"
        assert sum(worker.messages() for worker in workers) - before == 4
        assert len(by_hand.received) == 4
        assert all(decode_ack(answer).head_number == head_no + 1 for answer in by_hand.received)
        assert readings_of(postgres_url, victim) == list(range(1, PER_GATEWAY + 4))  # nothing twice

        # Refusal: no certificate, no connection (and one from the CA gets in, as a control).
        assert not connects(broker, site.ca)
        assert connects(broker, site.ca, forger_tls.cert_file, forger_tls.key_file)
    finally:
        await stop_gateways(tasks, outboxes)
        for worker in (*workers, unnamed):
            worker.stop()
        broker.stop()
    print(
        f"\n{len(expected)} readings from {len(GATEWAYS)} gateways over TLS through {len(WORKERS)} workers "
        f"in {elapsed:.1f} s; messages per worker {received}; {len(refusals)} chain-order refusals"
    )


async def _last_acked_batch(path: Path) -> int:
    import aiosqlite

    async with (
        aiosqlite.connect(path) as db,
        db.execute("SELECT MAX(id) FROM batches WHERE state = 'acked'") as cursor,
    ):
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])
