"""export-many on Ray, and archives as Ray Datasets: one local Ray session (2 CPUs) for the module.

References as in test_many.py: ``pipeline run export`` of each archive alone; rows
read back with the standard library's csv module.
"""

from __future__ import annotations

import csv
import os
import signal
import threading

import pytest
from conftest import many_name, same_export

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'pipeline[ray]'); CI installs it")

import many_hooks  # noqa: E402
from many_hooks import PauseOnce, paused_pid  # noqa: E402

from pipeline import Filters, Tuning  # noqa: E402
from pipeline.many import export_many  # noqa: E402
from pipeline.ray import read_archive, runtime_env  # noqa: E402

FORMATS = ["csv", "json", "ndjson"]


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    """Ray takes seconds to start: one local instance for the module, shut down after it."""
    ray.init(num_cpus=2, runtime_env=runtime_env(), include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(many_hooks)  # the test hooks: not importable on Ray's workers
    yield
    ray.shutdown()


def test_ray_fleet_as_single_exports(many_fleet, many_singles, tmp_path):
    root, good, corrupt = many_fleet
    out = tmp_path / "out"
    result = export_many([root], out, executor="ray", formats=FORMATS)
    assert result.exit_code == 1
    [bad] = result.failed
    assert (bad.exit_code, bad.attempts) == (3, 1) and bad.archive == str(corrupt)  # reported, not retried
    everything = [*good, corrupt]
    for archive in good:
        same_export(out / many_name(archive, everything), many_singles[archive])
    assert {p.name for p in out.iterdir()} == {many_name(a, everything) for a in good} | {"runs.json"}
    assert len((out / "runs.json").read_text().splitlines()) == 20


def test_ray_killed_worker_is_retried_and_published_once(many_fleet, many_singles, tmp_path):
    _, good, _ = many_fleet
    chosen = good[5:9]
    (tmp_path / "hook").mkdir()
    out = tmp_path / "out"
    tuning = Tuning(on_event=PauseOnce(str(tmp_path / "hook")))
    got = {}

    def run() -> None:
        got["r"] = export_many(chosen, out, executor="ray", tuning=tuning, formats=FORMATS)

    runner = threading.Thread(target=run)
    runner.start()
    os.kill(paused_pid(tmp_path / "hook"), signal.SIGKILL)  # a Ray worker, asleep in its first page
    runner.join(timeout=240)
    result = got["r"]
    assert result.exit_code == 0, result.failed
    assert sorted(r.attempts for r in result.runs) == [1, 1, 1, 2]  # Ray loses only the killed task
    for archive in chosen:
        same_export(out / many_name(archive, chosen), many_singles[archive])
    assert {p.name for p in out.iterdir()} == {many_name(a, chosen) for a in chosen} | {"runs.json"}


def _csv_rows(path) -> list[tuple[str, ...]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        return sorted(tuple(row) for row in list(csv.reader(f))[1:])


def _as_csv(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@pytest.mark.parametrize("which, record_type", [(0, "posts"), (9, "posts"), (18, "posts"), (2, "likes")])
def test_read_archive_gives_the_rows_of_the_export(many_fleet, many_singles, monkeypatch, which, record_type):
    import pipeline.ray

    monkeypatch.setattr(pipeline.ray, "MIN_TASK_ROWS", 25)  # several read tasks (rowid ranges) on a small archive
    _, good, _ = many_fleet
    archive = good[which]
    ds = read_archive(archive, record_type, override_num_blocks=3)
    rows = sorted(tuple(_as_csv(v) for v in row.values()) for row in ds.take_all())
    assert rows == _csv_rows(many_singles[archive] / f"{record_type}.csv")


def test_read_archive_with_filters(many_fleet, tmp_path):
    from conftest import run_cli

    _, good, _ = many_fleet
    archive = good[10]
    r = run_cli("run", "export", archive, "--out", tmp_path / "o", "-f", "csv", "--types", "posts",
                "--since", "2023-06-01", "--until", "2024-06-30", "-q")  # fmt: skip
    assert r.returncode == 0, r.stderr
    ds = read_archive(archive, "posts", Filters.parse(since="2023-06-01", until="2024-06-30"))
    rows = sorted(tuple(_as_csv(v) for v in row.values()) for row in ds.take_all())
    expected = _csv_rows(tmp_path / "o" / "posts.csv")
    assert rows == expected and len(expected) > 0
