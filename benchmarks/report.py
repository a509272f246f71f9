"""Write the results: latest.json, latest.md, chart.png, and the README's Performance tables."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from benchmarks.measure import RESULTS, ROOT

README = ROOT / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
CHART_LINK = "![benchmark chart](benchmarks/results/chart.png)"
TITLES = {"100k": "100,000 posts", "1M": "1,000,000 posts", "huge": "huge rows: {posts:,} posts of ~1.5 MB embed_data"}


def _mib(kib: int | None) -> str:
    return "—" if kib is None else f"{kib / 1024:,.0f} MiB"


def _rss(s: dict) -> str:
    """ru_maxrss, or the polled VmHWM (marked ¹) when ru_maxrss only shows the benchmark process's own floor."""
    if "peak_rss_kib" not in s:
        return "—"
    if s["peak_rss_kib"] <= s["floor_kib"] + 1024 and s.get("peak_hwm_kib"):
        return f"{_mib(s['peak_hwm_kib'])}¹"
    return _mib(s["peak_rss_kib"])


def _time(s: dict) -> str:
    return f"{s['best_s']:.2f} / {s['median_s']:.2f} s"


def archive_table(label: str, a: dict, runs: int) -> list[str]:
    title = TITLES.get(label, label).format(posts=a["posts"])
    lines = [
        f"### {title} ({a['archive_bytes'] / 1e9:.2f} GB archive)",
        "",
        "| format | tool | best / median | rows/s | ratio | memray peak | peak RSS |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for fmt, o in a["ours"].items():
        if o["status"] == "ok":
            peak = o.get("memray_peak_bytes")
            mem = f"{peak / 2**20:,.0f} MiB" if peak else f"failed: {o.get('error')}"
            lines.append(f"| {fmt} | **pipeline** | {_time(o)} | {o['rows_per_s']:,} | 1 | {mem} | {_rss(o)} |")
        else:
            lines.append(f"| {fmt} | **pipeline** | failed: {'; '.join(o.get('errors', []))} | | | | |")
        for name, p in a["peers"].items():
            if p["format"] != fmt:
                continue
            tool = name + (" (whole table in memory)" if p["whole_table"] else "")
            if p["status"] == "ok":
                note = "²" if len(p["wall_s"]) < runs else ""
                ratio = f"{p['ratio']:.2f}" if "ratio" in p else "—"
                lines.append(f"| {fmt} | {tool}{note} | {_time(p)} | {p['rows_per_s']:,} | {ratio} | — | {_rss(p)} |")
            else:
                lines.append(f"| {fmt} | {tool} | {p.get('note') or 'failed'} | | | | |")
    return [*lines, ""]


def markdown(results: dict) -> str:
    m = results["machine"]
    o = results["options"]
    out = [
        f"Last run {m['date']} ({results['total_s'] / 60:.0f} min): {m['nproc']} cores ({m['cpu']}), "
        f"Python {m['python']}, pyarrow {m['pyarrow']}, polars {m['polars']}, sqlite3 {m['sqlite3_cli']}, "
        f"sqlite-utils {m['sqlite-utils']}; commit {m['git_commit']}{' + local changes' if m['git_dirty'] else ''}. "
        f"Posts only (`--types posts`), warm page cache, best / median of {o['runs']} interleaved "
        f"run(s); ratio = peer time / our best time (above 1: we are faster); "
        + (
            f"memray peak = median of {o['memray_runs']} separate runs (one run in the --jobs table); "
            if o.get("memray_runs", 1) > 1
            else "memray peak of a separate run; "
        )
        + "peak RSS = os.wait4's ru_maxrss. `benchmarks/results/latest.json` has every run.",
        "",
    ]
    for label, a in results["archives"].items():
        out += archive_table(label, a, o["runs"])
    out.append(
        "¹ polled VmHWM: a child's ru_maxrss never shows less than the benchmark process's own peak RSS "
        "(Linux keeps it over exec), so small processes show that instead."
    )
    if "huge" in results["archives"]:
        out.append("")
        out.append(
            "² run once: slower than 20 s on the huge-row archive. On that archive the peers' peak RSS is about "
            "the archive's size because their `ORDER BY` sorts whole rows (embed_data included) in SQLite's "
            "sorter; the same `sqlite3 -csv` dump without `ORDER BY` stays at a few MiB."
        )
    out.append("")
    small = results.get("small")
    if small:
        out.append(
            f"{small['posts']}-post export, process start to exit: {small['median_s']} s median of 5, "
            f"{small['max_s']} s max."
        )
        out.append("")
    jobs = results.get("jobs")
    if jobs:
        out += [
            "Every record type of the 1M archive (1M posts, 500k likes, 100k follows, 50k ops), `--ops`, csv and json:",
            "",
            "| --jobs | best / median | memray peak | peak RSS |",
            "| ---: | --- | ---: | ---: |",
        ]
        for n, v in jobs["jobs"].items():
            peak = v["memray_peak_bytes"]
            t = f"{v['best_s']:.2f} / {v['median_s']:.2f} s" if v["best_s"] else "failed"
            lines = f"| {n} | {t} | {peak / 2**20:,.0f} MiB |" if peak else f"| {n} | {t} | failed |"
            out.append(f"{lines} {_mib(v['peak_rss_kib'])} |")
        out.append("")
    out += ["Targets:", ""]
    for c in results["checks"]:
        mark = {True: "PASS", False: "**FAIL**", None: "n/a"}[c["ok"]]
        out.append(f"- {mark} {c['target']}: {c['detail']}")
    return "\n".join(out) + "\n"


def update_readme(body: str) -> bool:
    """Replace the README's lines between the bench markers with ``body``; False if the markers are missing."""
    text = README.read_text()
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        print(f"README.md: no {START} ... {END} lines; not updated", file=sys.stderr)
        return False
    new = text[: start + len(START)] + "\n\n" + body.rstrip("\n") + "\n\n" + CHART_LINK + "\n\n" + text[end:]
    if new != text:
        tmp = README.with_suffix(".md.bench-tmp")
        tmp.write_text(new)
        os.replace(tmp, README)
    return True


def write(results: dict) -> None:
    from benchmarks.chart import chart

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=1) + "\n")
    md = markdown(results)
    (RESULTS / "latest.md").write_text("# Benchmark results\n\n" + md)
    chart(results, RESULTS / "chart.png")
    update_readme(md)


def rewrite(path: Path = RESULTS / "latest.json") -> None:
    """Regenerate latest.md, chart.png and the README from latest.json (no benchmark run)."""
    write(json.loads(path.read_text()))
