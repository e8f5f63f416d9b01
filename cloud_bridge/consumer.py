"""The bridge's MQTT side: subscribe to every gateway's uplink, receive, and publish acks.

Messages are handled one at a time on paho's network thread with the consumer's own database
connection (SQLite or PostgreSQL); the ack is published only after `receive_batch` has committed.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections import Counter
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from cloud_bridge import db as dbapi
from cloud_bridge import fhir_post, store
from cloud_bridge.alert_rules import load_rule_texts
from cloud_bridge.fhir_post import FhirPoster
from cloud_bridge.receive import receive_batch
from contract.wire import UP_TOPIC_FILTER, ack_topic, encode_ack

log = logging.getLogger(__name__)


class BridgeConsumer:
    def __init__(
        self,
        db_path: Path | str,  # a SQLite file, or a postgresql:// URL
        *,
        host: str,
        port: int,
        client_id: str = "kiosk-bridge",
        tls: tuple[Path, Path, Path] | None = None,  # (CA, certificate, key): MQTT over TLS
        fhir_base_url: str | None = None,  # the health community's FHIR server; None: embedded store
        alert_rules: Path | None = None,  # the region's rules file: alert flags become Flag + Task
    ) -> None:
        self._db_path = db_path
        self._host = host
        self._port = port
        self._conn = store.connect(db_path, shared_across_threads=True)
        self._lock = threading.Lock()
        self.poster = FhirPoster(self._conn, self._lock, fhir_base_url) if fhir_base_url else None
        self.alert_rules = load_rule_texts(alert_rules) if alert_rules else None
        self.counters: Counter[str] = Counter()
        self.connected = threading.Event()
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        self._client.reconnect_delay_set(min_delay=1, max_delay=10)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        if tls is not None:
            ca, cert, key = tls
            self._client.tls_set(
                ca_certs=str(ca), certfile=str(cert), keyfile=str(key),
                cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )  # fmt: skip

    def start(self) -> None:
        if self.poster is not None:
            self.poster.start()
        self._client.connect_async(self._host, self._port, keepalive=30)
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        if self.poster is not None:
            self.poster.stop()
        with self._lock:
            self._conn.close()

    def metrics(self) -> dict[str, object]:
        out: dict[str, object] = {"mqtt_connected": self.connected.is_set(), **dict(self.counters)}
        with self._lock:
            (out["readings_missing"],) = self._conn.execute(
                "SELECT CAST(COALESCE(SUM(last_seq - first_seq + 1), 0) AS BIGINT) FROM seq_gaps"
            ).fetchone()
        if self.poster is not None:
            with self._lock:
                out["fhir_posts"] = fhir_post.counts(self._conn)
            out["fhir_post_last_error"] = self.poster.last_error
        return out

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object
    ) -> None:
        if getattr(reason, "is_failure", False):
            log.error("bridge: broker refused connection: %s", reason)
            return
        client.subscribe(UP_TOPIC_FILTER, qos=1)
        log.info("bridge: connected to %s:%d", self._host, self._port)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: object, mid: int, reasons: object, props: object
    ) -> None:
        self.connected.set()  # ready only once the broker has confirmed the subscription
        log.info("bridge: subscribed to %s", UP_TOPIC_FILTER)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object
    ) -> None:
        self.connected.clear()
        log.warning("bridge: disconnected from broker (%s)", reason)

    def _reconnect_if_broken(self) -> None:
        """PostgreSQL went away (a restart, a network cut): open a new connection for the next
        message; this one will not work again. SQLite connections do not break."""
        if not self._conn.broken:
            return
        try:
            fresh = store.connect(self._db_path, shared_across_threads=True)
        except dbapi.driver_errors(self._db_path):
            log.warning("bridge: database still unreachable; will try again on the next message")
            return
        self._conn.close()
        self._conn = fresh
        if self.poster is not None:
            self.poster.use(fresh)
        log.info("bridge: reconnected to the database")

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        self.counters["messages"] += 1
        try:
            with self._lock:
                self._reconnect_if_broken()
                outcome = receive_batch(
                    self._conn,
                    message.topic,
                    bytes(message.payload),
                    now_ms=time.time_ns() // 1_000_000,
                    post_to_remote=self.poster is not None,
                    alert_rules=self.alert_rules,
                )
        except self._conn.Error:
            # Storage trouble (disk full, locked, server gone): nothing was committed, so nothing is acked;
            # the gateway keeps the batch and sends it again.
            self.counters["storage_errors"] += 1
            log.exception("bridge: could not store batch from %s; not acked", message.topic)
            return
        except Exception:
            # A bug must not stop paho's network thread (and with it every gateway's sync):
            # the transaction was rolled back, nothing is acked, the gateway will resend.
            self.counters["internal_errors"] += 1
            log.exception("bridge: failed to process batch from %s; not acked", message.topic)
            return
        if outcome.refusal:
            self.counters["refused"] += 1
        elif outcome.probe:
            self.counters["time_probes"] += 1
        elif outcome.replay:
            self.counters["replays"] += 1
        else:
            self.counters["batches_stored"] += 1
            self.counters["readings_stored"] += outcome.stored
            self.counters["sequence_gaps_opened"] += outcome.gaps_opened
        if outcome.ack is not None and outcome.gateway_id is not None:
            client.publish(ack_topic(outcome.gateway_id), encode_ack(outcome.ack), qos=1)
