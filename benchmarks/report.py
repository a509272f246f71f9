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
TITLES = {  # the post counts come from the archive measured (--archive-1m may name another size)
    "100k": "{posts:,} posts",
    "1M": "{posts:,} posts",
    "huge": "huge rows: {posts:,} posts of ~1.5 MB embed_data",
    "realistic": "realistic: {posts:,} posts in bskyarchive's storage",
    "shuffled": "shuffled: the realistic archive's {posts:,} posts in random rowid order",
    "10M": "{posts:,} posts",
}
SQLITE3 = {"csv": "sqlite3 -csv -header", "json": "sqlite3 -json"}


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
    out += speed_table(results["archives"])
    jobs = results.get("jobs")
    if jobs:
        label = jobs.get("label", "1M")
        posts = results["archives"].get(label, {}).get("posts")
        what = (
            "the 1M archive (1M posts, 500k likes, 100k follows, 50k ops)"
            if label == "1M"
            else f"the {label} archive ({posts:,} posts, likes posts/2, follows posts/10, ops posts/20)"
            if posts
            else f"the {label} archive"
        )
        out += [
            "### Parallel streams (`--jobs`)",
            "",
            f"Every record type of {what}, `--ops`, csv and json:",
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
    if results.get("scale"):
        out += scale_table(results["scale"])
    out += ["### Targets", ""] if results.get("scale") or results.get("jobs") else ["Targets:", ""]
    for c in results["checks"]:
        if c.get("info"):
            mark = {True: "met (information)", False: "not met (information)", None: "information"}[c["ok"]]
        else:
            mark = {True: "PASS", False: "**FAIL**", None: "n/a"}[c["ok"]]
        out.append(f"- {mark} {c['target']}: {c['detail']}")
    return "\n".join(out) + "\n"


def speed_table(archives: dict) -> list[str]:
    """Issue 17's speed targets: our csv and json against the sqlite3 CLI's, per archive measured."""
    rows = []
    for label in ("realistic", "1M", "shuffled"):
        a = archives.get(label)
        if not a:
            continue
        for fmt, name in SQLITE3.items():
            o, p = a["ours"].get(fmt), a["peers"].get(name)
            if not o or not p or o["status"] != "ok" or p["status"] != "ok":
                continue
            rows.append(
                f"| {label} ({a['posts']:,} posts) | {fmt} | {_time(o)} | `{name}`: {_time(p)} "
                f"| {p['ratio']:.2f}x / {p['median_ratio']:.2f}x |"
            )
    if not rows:
        return []
    return [
        "### Against the `sqlite3` CLI",
        "",
        "Same posts, `ORDER BY created_at DESC, uri` (target 1.0x, stretch 1.5x):",
        "",
        "| archive | format | pipeline best / median | peer best / median | speed vs peer, best / median |",
        "| --- | --- | --- | --- | ---: |",
        *rows,
        "",
    ]


def _peak(v: dict) -> str:
    return _mib(v.get("max_peak_kib"))


def _cores(v: dict) -> str:
    cores = v.get("competitor_cores")
    return f"{sorted(cores)[len(cores) // 2]:.2f}" if cores else "—"


def scale_table(sc: dict) -> list[str]:
    """Memory at scale: per archive and format, quiet and loaded time and peak RSS."""
    lines = [
        "### Memory at scale",
        "",
        f"Posts only; loaded = beside a CPU-bound competitor: {sc['load']} "
        "(competitor cores = the CPU it used meanwhile, median). Peak RSS = the export process's own, "
        "the largest of its runs:",
        "",
        "| archive | format | quiet best / median | s per million rows | quiet peak RSS "
        "| loaded best / median | loaded peak RSS | competitor cores |",
        "| --- | --- | --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for label, a in sc["archives"].items():
        for fmt, conds in a["formats"].items():
            q, ld = conds["quiet"], conds["loaded"]
            qt = _time(q) if "best_s" in q else "failed"
            lt = _time(ld) if "best_s" in ld else "failed"
            spm = f"{q['s_per_million']:.2f}" if q.get("s_per_million") else "—"
            lines.append(
                f"| {label} ({a['posts']:,}) | {fmt} | {qt} | {spm} | {_peak(q)} | {lt} | {_peak(ld)} | {_cores(ld)} |"
            )
    if "10M" not in sc["archives"]:
        lines += ["", "10M posts: not measured in this run (`--scale 10m` or `--archive-10m PATH`)."]
    return [*lines, ""]


def update_readme(body: str, readme: Path = README) -> bool:
    """Replace ``readme``'s lines between the bench markers with ``body``; False if the markers are missing."""
    text = readme.read_text()
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        print(f"{readme.name}: no {START} ... {END} lines; not updated", file=sys.stderr)
        return False
    new = text[: start + len(START)] + "\n\n" + body.rstrip("\n") + "\n\n" + CHART_LINK + "\n\n" + text[end:]
    if new != text:
        tmp = readme.with_suffix(".md.bench-tmp")
        tmp.write_text(new)
        os.replace(tmp, readme)
    return True


def write(results: dict, dest: Path = RESULTS, readme: Path | None = README) -> None:
    """latest.json, latest.md and chart.png into ``dest``; the tables into ``readme`` unless it is None."""
    from benchmarks.chart import chart

    dest.mkdir(parents=True, exist_ok=True)
    (dest / "latest.json").write_text(json.dumps(results, indent=1) + "\n")
    md = markdown(results)
    (dest / "latest.md").write_text("# Benchmark results\n\n" + md)
    try:
        chart(results, dest / "chart.png")
    except ModuleNotFoundError as e:  # the tables are worth more than the picture
        print(f"chart.png not written: {e} (pip install -e '.[bench]')", file=sys.stderr)
    if readme is not None:
        update_readme(md, readme)


def rewrite(path: Path = RESULTS / "latest.json", dest: Path = RESULTS, readme: Path | None = README) -> None:
    """Regenerate latest.md, chart.png and the README from a results file (no benchmark run)."""
    write(json.loads(path.read_text()), dest, readme)
