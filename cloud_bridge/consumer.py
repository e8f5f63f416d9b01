"""The bridge's MQTT side: subscribe to every gateway's uplink, receive, and publish acks.

Messages are handled one at a time on paho's network thread with the consumer's own database
connection (SQLite or PostgreSQL); the ack is published only after `receive_batch` has committed.

Scale-out (`worker=NAME`): several consumers, each its own process, share one PostgreSQL and
subscribe as members of an MQTT v5 shared subscription (`$share/{group}/kiosk/+/up`), so the broker
hands each batch to one of them. Consecutive batches of one gateway can then reach different
workers and be decided out of order: a worker that gets a batch whose predecessor is not stored
yet (it is likely being stored by another worker right now) does not refuse it at once but tries
again after a short wait, off the network thread, and refuses it (with the chain head, so the
gateway resends from there) only when it still does not fit. See README "Several bridge workers".
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections import Counter
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud_bridge import db as dbapi
from cloud_bridge import fhir_post, fhir_stage, store
from cloud_bridge.alert_rules import load_rule_texts
from cloud_bridge.fhir_post import FhirPoster
from cloud_bridge.receive import Outcome, receive_batch
from cloud_bridge.referral_routes import check_rules, load_routes, unknown_sites
from contract.wire import UP_TOPIC_FILTER, ack_topic, encode_ack

log = logging.getLogger(__name__)

# A worker retries a batch that arrived before its predecessor after these waits (seconds), then
# refuses it; together well under a gateway's ack time-out (15 s by default).
AHEAD_RETRY_DELAYS_S: tuple[float, ...] = (0.1, 0.5)
# How long the broker keeps a worker's session (its subscription and queued messages) after it
# disconnects: a worker restarted within this time gets what was queued for it. Kept short on
# purpose: Mosquitto 2.0 keeps handing a disconnected member its share of new messages until the
# session expires (README "Several bridge workers").
WORKER_SESSION_EXPIRY_S = 30


def worker_client_id(name: str) -> str:
    return f"kiosk-bridge-{name}"


def shared_filter(group: str) -> str:
    """The uplink filter as a member of shared-subscription `group` (MQTT v5)."""
    return f"$share/{group}/{UP_TOPIC_FILTER}"


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
        fhir_token: str | None = None,  # its bearer token (another bridge: a token with role "bridge")
        alert_rules: Path | None = None,  # the region's rules file: alert flags become Flag + Task
        referral_routes: Path | None = None,  # the region's routing file: which team gets each Task
        worker: str | None = None,  # one of several workers (MQTT v5 shared subscription, PostgreSQL)
        share_group: str = "bridge",
        session_expiry_s: int = WORKER_SESSION_EXPIRY_S,
        ahead_retry_delays_s: tuple[float, ...] = AHEAD_RETRY_DELAYS_S,
        map_fhir: bool = True,  # False: readings are queued for the FHIR stage (cloud_bridge/fhir_stage.py)
        ack_key: Ed25519PrivateKey | None = None,  # signs every ack (cloud_bridge/ack_key.py)
    ) -> None:
        """Without `worker` the bridge is the single consumer (MQTT 3.1.1, `kiosk/+/up`, client id
        `client_id`), as before. With `worker` it is one of several: client id
        `kiosk-bridge-<worker>`, MQTT v5 with a persistent session of `session_expiry_s`, member
        of `$share/<share_group>/kiosk/+/up`; batches that come before their predecessor are
        retried after `ahead_retry_delays_s`."""
        if worker is not None and (not worker or not share_group or any(c in share_group for c in "/+#")):
            raise ValueError("a worker needs a name and a share group without '/', '+' or '#'")
        self._db_path = db_path
        self._host = host
        self._port = port
        self._map_fhir = map_fhir
        self._ack_key = ack_key
        self._conn = store.connect(db_path, shared_across_threads=True)
        self._lock = threading.Lock()
        self.poster = (
            FhirPoster(self._conn, self._lock, fhir_base_url, token=fhir_token) if fhir_base_url else None
        )
        self.alert_rules = load_rule_texts(alert_rules) if alert_rules else None
        # Raises ReferralRoutesError (file and field named) for a file that cannot be used.
        self.referral_routes = load_routes(referral_routes) if referral_routes else None
        if self.referral_routes is not None and self.alert_rules is not None:
            severities = {rule.id: rule.severity for rule in self.alert_rules.values()}
            check_rules(self.referral_routes, severities, where=str(referral_routes))
        if self.referral_routes is not None:  # a misspelt site would route nothing: say so
            enrolled = [str(row["site"]) for row in store.list_gateways(self._conn)]
            for site in unknown_sites(self.referral_routes, enrolled) if enrolled else ():
                log.warning("bridge: %s routes site %r, which no enrolled gateway has", referral_routes, site)
        self.counters: Counter[str] = Counter()
        self.connected = threading.Event()
        self.worker = worker
        self._filter = UP_TOPIC_FILTER if worker is None else shared_filter(share_group)
        self._session_expiry_s = session_expiry_s
        self._retry_delays = ahead_retry_delays_s if worker is not None else ()
        self._retries: set[threading.Timer] = set()  # pending retries, cancelled on stop
        self._stopping = False
        if worker is None:
            self._client = mqtt.Client(
                callback_api_version=CallbackAPIVersion.VERSION2,
                client_id=client_id,
                clean_session=False,
                protocol=mqtt.MQTTv311,
            )
        else:  # MQTT v5: clean_start and the session expiry are given at connect
            self._client = mqtt.Client(
                callback_api_version=CallbackAPIVersion.VERSION2,
                client_id=worker_client_id(worker),
                protocol=mqtt.MQTTv5,
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
        if self.worker is None:
            self._client.connect_async(self._host, self._port, keepalive=30)
        else:
            # clean_start=False on every connect, first included: a worker restarted under the
            # same name takes over the session (and messages queued for it) it left.
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = self._session_expiry_s
            self._client.connect_async(
                self._host, self._port, keepalive=30, clean_start=False, properties=properties
            )
        self._client.loop_start()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            for timer in self._retries:
                timer.cancel()  # not stored, not acked: the gateway resends it
            self._retries.clear()
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
            if not self._map_fhir:
                out["fhir_pending"] = fhir_stage.pending_count(self._conn)
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
        client.subscribe(self._filter, qos=1)
        log.info("bridge: connected to %s:%d", self._host, self._port)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: object, mid: int, reasons: object, props: object
    ) -> None:
        failed = [r for r in reasons if getattr(r, "is_failure", False)] if isinstance(reasons, list) else []
        if failed:  # e.g. a broker without shared subscriptions: say so rather than sit idle
            log.error("bridge: broker refused the subscription to %s: %s", self._filter, failed[0])
            return
        self.connected.set()  # ready only once the broker has confirmed the subscription
        log.info("bridge: subscribed to %s", self._filter)

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
        self._handle(message.topic, bytes(message.payload), attempt=0)

    def _retry(self, timer_box: list[threading.Timer], topic: str, payload: bytes, attempt: int) -> None:
        with self._lock:
            self._retries.discard(timer_box[0])
            if self._stopping:
                return
        self._handle(topic, payload, attempt=attempt)

    def _handle(self, topic: str, payload: bytes, *, attempt: int) -> None:
        """Decide one batch and publish the ack. A batch ahead of the stored chain (its predecessor
        is probably being stored by another worker) is tried again later on a timer thread, not
        refused, while retries remain; the network thread goes on with other messages meanwhile.
        Its MQTT PUBACK has gone already: should this worker die before the retry, the gateway
        resends the batch after its ack time-out."""
        defer = attempt < len(self._retry_delays)
        try:
            with self._lock:
                if self._stopping:
                    return
                self._reconnect_if_broken()
                outcome = receive_batch(
                    self._conn,
                    topic,
                    payload,
                    now_ms=time.time_ns() // 1_000_000,
                    post_to_remote=self.poster is not None,
                    alert_rules=self.alert_rules,
                    defer_ahead=defer,
                    referral_routes=self.referral_routes,
                    map_fhir=self._map_fhir,
                )
                if outcome.deferred:
                    self.counters["out_of_order_retries"] += 1
                    box: list[threading.Timer] = []
                    timer = threading.Timer(
                        self._retry_delays[attempt], self._retry, (box, topic, payload, attempt + 1)
                    )
                    timer.daemon = True
                    box.append(timer)
                    self._retries.add(timer)
                    timer.start()
                    return
                self._count(outcome, attempt)
        except self._conn.Error:
            # Storage trouble (disk full, locked, server gone): nothing was committed, so nothing is acked;
            # the gateway keeps the batch and sends it again.
            self.counters["storage_errors"] += 1
            log.exception("bridge: could not store batch from %s; not acked", topic)
            return
        except Exception:
            # A bug must not stop paho's network thread (and with it every gateway's sync):
            # the transaction was rolled back, nothing is acked, the gateway will resend.
            self.counters["internal_errors"] += 1
            log.exception("bridge: failed to process batch from %s; not acked", topic)
            return
        if outcome.ack is not None and outcome.gateway_id is not None:
            answer = encode_ack(outcome.ack, gateway_id=outcome.gateway_id, signing_key=self._ack_key)
            self._client.publish(ack_topic(outcome.gateway_id), answer, qos=1)

    def _count(self, outcome: Outcome, attempt: int) -> None:
        """Under the lock: retries run on timer threads alongside the network thread."""
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
            if attempt:
                self.counters["stored_after_retry"] += 1
