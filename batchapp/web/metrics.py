"""``/metrics``: a placeholder that renders an empty registry (the metrics work replaces it)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


def render_metrics(ctx: Any) -> tuple[bytes, str]:
    """The Prometheus text exposition and its content type."""
    return generate_latest(CollectorRegistry()), CONTENT_TYPE_LATEST
