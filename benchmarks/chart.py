"""chart.png: (a) RSS over time, our CSV export vs polars' whole-table load; (b) rows/s per tool, CSV and JSON."""

from __future__ import annotations

from pathlib import Path

TOOLS = ("pipeline", "sqlite3", "sqlite-utils", "stdlib", "polars")
COLORS = {"csv": "#4c72b0", "json": "#dd8452"}


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archives = results["archives"]
    label = "1M" if "1M" in archives else next((k for k in archives if k != "huge"), None)
    if label is None:
        return
    a = archives[label]
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
