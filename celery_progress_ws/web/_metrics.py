"""The web half's metrics: plain counts kept by each manager, read by one collector per Prometheus registry.

Delivery counts in plain ints (an attribute increment per message, a bisect per live entry); nothing touches
``prometheus_client`` until a scrape, when ``WebCollector`` sums the counts of every manager of its registry. The open
connections are counted as they open and end; Redis' state is read from the live source at the scrape.
"""

from __future__ import annotations

import bisect
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .._core import metrics
from .._core.errors import ConnectionRefused, ServerLimitExceeded, Unauthorized, UserLimitExceeded
from .._core.schemas import GapReason
from .._core.streams import TopicKind

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

TRANSPORTS = ("websocket", "sse")
REFUSALS = ("unauthorized", "user_limit", "server_limit", "invalid", "origin")


def refusal_reason(exc: ConnectionRefused) -> str:
    """The ``reason`` label of a refused connection."""
    if isinstance(exc, UserLimitExceeded):
        return "user_limit"
    if isinstance(exc, ServerLimitExceeded):
        return "server_limit"
    return "unauthorized" if isinstance(exc, Unauthorized) else "invalid"


class WebTally:
    """One manager's counts; ``redis_up`` is asked at each scrape (the live source's state)."""

    __slots__ = (
        "__weakref__",
        "connections",
        "delivered_sse",
        "delivered_websocket",
        "gaps",
        "lag_buckets",
        "lag_sum",
        "reconnects",
        "refused",
        "slow_closes",
        "source",
    )

    def __init__(self) -> None:
        self.connections = {(transport, kind): 0 for transport in TRANSPORTS for kind in TopicKind}
        self.refused = dict.fromkeys(REFUSALS, 0)
        self.delivered_websocket = 0
        self.delivered_sse = 0
        self.slow_closes = 0
        self.gaps = dict.fromkeys(GapReason, 0)
        self.lag_buckets = [0] * (len(metrics.LAG_BUCKETS) + 1)
        """Observations per bucket (not cumulative); the last one is above every bound."""
        self.lag_sum = 0.0
        self.reconnects = 0
        self.source: Any = None
        """The manager's live source, whose ``available`` says whether Redis answers."""

    def refuse(self, reason: str) -> None:
        self.refused[reason] += 1

    def opened(self, stream: bool, kind: TopicKind, change: int = 1) -> None:
        """A connection of this transport and kind opened (``change=-1``: ended)."""
        self.connections["sse" if stream else "websocket", kind] += change

    def observe_lag(self, seconds: float) -> None:
        self.lag_buckets[bisect.bisect_left(metrics.LAG_BUCKETS, seconds)] += 1
        self.lag_sum += seconds


class WebCollector:
    """A ``prometheus_client`` collector of the web metrics of every manager that counts into one registry."""

    def __init__(self) -> None:
        self.tallies: weakref.WeakSet[WebTally] = weakref.WeakSet()

    def collect(self) -> Iterator[Any]:
        family = metrics.family
        tallies = list(self.tallies)
        connections = family("gauge", "connections", "Open connections.", ("transport", "kind"))
        for transport in TRANSPORTS:
            for kind in TopicKind:
                count = sum(tally.connections[transport, kind] for tally in tallies)
                connections.add_metric([transport, kind.value], count)
        refused = family("counter", "connections_refused", "Connections refused, by reason.", ("reason",))
        for reason in REFUSALS:
            refused.add_metric([reason], sum(tally.refused[reason] for tally in tallies))
        delivered = family("counter", "messages_delivered", "Messages sent to clients.", ("transport",))
        delivered.add_metric(["websocket"], sum(tally.delivered_websocket for tally in tallies))
        delivered.add_metric(["sse"], sum(tally.delivered_sse for tally in tallies))
        slow = family("counter", "slow_client_closes", "Connections closed because their queue overflowed.")
        slow.add_metric([], sum(tally.slow_closes for tally in tallies))
        gaps = family("counter", "history_gaps", "history_gap messages sent, by reason.", ("reason",))
        for gap in GapReason:
            gaps.add_metric([gap.value], sum(tally.gaps[gap] for tally in tallies))
        yield from (connections, refused, delivered, slow, gaps, self._lag(tallies))
        up = family("gauge", "redis_up", "1 while Redis answers, by half.", ("half",))
        if tallies:
            up.add_metric(["web"], min(1 if tally.source.available else 0 for tally in tallies))
        reconnects = family("counter", "redis_reconnects", "Times Redis answered again after an outage.", ("half",))
        reconnects.add_metric(["web"], sum(tally.reconnects for tally in tallies))
        yield from (up, reconnects)

    def _lag(self, tallies: list[WebTally]) -> Any:
        assert metrics.prometheus_client is not None
        counts = [sum(tally.lag_buckets[index] for tally in tallies) for index in range(len(metrics.LAG_BUCKETS) + 1)]
        cumulative, buckets = 0, []
        for bound, count in zip([*map(str, metrics.LAG_BUCKETS), "+Inf"], counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        lag = metrics.prometheus_client.core.HistogramMetricFamily(
            metrics.PREFIX + "delivery_lag_seconds", "Seconds from an entry's XADD to its delivery to the connections."
        )
        lag.add_metric([], buckets, sum(tally.lag_sum for tally in tallies))
        return lag


_collectors: weakref.WeakKeyDictionary[Any, WebCollector] = weakref.WeakKeyDictionary()


def count_into(registry: CollectorRegistry | None, tally: WebTally) -> bool:
    """Have ``registry`` (default: ``prometheus_client.REGISTRY``) export ``tally``; ``False`` without the extra."""
    client = metrics.prometheus_client
    if client is None:
        return False
    registry = client.REGISTRY if registry is None else registry
    collector = _collectors.get(registry)
    if collector is None:
        collector = _collectors[registry] = WebCollector()
        registry.register(collector)
    collector.tallies.add(tally)
    return True


def exposition(registry: CollectorRegistry | None) -> tuple[bytes, str]:
    """The text exposition of ``registry`` (default: ``prometheus_client.REGISTRY``) and its content type."""
    client = metrics.prometheus_client
    assert client is not None
    return client.generate_latest(client.REGISTRY if registry is None else registry), client.CONTENT_TYPE_LATEST
