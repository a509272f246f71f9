"""chart.png: (a) RSS over time, our CSV export vs polars' whole-table load; (b) rows/s per tool, CSV and JSON;
and, when measured, (c) our speed against the sqlite3 CLI per archive and (d) peak RSS at scale, quiet and loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TOOLS = ("pipeline", "sqlite3", "sqlite-utils", "stdlib", "polars")
COLORS = {"csv": "#4c72b0", "json": "#dd8452"}
SQLITE3 = {"csv": "sqlite3 -csv -header", "json": "sqlite3 -json"}
SPEED_ARCHIVES = ("realistic", "1M", "shuffled")
LIMIT_MIB = 500e6 / 2**20


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archives = results["archives"]
    label = "1M" if "1M" in archives else next((k for k in archives if k != "huge"), None)
    if label is None:
        return
    a = archives[label]
    speed = [x for x in SPEED_ARCHIVES if x in archives]
    sc = results.get("scale")
    if speed or sc:
        fig, axes = plt.subplots(2, 2, figsize=(11, 8.4), dpi=90)
        (left, right), (low_left, low_right) = axes
        speed_panel(low_left, {x: archives[x] for x in speed})
        scale_panel(low_right, sc)
    else:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=90)
    posts = f"{a['posts']:,} posts"

    traces = a.get("traces", {})
    for name, points in traces.items():
        if not points:
            continue
        t, mib = zip(*points, strict=True)
        color = "#4c72b0" if name.startswith("pipeline") else "#c44e52"
        left.plot(t, mib, color=color, linewidth=1.6, label=f"{name}: peak {max(mib):,.0f} MiB, {t[-1]:.1f} s")
    left.set_title(f"(a) memory over time, CSV export, {posts}", fontsize=10)
    left.set_xlabel("seconds since start")
    left.set_ylabel("RSS (MiB), sampled every 20 ms")
    top = max((m for points in traces.values() for _, m in points), default=1)
    left.set_ylim(0, top * 1.25)  # room for the legend
    left.grid(alpha=0.3)
    if traces:
        left.legend(fontsize=8, loc="upper left")

    formats = [f for f in ("csv", "json") if f in a["ours"]]
    rates: dict[str, dict[str, float]] = {f: {} for f in formats}
    for f in formats:
        if a["ours"][f]["status"] == "ok":
            rates[f]["pipeline"] = a["ours"][f]["rows_per_s"]
        for p in a["peers"].values():
            if p["format"] == f and p["status"] == "ok":
                rates[f][p["family"]] = p["rows_per_s"]
    tools = [t for t in TOOLS if any(t in r for r in rates.values())]
    height = 0.8 / max(len(formats), 1)
    for i, f in enumerate(formats):
        ys = [j + (i - (len(formats) - 1) / 2) * height for j in range(len(tools))]
        values = [rates[f].get(t, 0) / 1000 for t in tools]
        bars = right.barh(ys, values, height=height * 0.95, color=COLORS[f], label=f.upper())
        for bar, v in zip(bars, values, strict=True):
            if v:
                right.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {v:,.0f}k", va="center", fontsize=7)
    right.set_yticks(range(len(tools)), [t.replace("pipeline", "pipeline (ours)") for t in tools])
    right.invert_yaxis()
    right.set_title(f"(b) throughput, best of {results['options']['runs']}, {posts}", fontsize=10)
    right.set_xlabel("thousand rows/s (higher is better)")
    right.grid(axis="x", alpha=0.3)
    right.margins(x=0.15)
    right.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def speed_panel(ax: Any, archives: dict) -> None:
    """(c) sqlite3's time / ours, csv and json, per archive, with the 1.0x target and the 1.5x stretch."""
    names = list(archives)
    width = 0.38
    for i, fmt in enumerate(("csv", "json")):
        values = [archives[x]["peers"].get(SQLITE3[fmt], {}).get("ratio", 0) for x in names]
        xs = [j + (i - 0.5) * width for j in range(len(names))]
        bars = ax.bar(xs, values, width=width * 0.95, color=COLORS[fmt], label=fmt.upper())
        for bar, v in zip(bars, values, strict=True):
            if v:
                ax.text(bar.get_x() + bar.get_width() / 2, v, f"{v:.2f}x", ha="center", va="bottom", fontsize=7)
    ax.axhline(1.0, color="black", linewidth=1, label="target 1.0x")
    ax.axhline(1.5, color="black", linewidth=1, linestyle="--", label="stretch 1.5x")
    ax.set_xticks(range(len(names)), [f"{x}\n{archives[x]['posts']:,} posts" for x in names])
    ax.set_title("(c) speed vs the sqlite3 CLI (its time / ours, best)", fontsize=10)
    ax.set_ylabel("x (higher is better)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.margins(y=0.2)


def scale_panel(ax: Any, sc: dict | None) -> None:
    """(d) peak RSS per format, quiet and beside the CPU-bound competitor, per scale archive; the 500 MB line."""
    if not sc:
        ax.set_axis_off()
        return
    series = [(label, cond) for label in sc["archives"] for cond in ("quiet", "loaded")]
    formats = list(next(iter(sc["archives"].values()))["formats"]) if sc["archives"] else []
    width = 0.8 / max(len(series), 1)
    shades = ("#4c72b0", "#8fb0e0", "#dd8452", "#f0b890")
    top = LIMIT_MIB
    for i, (label, cond) in enumerate(series):
        fmts = sc["archives"][label]["formats"]
        values = [(fmts.get(f, {}).get(cond, {}).get("max_peak_kib") or 0) / 1024 for f in formats]
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(formats))]
        top = max(top, *values)
        ax.bar(xs, values, width=width * 0.95, color=shades[i % len(shades)], label=f"{label} {cond}")
    ax.axhline(LIMIT_MIB, color="#c44e52", linewidth=1, label="500 MB")
    ax.set_ylim(0, top * 1.35)  # room for the legend
    ax.set_xticks(range(len(formats)), [f.replace("+", "+\n") for f in formats])
    ax.set_title("(d) peak RSS at scale, quiet and beside a CPU-bound competitor", fontsize=10)
    ax.set_ylabel("peak RSS (MiB)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", ncol=3)
