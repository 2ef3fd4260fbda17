"""Knowledge's metrics: the ingestion queue, documents finished and chunks indexed."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import Counter
from prometheus_client.core import REGISTRY, GaugeMetricFamily
from prometheus_client.registry import Collector

from services.common import metrics

DOCUMENTS = Counter(
    "aimesh_knowledge_documents_processed_total",
    "Documents whose ingestion finished, by outcome (ready/failed).",
    ("outcome",),
)
CHUNKS = Counter(
    "aimesh_knowledge_chunks_indexed_total",
    "Chunks embedded and indexed (vector and keyword) by ingestion.",
)


def record_document(ready: bool, chunks: int = 0) -> None:
    if metrics.enabled():
        DOCUMENTS.labels("ready" if ready else "failed").inc()
        CHUNKS.inc(chunks)


class _QueueCollector(Collector):
    def __init__(self, sizes: Callable[[], tuple[int, int]]) -> None:
        self.sizes = sizes

    def collect(self) -> Iterator[GaugeMetricFamily]:
        queued, active = self.sizes()
        family = GaugeMetricFamily(
            "aimesh_knowledge_ingest_queue_depth",
            "Documents waiting for (queued) or in (active) ingestion in this process.",
            labels=["state"],
        )
        family.add_metric(["queued"], queued)
        family.add_metric(["active"], active)
        yield family


_queue: _QueueCollector | None = None


def watch_queue(sizes: Callable[[], tuple[int, int]]) -> None:
    """Expose the ingestion queue, read at scrape time (the newest ingestor's, per process)."""
    global _queue
    if _queue is None:
        _queue = _QueueCollector(sizes)
        REGISTRY.register(_queue)
    _queue.sizes = sizes
