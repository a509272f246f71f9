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
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from .checkpoint import CHECKPOINTS, Checkpoints, fsync_path, read_json
from .errors import Interrupted, OutputError, UsageError
from .interrupts import ignored
from .tuning import CHECKPOINT_SECONDS

log = logging.getLogger("pipeline")

MANIFEST = "manifest.json"
TOOL = "pipeline"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


class Staging:
    """The folder an export is written into before it is published as ``out``.

    ``out`` is taken with symbolic links resolved: a link to an earlier export
    keeps pointing at the folder, which gets the new export.

    Staging folders of killed runs of the same ``out`` are removed, each with a
    warning on the ``pipeline`` logger; with ``resume``, the newest one that has
    checkpoints (or a manifest) is taken over instead (``resumed``), if it was made
    with this ``fingerprint``: otherwise UsageError, and nothing is removed.
    """

    def __init__(
        self,
        out: Path,
        fingerprint: dict[str, object] | None = None,
        resume: bool = False,
        checkpoint_seconds: float = CHECKPOINT_SECONDS,
    ):
        self.out = Path(os.path.realpath(out))
        self.published = False
        self.resumed: Path | None = None  # the killed run's staging folder this one continues
        _check_replaceable(self.out)
        parent = self.out.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.path = parent / f".{self.out.name}.staging-{os.getpid()}"
            stale = stale_folders(self.out, own=True)
            if resume:
                self.resumed = _take_over(self.out, stale, fingerprint or {}, self.path)
                if self.resumed is None:
                    log.warning("nothing to resume for %s (no staging folder of a killed run); exporting anew", out)
            for message, _ in _remove(self.out, [p for p in stale if p != self.resumed]):
                log.warning("%s", message)
            if self.resumed is None:
                self.path.mkdir()
        except OSError as e:
            raise OutputError(f"cannot write to {parent}: {e.strerror}") from None
        self.checkpoints = Checkpoints(self.path, checkpoint_seconds)
        if self.resumed is None:
            try:
                self.checkpoints.begin(fingerprint or {})
            except OSError as e:
                self.discard()
                raise OutputError(f"cannot write to {self.path}: {e.strerror}") from None

    def write_manifest(self, manifest: dict[str, object]) -> None:
        path = self.path / MANIFEST
        with open(path, "x", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())

    def publish(self, event: Callable[[str], None] | None = None) -> list[str]:
        """Make the staged export ``out``, replacing an earlier export there.

        Raises OSError (with ``out`` as it was) if the export cannot be put in
        place. Once it is in place the export has succeeded: a failure to
        remove the earlier export afterwards is returned as a warning, and an
        interrupt (SIGINT, SIGTERM, SIGHUP) that arrives while the folders are
        being swapped is taken as arriving after it (ignored; the run is done).
        """
        fsync_path(self.path)
        old: Path | None = None
        with ignored():
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
            if event is not None:
                event("published")
        warnings: list[str] = []
        try:
            self._after_swap(old, warnings)
        except (KeyboardInterrupt, Interrupted):  # published already: the interrupt stops only the cleanup
            if old is not None and old.exists():
                warnings.append(
                    f"interrupted while removing the earlier export; it is left at {old}"
                    f" ('pipeline clean {self.out}' removes it)"
                )
        return warnings

    def _after_swap(self, old: Path | None, warnings: list[str]) -> None:
        try:
            fsync_path(self.out.parent)
        except OSError as e:
            warnings.append(f"could not flush {self.out.parent} to disk: {e.strerror}")
        if old is not None:
            try:
                shutil.rmtree(old)
            except OSError as e:
                warnings.append(f"could not remove the earlier export, now at {old}: {e.strerror}")

    def discard(self) -> None:
        if not self.published:
            shutil.rmtree(self.path, ignore_errors=True)


def guard_inputs(out: Path, archive: Path, media_root: Path | None = None) -> None:
    """OutputError (exit 4) if publishing ``out`` would remove an input: the archive (and so
    its ``-wal``/``-journal`` beside it) or the media root given, inside ``out`` or ``out`` itself."""
    inputs = [("the archive", archive)] + ([("the media root", media_root)] if media_root is not None else [])
    for what, path in inputs:
        if inside(path, out):
            raise OutputError(
                f"--out {out} holds {what} ({path}); publishing would remove it: choose an output folder outside it"
            )


def inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` (symbolic links resolved) lies in ``folder`` or is it."""
    real, home = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return real == home or home in real.parents


def _check_replaceable(out: Path) -> None:
    """``out`` may be missing, an empty folder, or an earlier export of ours: a manifest of
    this tool (with its files and fingerprint), and nothing beside it but the files it lists
    (damaged or missing ones included: they are the tool's to write again), its metrics, and
    folders holding only listed files."""
    _check_publishable(out)
    try:
        if not out.exists():
            return
        if not out.is_dir():
            raise OutputError(f"output {out} exists and is not a folder")
        if next(out.iterdir(), None) is None:
            return
        why = _not_an_export(out)
    except OSError as e:
        raise OutputError(f"cannot read output folder {out}: {e.strerror}") from None
    if why is not None:
        raise OutputError(
            f"output folder {out} is not empty and is not an earlier export ({why}); choose another --out"
        )


def _check_publishable(out: Path) -> None:
    """OutputError before anything is exported if ``out`` cannot be published by a rename:
    a mount point, or a name too long for the staging folder's name beside it."""
    if os.path.ismount(out):
        raise OutputError(f"output {out} is a mount point, which a rename cannot replace; export into a folder in it")
    longest = len(os.fsencode(f".{out.name}.staging-{2**22}"))  # PIDs are at most 2**22 on Linux
    try:
        name_max = os.pathconf(out.parent if out.parent.exists() else ".", "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    if longest > name_max:
        raise OutputError(
            f"output folder name is too long ({len(os.fsencode(out.name))} bytes): its staging folder beside it"
            f" would pass the file system's {name_max}; choose a shorter --out"
        )


def _not_an_export(out: Path) -> str | None:
    """Why ``out`` is not an earlier export of this tool (None if it is one)."""
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (ValueError, FileNotFoundError, IsADirectoryError):
        return f"no readable {MANIFEST}"
    if (
        not isinstance(manifest, dict)
        or manifest.get("tool") != TOOL
        or not isinstance(manifest.get("files"), list)
        or not isinstance(manifest.get("fingerprint"), dict)
    ):
        return f"{MANIFEST} is not one of this tool's"
    listed = {MANIFEST, "metrics.json"}
    for f in manifest["files"]:
        if not isinstance(f, dict) or not isinstance(f.get("path"), str) or not isinstance(f.get("sha256"), str):
            return f"{MANIFEST} lists a file it does not describe"
        listed.add(f["path"])
    for entry in out.rglob("*"):
        rel = entry.relative_to(out).as_posix()
        if entry.is_symlink() or (not entry.is_dir() and rel not in listed):  # files, FIFOs, sockets
            return f"{rel} is not part of it"
        if entry.is_dir() and not any(p.startswith(rel + "/") for p in listed):
            return f"{rel}/ is not part of it"
    return None


def stale_folders(out: Path, own: bool = False) -> list[Path]:
    """What killed runs into ``out`` left beside it (their process is gone): staging folders
    (``.OUT.staging-<pid>``) and earlier exports moved aside while publishing (``.OUT.old-<pid>``).

    ``own``: also a folder named with this process's ID. A run about to make its staging
    folder passes it: one there already is a killed run's whose ID was reused (a
    container's PID 1, a restart after a power loss).
    """
    parent, name = out.parent, out.name
    found = []
    try:
        entries = [p for p in parent.iterdir() if p.name.startswith(f".{name}.")]  # names, never patterns
    except OSError:
        return []
    for p in entries:
        kind, _, pid_text = p.name[len(name) + 2 :].rpartition("-")
        if kind not in ("staging", "old") or not pid_text.isdigit():
            continue
        pid = int(pid_text)
        if (own and pid == os.getpid()) or (pid != os.getpid() and not _alive(pid)):
            found.append(p)
    return sorted(found)


def restore_aside(out: Path) -> list[str]:
    """If ``out`` is missing but a killed run had moved the earlier export aside, put it back."""
    out = Path(os.path.realpath(out))
    messages = []
    for p in stale_folders(out):
        if ".old-" in p.name and not out.exists():
            messages.append(_put_back(p, out))
            log.warning("%s", messages[-1])
    return messages


def _put_back(aside: Path, out: Path) -> str:
    os.rename(aside, out)
    return f"put back the earlier export {out}, which a killed run had moved to {aside.name}"


def clean(out: Path) -> tuple[list[str], bool]:
    """Remove what killed runs into ``out`` left (putting back an earlier export they had
    moved aside, if ``out`` is missing): one message per folder, and whether all went.
    ``pipeline clean``."""
    out = Path(os.path.realpath(out))
    done = _remove(out, stale_folders(out))
    return [m for m, _ in done], all(ok for _, ok in done)


def _remove(out: Path, folders: list[Path]) -> list[tuple[str, bool]]:
    """Remove (or put back) each folder: (message, whether it worked) for each."""
    messages = []
    for p in folders:
        if not p.exists():
            continue
        try:
            if ".old-" in p.name and not out.exists():
                messages.append((_put_back(p, out), True))
                continue
            resumable = (p / CHECKPOINTS).is_dir()
            shutil.rmtree(p)
        except OSError as e:
            messages.append((f"could not remove {p}, left by a killed run: {e.strerror or e}", False))
            continue
        what = "staging folder" if ".staging-" in p.name else "earlier export set aside"
        hint = " (--resume would have continued it)" if ".staging-" in p.name and resumable else ""
        messages.append((f"removed the {what} of a killed run: {p}{hint}", True))
    return messages


def _take_over(out: Path, stale: list[Path], fingerprint: dict[str, object], path: Path) -> Path | None:
    """The killed run's staging folder to resume, renamed to ``path`` (this process's): the
    newest with checkpoints or a manifest. UsageError if its fingerprint is not ours."""
    candidates = []
    for p in stale:
        if ".staging-" not in p.name:
            continue
        theirs: object = Checkpoints(p).fingerprint()
        if theirs is None:
            manifest = read_json(p / MANIFEST)
            theirs = manifest.get("fingerprint") if manifest else None
        if isinstance(theirs, dict):
            candidates.append((theirs.get("sha256") == fingerprint.get("sha256"), p.stat().st_mtime, p, theirs))
    if not candidates:
        return None
    same, _, found, theirs = max(candidates, key=lambda c: (c[0], c[1]))  # the newest of this fingerprint
    if not same:
        changed = differences(theirs, fingerprint)
        raise UsageError(
            f"cannot resume the export in {found}: {changed} since it was started; run without --resume to"
            " start over (that removes it)"
        )
    if found != path:
        os.rename(found, path)
    return found


def differences(theirs: dict[str, object], ours: dict[str, object]) -> str:
    """What differs between two fingerprints, in words: ``--formats was csv, json, is csv``..."""
    words = []
    for key in ("formats", "types", "ops", "include_media", "filters", "tool_version"):
        if theirs.get(key) != ours.get(key):
            words.append(f"{key.replace('_', '-')} was {_show(theirs.get(key))}, is {_show(ours.get(key))}")
    if theirs.get("archive") != ours.get("archive") or theirs.get("wal") != ours.get("wal"):
        words.append("the archive has changed (its path, size or modification time)")
    return "; ".join(words) or "its options differ"


def _show(value: object) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items() if v is not None) or "none"
    return str(value)


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
