"""The bridge's figures in the Prometheus text format, for `GET /metrics`.

The consumer keeps plain counters (`BridgeConsumer.metrics()`); this module names them for
Prometheus (`kiosk_bridge_…_total` for counters, gauges without the suffix) and adds the API's
own refusals (401/403 by reason). Every known counter is exposed from the start, at 0, so a rate
over a fresh bridge is 0 rather than absent. Collected at scrape time: nothing here keeps state.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

__all__ = ["COUNTERS", "GAUGES", "PREFIX", "BridgeMetrics"]

PREFIX = "kiosk_bridge_"
# key in BridgeConsumer.metrics() -> help text; exposed as kiosk_bridge_<key>_total
COUNTERS: dict[str, str] = {
    "messages": "MQTT messages received on kiosk/+/up",
    "batches_stored": "Batches verified and stored",
    "readings_stored": "Readings stored (each (gateway, seq) once)",
    "replays": "Batches received again after they were stored (re-acked, nothing stored)",
    "refused": "Batches refused (forged, unknown or revoked gateway, out of chain, malformed)",
    "storage_errors": "Batches not stored because the database failed (not acked; the gateway resends)",
    "internal_errors": "Batches not stored because of a bug (not acked; the gateway resends)",
    "time_probes": "Clock requests answered for gateways without a set clock",
    "out_of_order_retries": "Batches retried by a worker because their predecessor was not stored yet",
    "stored_after_retry": "Batches stored on such a retry",
    "sequence_gaps_opened": "Runs of sequence numbers found missing when a batch was stored",
}
# key -> help text; exposed as kiosk_bridge_<key>
GAUGES: dict[str, str] = {
    "mqtt_connected": "1 once the broker has confirmed the subscription, 0 otherwise",
    "readings_missing": "Sequence numbers below each gateway's highest not received yet (all gateways)",
    "fhir_pending": "Readings stored and acked whose FHIR resources the FHIR stage has not written yet",
}


class _Collector:
    def __init__(self, values: Callable[[], Mapping[str, Any]], refusals: Counter[str]) -> None:
        self._values = values
        self._refusals = refusals

    def collect(self) -> Iterator[Metric]:
        values = dict(self._values())
        for key, text in COUNTERS.items():
            counter = CounterMetricFamily(PREFIX + key, text)
            counter.add_metric([], float(values.pop(key, 0)))
            yield counter
        for key, text in GAUGES.items():
            if key in values:
                gauge = GaugeMetricFamily(PREFIX + key, text)
                gauge.add_metric([], float(values.pop(key)))
                yield gauge
        posts = values.pop("fhir_posts", None)
        if isinstance(posts, Mapping):
            gauge = GaugeMetricFamily(
                PREFIX + "fhir_posts",
                "Readings queued for the health community's FHIR server, by state",
                labels=["state"],
            )
            for state, count in sorted(posts.items()):
                gauge.add_metric([str(state)], float(count))
            yield gauge
        if "fhir_post_last_error" in values:
            failing = GaugeMetricFamily(
                PREFIX + "fhir_post_failing",
                "1 while the last post to the FHIR server failed (the reason is in the log)",
            )
            failing.add_metric([], 1.0 if values.pop("fhir_post_last_error") else 0.0)
            yield failing
        for key, value in sorted(values.items()):  # anything newer the consumer counts
            if isinstance(value, int | float):
                gauge = GaugeMetricFamily(PREFIX + key, key.replace("_", " "))
                gauge.add_metric([], float(value))
                yield gauge
        refused = CounterMetricFamily(
            PREFIX + "api_refusals",
            "HTTP API requests refused: no token, unknown, revoked or expired token, role not allowed",
            labels=["reason"],
        )
        for reason in ("missing", "unknown", "revoked", "expired", "forbidden"):
            refused.add_metric([reason], float(self._refusals[reason]))
        yield refused


class BridgeMetrics:
    """One per API app: the consumer's figures (`values`), the API's refusals, the process."""

    def __init__(self, values: Callable[[], Mapping[str, Any]] | None = None) -> None:
        self.refusals: Counter[str] = Counter()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(values or dict, self.refusals))
        ProcessCollector(registry=self.registry)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The text a scraper asked for (Prometheus text 0.0.4, or OpenMetrics if its Accept
        header prefers it) and its content type."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type
