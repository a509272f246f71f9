"""Checkpoints written in the background: one waits per stream, however slow the disk."""

from __future__ import annotations

import json
import threading

from pipeline import checkpoint
from pipeline.checkpoint import Checkpoints


def test_a_checkpoint_not_yet_written_is_replaced_by_the_next(tmp_path, monkeypatch):
    """Queued checkpoints of a sort with many files once held 3 GB: a stream's newer one replaces
    its older one that is still waiting, and only the written ones' ``then`` runs."""
    disk = threading.Event()
    real = checkpoint.fsync_path

    def slow_disk(path):
        disk.wait(10)
        real(path)

    monkeypatch.setattr(checkpoint, "fsync_path", slow_disk)
    checkpoints = Checkpoints(tmp_path)
    checkpoints.folder.mkdir()
    named = tmp_path / "part.arrow"
    named.write_bytes(b"x")
    ran: list[tuple[str, int]] = []
    for n in range(1, 51):
        for stream in ("posts", "likes"):
            checkpoints.save_later(stream, {"n": n}, [named], lambda s=stream, n=n: ran.append((s, n)))
    disk.set()
    checkpoints.flush()
    checkpoints.close()
    for stream in ("posts", "likes"):
        assert json.loads((checkpoints.folder / f"{stream}.json").read_text()) == {"n": 50}
        mine = [n for s, n in ran if s == stream]
        assert mine[-1] == 50 and len(mine) <= 2, mine  # the first (being written) and the last
