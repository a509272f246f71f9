"""Staging folder, atomic publish, manifest, cleanup.

Files are written into ``.<OUT name>.staging-<pid>`` beside ``OUT`` (same file
system, so the final step is a rename). ``OUT`` is replaced only when every
file is complete and flushed to disk; on Linux an existing export is swapped
atomically (``renameat2(RENAME_EXCHANGE)``), elsewhere by two renames.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import shutil
from pathlib import Path

from .errors import OutputError

MANIFEST = "manifest.json"
TOOL = "pipeline"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


class Staging:
    """The folder an export is written into before it is published as ``out``."""

    def __init__(self, out: Path):
        self.out = out.absolute()
        _check_replaceable(self.out)
        parent = self.out.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.path = parent / f".{self.out.name}.staging-{os.getpid()}"
            if self.path.exists():
                shutil.rmtree(self.path)
            self.path.mkdir()
        except OSError as e:
            raise OutputError(f"cannot write to {parent}: {e.strerror}") from None
        _remove_stale(parent, self.out.name)

    def write_manifest(self, manifest: dict[str, object]) -> None:
        path = self.path / MANIFEST
        with open(path, "x", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())

    def publish(self) -> None:
        """Make the staged export ``out``, replacing an earlier export there."""
        _fsync_dir(self.path)
        if self.out.exists():
            _check_replaceable(self.out)
            if _exchange(self.path, self.out):
                shutil.rmtree(self.path)  # now holds the earlier export
            else:
                old = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
                os.rename(self.out, old)
                os.rename(self.path, self.out)
                shutil.rmtree(old)
        else:
            os.rename(self.path, self.out)
        _fsync_dir(self.out.parent)

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _check_replaceable(out: Path) -> None:
    """``out`` may be missing, an empty folder, or an earlier export of ours."""
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputError(f"output {out} exists and is not a folder")
    entries = list(out.iterdir())
    if not entries:
        return
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        ours = isinstance(manifest, dict) and manifest.get("tool") == TOOL
    except (OSError, ValueError):
        ours = False
    if not ours:
        raise OutputError(f"output folder {out} is not empty and holds no earlier export; choose another --out")


def _remove_stale(parent: Path, name: str) -> None:
    """Remove staging folders left by killed runs (their process is gone)."""
    for p in parent.glob(f".{name}.staging-*"):
        try:
            pid = int(p.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where unsupported."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
