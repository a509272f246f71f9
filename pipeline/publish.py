"""Staging folder, atomic publish, manifest, cleanup.

Files are written into ``.<OUT name>.staging-<pid>`` beside ``OUT`` (same file
system, so the final step is a rename). ``OUT`` is replaced only when every
file is complete and flushed to disk; on Linux an existing export is swapped
atomically (``renameat2(RENAME_EXCHANGE)``), elsewhere by two renames.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputError

MANIFEST = "manifest.json"
TOOL = "pipeline"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


class Staging:
    """The folder an export is written into before it is published as ``out``.

    ``out`` is taken with symbolic links resolved: a link to an earlier export
    keeps pointing at the folder, which gets the new export.
    """

    def __init__(self, out: Path):
        self.out = Path(os.path.realpath(out))
        self.published = False
        _check_replaceable(self.out)
        parent = self.out.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            _remove_stale(parent, self.out.name)
            self.path = parent / f".{self.out.name}.staging-{os.getpid()}"
            if self.path.exists():
                shutil.rmtree(self.path)
            self.path.mkdir()
        except OSError as e:
            raise OutputError(f"cannot write to {parent}: {e.strerror}") from None

    def write_manifest(self, manifest: dict[str, object]) -> None:
        path = self.path / MANIFEST
        with open(path, "x", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())

    def publish(self) -> list[str]:
        """Make the staged export ``out``, replacing an earlier export there.

        Raises OSError (with ``out`` as it was) if the export cannot be put in
        place. Once it is in place the export has succeeded: a failure to
        remove the earlier export afterwards is returned as a warning, and an
        interrupt (SIGINT, SIGTERM, SIGHUP) that arrives while the folders are
        being swapped is taken as arriving after it (ignored; the run is done).
        """
        _fsync_dir(self.path)
        old: Path | None = None
        with _signals_deferred():
            if self.out.exists():
                _check_replaceable(self.out)
                if _exchange(self.path, self.out):
                    old = self.path  # now holds the earlier export
                else:
                    old = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
                    os.rename(self.out, old)
                    try:
                        os.rename(self.path, self.out)
                    except OSError:
                        os.rename(old, self.out)  # put the earlier export back
                        raise
            else:
                os.rename(self.path, self.out)
            self.published = True
        warnings = []
        try:
            _fsync_dir(self.out.parent)
        except OSError as e:
            warnings.append(f"could not flush {self.out.parent} to disk: {e.strerror}")
        if old is not None:
            try:
                shutil.rmtree(old)
            except OSError as e:
                warnings.append(f"could not remove the earlier export, now at {old}: {e.strerror}")
        return warnings

    def discard(self) -> None:
        if not self.published:
            shutil.rmtree(self.path, ignore_errors=True)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold off SIGINT/SIGTERM/SIGHUP handlers (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    wanted = [s for s in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, s)]
    saved = {s: signal.signal(getattr(signal, s), signal.SIG_IGN) for s in wanted}
    try:
        yield
    finally:
        for s, handler in saved.items():
            if handler is not None:  # None: set outside Python, cannot be put back from here
                signal.signal(getattr(signal, s), handler)


def _check_replaceable(out: Path) -> None:
    """``out`` may be missing, an empty folder, or an earlier export of ours."""
    try:
        if not out.exists():
            return
        if not out.is_dir():
            raise OutputError(f"output {out} exists and is not a folder")
        if next(out.iterdir(), None) is None:
            return
        try:
            manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
            ours = isinstance(manifest, dict) and manifest.get("tool") == TOOL
        except (ValueError, FileNotFoundError, IsADirectoryError):
            ours = False
    except OSError as e:
        raise OutputError(f"cannot read output folder {out}: {e.strerror}") from None
    if not ours:
        raise OutputError(f"output folder {out} is not empty and holds no earlier export; choose another --out")


def _remove_stale(parent: Path, name: str) -> None:
    """Clean up after killed runs (their process is gone): remove staging folders;
    put back an earlier export a run had moved aside, if ``name`` is missing."""
    for p in [*parent.glob(f".{name}.staging-*"), *parent.glob(f".{name}.old-*")]:
        try:
            pid = int(p.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        if pid == os.getpid() or _alive(pid):
            continue
        if ".old-" in p.name and not (parent / name).exists():
            os.rename(p, parent / name)
        else:
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
