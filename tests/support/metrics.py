"""Reading a Prometheus text exposition the way Prometheus would: every sample by name and labels."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Each sample of an exposition under ``(name, labels)``."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(url: str) -> Samples:
    """GET ``url`` and parse it (a 200 is required)."""
    response = httpx.get(url, timeout=10)
    response.raise_for_status()
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample ``celery_progress_ws_<name>`` with exactly ``labels``; 0 when it is absent (never counted)."""
    return samples.get(("celery_progress_ws_" + name, frozenset(labels.items())), 0.0)
