"""Several bridge workers behind Mosquitto's dynamic-security plugin, with a gateway that tries
to join the workers' shared subscription.

With an `acl_file` such a gateway is granted `$share/bridge/kiosk/+/up`, takes its turn in the
group and, not allowed to read, makes Mosquitto drop the batches of its turns: gateways resend
and can stall (README "Several bridge workers"). With the rules `kiosk-bridge acl --format dynsec`
writes, the broker refuses that subscription, and a worker whose certificate the rules do not
name is refused too (and says so in its log) instead of swallowing turns. Set up as in
tests/e2e/test_bridge_workers_tls.py, with the operator's commands; four gateways (their real
outbox and sync engine) send over TLS while the rogue subscription is in place. Every message on
`kiosk/+/up` (an observer outside the group counts them) reaches a worker, and every reading is
stored once and acked. (The same test on the `acl_file` broker: the rogue's subscription granted,
the workers got 54 of the 80 messages.)
"""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from contract.wire import UP_TOPIC_FILTER
from gateway.store import Outbox
from tests.component.test_broker_dynsec import dynsec_plugin
from tests.conftest import Mosquitto
from tests.e2e.test_bridge_workers import stop_gateways
from tests.e2e.test_bridge_workers_tls import (
    GATEWAYS,
    UNNAMED,
    WORKERS,
    Site,
    TlsWorker,
    _cli,
    send_until_acked,
    set_up,
)

pytestmark = pytest.mark.mosquitto

PER_GATEWAY = 150
GROUP = "$share/bridge/kiosk/+/up"


class Subscriber:
    """A paho client under a certificate, subscribed to one filter: its SUBACK and what it gets."""

    def __init__(
        self, broker: Mosquitto, site: Site, cert: Path, key: Path, client_id: str, topic_filter: str
    ) -> None:
        self.received: list[bytes] = []
        self.suback: list[int] = []
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311
        )
        self.client.tls_set(
            ca_certs=str(site.ca), certfile=str(cert), keyfile=str(key), tls_version=ssl.PROTOCOL_TLS_CLIENT
        )
        self.client.on_message = lambda c, u, m: self.received.append(bytes(m.payload))
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.suback.extend(c.value for c in codes)
        self.client.on_connect = lambda c, u, f, reason, p: self._subscribe(topic_filter)
        self.client.connect("127.0.0.1", broker.port, keepalive=10)
        self.client.loop_start()

    def _subscribe(self, topic_filter: str) -> None:
        self.client.subscribe(topic_filter, qos=1)

    async def answered(self) -> int:
        deadline = time.monotonic() + 10
        while not self.suback:
            assert time.monotonic() < deadline, "no SUBACK"
            await asyncio.sleep(0.02)
        return self.suback[0]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def dynsec_broker(site: Site, workdir: Path, db_url: str) -> Mosquitto:
    """A TLS broker with the dynamic-security plugin and the rules `acl --format dynsec` writes."""
    from cloud_bridge.cli import app as bridge

    rules = workdir / "dynamic-security.json"
    users = [arg for worker in WORKERS for arg in ("--bridge-user", f"bridge-{worker}")]
    _cli(bridge, "acl", "--format", "dynsec", "--db", db_url, "--out", str(rules), *users)
    broker = Mosquitto(workdir, tls=site.broker)
    broker.config.write_text(
        f"per_listener_settings false\nplugin {dynsec_plugin()}\nplugin_opt_config_file {rules}\n"
        + broker.config.read_text()
    )
    return broker


async def test_a_rogue_shared_subscription_does_not_stall_readings(tmp_path: Path, postgres_url: str) -> None:
    site = set_up(tmp_path, postgres_url)
    broker = dynsec_broker(site, tmp_path, postgres_url)
    broker.start()
    workers = [TlsWorker(name, postgres_url, broker, site, tmp_path) for name in WORKERS]
    unnamed = TlsWorker(UNNAMED, postgres_url, broker, site, tmp_path)
    subscribers: list[Subscriber] = []
    outboxes: dict[str, Outbox] = {}
    tasks: list[asyncio.Task[None]] = []
    try:
        for worker in workers:
            worker.start()
        unnamed.start("--session-expiry", "0")
        for worker in workers:
            await asyncio.to_thread(worker.wait_subscribed)
        # Every message on kiosk/+/up, outside the group: what the workers should have got together.
        bridge_cert = site.bridge_dir / f"bridge-{WORKERS[0]}"
        observer = Subscriber(broker, site, bridge_cert.with_suffix(".crt"), bridge_cert.with_suffix(".key"),
                              "observer", UP_TOPIC_FILTER)  # fmt: skip
        rogue_tls = site.gateway_tls(GATEWAYS[-1])
        rogue = Subscriber(broker, site, rogue_tls.cert_file, rogue_tls.key_file, "rogue", GROUP)
        subscribers += [observer, rogue]
        assert await observer.answered() == 1
        assert await rogue.answered() == 0x80  # MQTT 3.1.1 SUBACK failure: not a member of the group
        deadline = time.monotonic() + 30
        while b"broker refused the subscription to $share/bridge/kiosk/+/up" not in unnamed.log.read_bytes():
            assert time.monotonic() < deadline, unnamed.log.read_text()[-3000:]
            await asyncio.sleep(0.05)

        # Every gateway sends, the rogue's too: it still sends its own readings.
        elapsed = await send_until_acked(site, broker, PER_GATEWAY, outboxes, tasks)

        # No turn lost: every message published on kiosk/+/up reached a worker (with an acl_file
        # the rogue's turns would be dropped, and the workers would hold fewer than the observer).
        deadline = time.monotonic() + 5
        while (
            sum(worker.messages() for worker in workers) < len(observer.received)
            and time.monotonic() < deadline
        ):
            await asyncio.sleep(0.1)
        assert sum(worker.messages() for worker in workers) == len(observer.received)
        assert all(worker.messages() for worker in workers)
        assert rogue.received == []
        assert unnamed.messages() == 0
        with psycopg.connect(postgres_url, autocommit=True) as db:
            rows = db.execute("SELECT gateway_id, seq FROM readings").fetchall()
        expected = {(g, seq) for g in GATEWAYS for seq in range(1, PER_GATEWAY + 1)}
        assert len(rows) == len(expected) and set(rows) == expected
    finally:
        await stop_gateways(tasks, outboxes)
        for subscriber in subscribers:
            subscriber.close()
        for worker in (*workers, unnamed):
            worker.stop()
        broker.stop()
    print(f"\n{len(expected)} readings, {len(WORKERS)} workers, a rogue subscriber: {elapsed:.1f} s")
