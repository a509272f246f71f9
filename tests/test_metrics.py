"""metrics.json beside the manifest, and --metrics-file in Prometheus' text format."""

from __future__ import annotations

import json
import re

from conftest import run_cli
from oracle import expected_ops, expected_records

SAMPLE = re.compile(r'^([a-z_]+)(\{stream="([a-z]+)"\})? (-?[0-9.e+]+)$')


def _prometheus(text: str) -> dict[tuple[str, str | None], float]:
    samples = {}
    for line in text.splitlines():
        if line.startswith("# "):
            assert re.match(r"^# (HELP|TYPE) [a-z_]+ .+$", line), line
            continue
        m = SAMPLE.match(line)
        assert m, line
        samples[m.group(1), m.group(3)] = float(m.group(4))
    return samples


def test_metrics_of_a_run(fixture_archive, tmp_path):
    out, prom = tmp_path / "out", tmp_path / "pipeline.prom"
    r = run_cli("run", "export", fixture_archive, "--out", out, "--ops", "--metrics-file", prom, "-q")
    assert r.returncode == 0, r.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert "metrics.json" not in {f["path"] for f in manifest["files"]}
    want = {t: len(expected_records(str(fixture_archive), t).objects) for t in ("posts", "likes", "follows")}
    want["ops"] = sum(len(v.objects) for v in expected_ops(str(fixture_archive))[0].values())
    streams = metrics["streams"]
    assert {s: v["records"] for s, v in streams.items()} == want
    rejects = [json.loads(x) for x in (out / "rejects.ndjson").read_text().splitlines()]
    for name, v in streams.items():
        mine = [f for f in manifest["files"] if f["path"].startswith(f"{name}.") or f["path"].startswith(f"{name}/")]
        assert v["bytes"] == sum(f["size_bytes"] for f in mine) > 0
        assert v["rejects"] == sum(1 for x in rejects if x["type"] == name)
        assert v["batches"] >= 1 and v["seconds"] > 0 and v["retries"] == 0
    assert metrics["peak_rss_bytes"] > 50 * 2**20
    samples = _prometheus(prom.read_text())
    assert samples["pipeline_run_success", None] == 1
    for name, v in streams.items():
        assert samples["pipeline_stream_records", name] == v["records"]
        assert samples["pipeline_stream_bytes", name] == v["bytes"]
        assert samples["pipeline_stream_rejects", name] == v["rejects"]
    assert samples["pipeline_peak_rss_bytes", None] == metrics["peak_rss_bytes"]


def test_metrics_file_after_a_failure(tmp_path):
    prom = tmp_path / "pipeline.prom"
    prom.write_text("pipeline_run_success 1\n")  # an earlier run's file is replaced
    r = run_cli("run", "export", tmp_path / "missing.db", "--out", tmp_path / "out", "--metrics-file", prom)
    assert r.returncode == 3
    samples = _prometheus(prom.read_text())
    assert samples["pipeline_run_success", None] == 0
    assert not [k for k in samples if k[0].startswith("pipeline_stream_")]
