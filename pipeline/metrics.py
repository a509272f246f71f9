"""A run's metrics in Prometheus' text exposition format (``--metrics-file``), for a node
exporter's textfile collector or any scraper that reads files."""

from __future__ import annotations

import os
from pathlib import Path

# (metric, metrics.json key, type, help)
_STREAM = (
    ("pipeline_stream_records", "records", "gauge", "Records exported by the stream in the last run."),
    ("pipeline_stream_batches", "batches", "gauge", "Pages of rows the stream read."),
    ("pipeline_stream_bytes", "bytes", "gauge", "Bytes the stream wrote (its data files)."),
    ("pipeline_stream_seconds", "seconds", "gauge", "Wall time of the stream."),
    ("pipeline_stream_rows_per_second", "rows_per_s", "gauge", "Records per second of the stream."),
    ("pipeline_stream_retries", "retries", "gauge", "Retries of a locked or busy archive."),
    ("pipeline_stream_rejects", "rejects", "gauge", "Values the stream rejected (rejects.ndjson)."),
)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus_text(metrics: dict[str, object], *, success: bool, run_seconds: float | None = None) -> str:
    """The text format of ``metrics`` (as in metrics.json; empty after a failed run)."""
    lines = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[str, object]]) -> None:
        samples = [(labels, v) for labels, v in samples if isinstance(v, int | float) and not isinstance(v, bool)]
        if not samples:
            return
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{labels} {value}" for labels, value in samples)

    metric("pipeline_run_success", "gauge", "1 if the last run published its export, else 0.", [("", int(success))])
    seconds = metrics.get("run_seconds", run_seconds)
    metric("pipeline_run_seconds", "gauge", "Wall time of the last run's streams.", [("", seconds)])
    metric(
        "pipeline_peak_rss_bytes", "gauge", "Peak resident memory of the run.", [("", metrics.get("peak_rss_bytes"))]
    )
    metric(
        "pipeline_peak_in_flight_bytes",
        "gauge",
        "The most bytes the run's pages and converted rows held at once between reading and sorting or writing.",
        [("", metrics.get("peak_in_flight_bytes"))],
    )
    streams = metrics.get("streams") or {}
    assert isinstance(streams, dict)
    for name, key, kind, help_ in _STREAM:
        samples = [(f'{{stream="{_label(s)}"}}', values.get(key)) for s, values in streams.items()]
        metric(name, kind, help_, samples)
    return "\n".join(lines) + "\n"


def write_metrics_file(path: str | os.PathLike[str], text: str) -> None:
    """Write ``path`` whole or not at all (a scraper never reads half a file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
