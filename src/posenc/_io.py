"""Small file helpers shared by the model and the lab."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["CHECKED_MAGIC", "DamagedFileError", "FolderLock", "FolderLockedError", "atomic_write_bytes",
           "checked_bytes", "read_checked", "remove_stale_tmp"]

# A checked file: this line, the sha256 of the payload in hex and a newline, then the payload (a torch.save zip).
CHECKED_MAGIC = b"posenc-checked/1 sha256 "
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's zip format: files written before checksums were added


class DamagedFileError(ValueError):
    """A file that is not what it should be: empty, truncated, corrupted, or not the kind of file expected."""


class FolderLockedError(RuntimeError):
    """Another process holds the folder's lock (another sweep writes into the same output folder)."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync and rename: readers see the old or the new file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; results are meant to be shared like any other file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable (power loss right after it must not resurrect the old file)
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # platforms without directory handles
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_json(path: str | os.PathLike, payload: dict) -> None:
    """Write ``payload`` as indented JSON to ``path`` atomically, creating its folder (``default=str`` for the rest)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(payload, indent=1, default=str) + "\n").encode())


def checked_bytes(payload: bytes) -> bytes:
    """``payload`` behind a header carrying its sha256, for :func:`read_checked` to verify."""
    return CHECKED_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def read_checked(path: str | os.PathLike, what: str, hint: str, *, legacy: bool = True) -> bytes:
    """The payload of a file written with :func:`checked_bytes`, after checking its sha256.

    Raises :class:`DamagedFileError` naming ``path``, what is wrong and ``hint`` (what to do) for an empty,
    truncated, corrupted or foreign file. ``legacy``: a bare torch.save zip (written before checksums) is returned
    unchecked. A missing file stays ``FileNotFoundError``.
    """
    path = Path(path)
    if path.is_dir():
        raise DamagedFileError(f"{path} is a folder, not a {what}; {hint}")
    data = path.read_bytes()
    if data.startswith(CHECKED_MAGIC):
        header, newline, payload = data[len(CHECKED_MAGIC):].partition(b"\n")
        if not newline or len(header) != 64:
            raise DamagedFileError(f"{path} is a damaged {what} (its checksum header is cut off or altered); {hint}")
        if hashlib.sha256(payload).hexdigest().encode() != header:
            raise DamagedFileError(f"{path} is a damaged {what}: its sha256 does not match the one written with it "
                                   f"({len(payload)} bytes; truncated or corrupted on disk); {hint}")
        return payload
    if legacy and data.startswith(_ZIP_MAGIC):
        return data
    kind = "empty" if not data else "not a posenc file (it does not start with the posenc header)"
    raise DamagedFileError(f"{path} is not a readable {what}: {kind}; {hint}")


def remove_stale_tmp(folder: str | os.PathLike, prefix: str = ".") -> list[Path]:
    """Delete the temporary files that killed :func:`atomic_write_bytes` calls left in ``folder`` (not recursive).

    Only call it while no other process may be writing there (under a :class:`FolderLock`): a live write's temporary
    file has the same name pattern. ``prefix`` narrows the names (``".results.jsonl."``). Returns what was removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.iterdir():
        if p.name.startswith(prefix) and p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


class FolderLock:
    """An exclusive OS lock on ``folder/.lock`` (``fcntl.flock``), released when the holder exits or is killed.

    The lock file holds the holder's PID and command line, so a refused second process can say who holds it.
    Where ``fcntl`` does not exist (Windows) the lock is a no-op.
    """

    def __init__(self, folder: str | os.PathLike, what: str = "sweep") -> None:
        self.path = Path(folder) / ".lock"
        self.what = what
        self._fd: int | None = None

    def __enter__(self) -> "FolderLock":
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = ""
            for _ in range(50):  # the holder writes its PID right after taking the lock: give it a moment
                holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
                if holder:
                    break
                time.sleep(0.01)
            holder = holder or "an unknown process"
            os.close(fd)
            raise FolderLockedError(f"{self.path.parent} is in use by another {self.what} ({holder}); wait for it "
                                    f"to finish (or stop it), or choose another --out.") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"PID {os.getpid()}: {' '.join(sys.argv)}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock; the file stays (unlinking it would race a newcomer)
            self._fd = None
