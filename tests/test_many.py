"""export-many on the local process pool: the same bytes as single exports, failures, retries, inputs.

The reference for every archive is ``pipeline run export`` of it alone (conftest's
``many_singles``); counts come from sqlite3; names from the README's rule (``many_name``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import threading
from pathlib import Path

import pytest
from conftest import MANY_FORMATS, many_name, run_cli, same_export
from many_hooks import KillWhileExporting, PauseOnce, paused_pid

from pipeline import Tuning, UsageError
from pipeline.many import export_many


def _runs(out_root: Path) -> list[dict]:
    return [json.loads(line) for line in (out_root / "runs.json").read_text(encoding="utf-8").splitlines()]


def _text(path: Path) -> str:
    """A path as runs.json writes it (README): bytes that are not UTF-8 as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _rows(archive: Path) -> int:
    con = sqlite3.connect(f"file:{archive}?mode=ro", uri=True)
    try:
        return sum(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("posts", "likes", "follows"))
    finally:
        con.close()


@pytest.fixture(scope="module")
def many_cli(many_fleet, tmp_path_factory):
    """The whole fleet exported by ``pipeline run export-many FOLDER`` on two workers."""
    root, _, _ = many_fleet
    out = tmp_path_factory.mktemp("many") / "out"
    r = run_cli("run", "export-many", root, "--out-root", out, "--workers", "2", *MANY_FORMATS, "-q")
    return out, r


def test_every_good_archive_as_a_single_export(many_fleet, many_singles, many_cli):
    _, good, corrupt = many_fleet
    out, r = many_cli
    assert r.returncode == 1, r.stderr
    everything = [*good, corrupt]
    for archive in good:
        same_export(out / many_name(archive, everything), many_singles[archive])
    names = {many_name(a, everything) for a in good}
    assert {p.name for p in out.iterdir()} == names | {"runs.json"}  # no staging folder left, none for the corrupt one


def test_runs_json_and_the_failure(many_fleet, many_cli):
    _, good, corrupt = many_fleet
    out, r = many_cli
    runs = _runs(out)
    assert len(runs) == 20
    by_archive = {line["archive"]: line for line in runs}
    bad = by_archive[_text(corrupt)]
    assert (bad["status"], bad["exit_code"], bad["attempts"]) == ("failed", 3, 1)  # not retried
    assert bad["error"]
    assert f"pipeline: failed: {corrupt}: exit 3: " in r.stderr
    assert sum(line.startswith("pipeline: failed:") for line in r.stderr.splitlines()) == 1
    for archive in good:
        line = by_archive[_text(archive)]
        assert line["status"] == "published" and line["exit_code"] == 0 and line["attempts"] == 1
        assert line["records"] == _rows(archive)
        folder = out / many_name(archive, [*good, corrupt])
        assert line["bytes"] == sum(
            f.stat().st_size for f in folder.rglob("*") if f.name not in ("manifest.json", "metrics.json")
        )
        assert line["seconds"] > 0 and line["peak_rss_bytes"] > 0 and line["error"] is None


def test_skip_unchanged_redoes_only_what_is_missing(many_fleet, many_cli, tmp_path):
    _, good, corrupt = many_fleet
    out = tmp_path / "out"
    shutil.copytree(many_cli[0], out)
    gone = out / many_name(good[3], [*good, corrupt])
    shutil.rmtree(gone)
    kept = out / many_name(good[12], [*good, corrupt]) / "posts.csv"
    before = kept.stat()
    r = run_cli("run", "export-many", many_fleet[0], "--out-root", out, "--skip-unchanged", *MANY_FORMATS, "-q")
    assert r.returncode == 1, r.stderr
    statuses = {line["out"]: line["status"] for line in _runs(out)}
    assert statuses.pop(str(out / "corrupt")) == "failed"
    assert statuses.pop(str(gone)) == "published"
    assert set(statuses.values()) == {"unchanged"}
    after = kept.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert "1 published, 18 unchanged, 1 failed" in r.stderr


@pytest.mark.parametrize("event", ["posts.page", "published"])
def test_a_killed_worker_is_retried_and_published_once(many_fleet, many_singles, tmp_path, event):
    """SIGKILL a worker mid-export (``posts.page``) or just after its rename (``published``):
    the archive is run again and published once, with the reference's bytes."""
    _, good, _ = many_fleet
    chosen = good[7:12]  # bskyarchive and hand-made ones
    (tmp_path / "hook").mkdir()
    out = tmp_path / "out"
    kw = {"formats": ["csv", "json", "ndjson"], "workers": 2}
    tuning = Tuning(on_event=PauseOnce(str(tmp_path / "hook"), event))
    got = {}
    runner = threading.Thread(target=lambda: got.update(r=export_many(chosen, out, tuning=tuning, **kw)))
    runner.start()
    pid = paused_pid(tmp_path / "hook")
    published = {p.name: p.stat().st_ino for p in out.iterdir() if not p.name.startswith(".")}
    os.kill(pid, signal.SIGKILL)
    runner.join(timeout=240)
    result = got["r"]
    assert result.exit_code == 0, result.failed
    assert max(r.attempts for r in result.runs) == 2
    for archive in chosen:
        folder = out / many_name(archive, chosen)
        same_export(folder, many_singles[archive])
        if folder.name in published:  # published before the kill: not published again
            assert folder.stat().st_ino == published[folder.name]
    assert {p.name for p in out.iterdir()} == {many_name(a, chosen) for a in chosen} | {"runs.json"}
    if event == "published":
        assert len(published) >= 1


def test_retries_are_limited(many_fleet, tmp_path):
    """A worker that dies on every attempt: 1 + --max-retries attempts, then a failure; the others go on."""
    _, good, _ = many_fleet
    chosen = good[:3]
    tuning = Tuning(on_event=KillWhileExporting(many_name(good[0], chosen)))
    result = export_many(chosen, tmp_path / "out", tuning=tuning, workers=1, max_retries=1, formats=["csv"])
    assert [r.status for r in result.runs] == ["failed", "published", "published"]
    assert result.runs[0].attempts == 2 and "died" in (result.runs[0].error or "")
    assert result.runs[0].exit_code == 1 and result.exit_code == 1


def test_inputs_are_literal_paths_unless_a_glob_is_asked(fixture_archive, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    literal = src / "a[1]*.db"
    shutil.copy(fixture_archive, literal)
    shutil.copy(fixture_archive, src / "a1x.db")  # what "a[1]*.db" matches as a pattern
    weird = Path(os.fsdecode(bytes(src) + b"/caf\xe9.db"))
    shutil.copy(fixture_archive, weird)
    listing = tmp_path / "list.txt"
    listing.write_bytes(bytes(weird) + b"\n\n" + bytes(literal) + b"\r\n")
    out = tmp_path / "out"
    r = run_cli("run", "export-many", literal, "--from-file", listing, "--out-root", out, "-f", "csv", "-q")
    assert r.returncode == 0, r.stderr
    assert sorted(os.fsencode(p.name) for p in out.iterdir()) == [b"a[1]*", b"caf\xe9", b"runs.json"]
    r = run_cli("run", "export-many", "--glob", str(src / "a[1]*.db"), "--out-root", tmp_path / "g", "-q")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["a1x", "runs.json"]


def test_out_root_inside_the_input_folder_is_not_searched(fixture_archive, tmp_path):
    shutil.copy(fixture_archive, tmp_path / "one.db")
    out = tmp_path / "exports"
    out.mkdir()
    (out / "stray.db").write_bytes(b"")  # found (and refused: inside --out-root) if OUT_ROOT were searched
    for _ in range(2):  # the second run sees the first one's output inside the folder it searches
        r = run_cli("run", "export-many", tmp_path, "--out-root", out, "-f", "csv", "-q")
        assert r.returncode == 0, r.stderr
        assert [line["archive"] for line in _runs(out)] == [str(tmp_path / "one.db")]


@pytest.mark.parametrize(
    "args, message",
    [
        (["{inside}"], "is inside --out-root"),
        (["{missing}"], "no such archive or folder"),
        (["--glob", "{missing}*"], "matches no file"),
        (["{empty}"], "no archives to export"),
        (["{archive}", "--batch-bytes", "1K"], "--batch-bytes"),
    ],
)
def test_usage_errors_before_anything_is_exported(fixture_archive, tmp_path, args, message):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "empty").mkdir()
    shutil.copy(fixture_archive, out / "inside.db")
    paths = {"inside": out / "inside.db", "missing": tmp_path / "nope", "empty": tmp_path / "empty"}
    paths["archive"] = fixture_archive
    r = run_cli("run", "export-many", *[a.format(**paths) for a in args], "--out-root", out, "-q")
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and r.stderr.startswith("pipeline: error:")
    assert sorted(p.name for p in out.iterdir()) == ["inside.db"]


def test_library_rejects_per_archive_keywords(fixture_archive, tmp_path):
    with pytest.raises(UsageError, match="per archive"):
        export_many([fixture_archive], tmp_path, out=tmp_path / "x")
    with pytest.raises(UsageError, match="unexpected keyword"):
        export_many([fixture_archive], tmp_path, formatz=["csv"])


def test_ray_missing_is_one_clear_error(fixture_archive, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(UsageError, match=r"pip install 'pipeline\[ray\]'"):
        export_many([fixture_archive], tmp_path / "out", executor="ray")


def test_json_events(many_fleet, tmp_path):
    """--log-format json: run_start, one archive_end per archive (its runs.json line), run_end."""
    _, good, corrupt = many_fleet
    args = (good[0], good[9], corrupt, "--out-root", tmp_path / "out", "-f", "csv", "--log-format", "json", "-q")
    r = run_cli("run", "export-many", *args)
    assert r.returncode == 1, r.stderr
    events = [json.loads(line) for line in r.stderr.splitlines()]
    assert [e["event"] for e in events] == ["run_start", "archive_end", "archive_end", "archive_end", "run_end"]
    ends = {e["archive"]: e for e in events if e["event"] == "archive_end"}
    assert {k: v for k, v in ends[str(corrupt)].items() if k in ("status", "exit_code")} == {
        "status": "failed",
        "exit_code": 3,
    }
    runs = {line["archive"]: line for line in _runs(tmp_path / "out")}
    for archive, line in runs.items():
        assert {k: ends[archive][k] for k in line} == line
    assert events[-1]["exit_code"] == 1 and events[-1]["failed"] == 1 and events[-1]["published"] == 2


@pytest.mark.parametrize(
    "options",
    [
        ("-f", "csv", "-f", "parquet", "--compress", "zstd", "--split-rows", "500", "--csv-safe"),
        ("-f", "json", "-f", "ndjson", "--compress", "gzip", "--compress-level", "1", "--split-bytes", "64K"),
    ],
)
def test_the_output_options_reach_every_archive(fixture_archive, tmp_path, options):
    """--format parquet, --compress, --split-rows, --split-bytes and --csv-safe (each converted
    from its CLI text once, for export and export-many alike) give each archive's folder the
    bytes of a single export with the same options."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(fixture_archive, inputs / "one.db")
    r = run_cli("run", "export-many", inputs, "--out-root", tmp_path / "many", "--workers", "1", *options, "-q")
    assert r.returncode == 0, r.stderr
    ref = run_cli("run", "export", inputs / "one.db", "--out", tmp_path / "single", *options, "-q")
    assert ref.returncode == 0, ref.stderr
    same_export(tmp_path / "many" / "one", tmp_path / "single")
    assert len(list((tmp_path / "single").glob("posts-0000[12].*"))) >= 2  # split, so the options were applied


def test_the_command_on_ray(fixture_archive, tmp_path):
    """`--executor ray` from the command line: a local Ray instance of its own (2 CPUs), the
    same folders as single exports, and runs.json saying so."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'pipeline[ray]'); CI installs it")
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a", "b"):
        shutil.copy(fixture_archive, inputs / f"{name}.db")
    r = run_cli("run", "export-many", inputs, "--out-root", tmp_path / "many", "--executor", "ray", "--workers", "2",
                *MANY_FORMATS, "-q")  # fmt: skip
    assert r.returncode == 0, r.stderr
    ref = run_cli("run", "export", inputs / "a.db", "--out", tmp_path / "single", *MANY_FORMATS, "-q")
    assert ref.returncode == 0, ref.stderr
    same_export(tmp_path / "many" / "a", tmp_path / "single")
    runs = [json.loads(line) for line in (tmp_path / "many" / "runs.json").read_text().splitlines()]
    assert sorted((Path(x["archive"]).name, x["status"], x["attempts"]) for x in runs) == [
        ("a.db", "published", 1),
        ("b.db", "published", 1),
    ]


def test_an_error_naming_a_path_that_is_not_utf8_is_written(fixture_archive, tmp_path):
    """A corrupt archive whose name holds a byte that is not UTF-8: its error (which names it)
    is in runs.json as ``\\xNN``, the file is valid UTF-8 JSON, and no temporary file is left."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(fixture_archive, inputs / "good.db")
    bad = Path(os.fsdecode(os.fsencode(inputs) + b"/bad\xff.db"))
    bad.write_bytes(b"not a database at all")
    result = export_many([inputs], tmp_path / "out", formats=["csv"], types=["posts"], workers=1)
    assert result.exit_code == 1
    raw = (tmp_path / "out" / "runs.json").read_bytes()
    runs = [json.loads(line) for line in raw.decode("utf-8").splitlines()]
    [failed] = [r for r in runs if r["status"] == "failed"]
    assert "bad\\xff.db" in failed["error"] and failed["archive"].endswith("bad\\xff.db")
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")) == []


def test_a_hidden_archive_gets_a_folder_that_is_not_hidden(fixture_archive, tmp_path):
    """`.x.db`, given by name: its folder is `x-<hash>` (the hash: another `x.db` may come too)."""
    import hashlib

    hidden = tmp_path / ".x.db"
    shutil.copy(fixture_archive, hidden)
    result = export_many([hidden], tmp_path / "out", formats=["csv"], types=["follows"], workers=1)
    assert result.exit_code == 0
    digest = hashlib.sha256(os.fsencode(os.path.realpath(hidden))).hexdigest()[:8]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["runs.json", f"x-{digest}"]
