"""Small file-writing helpers shared by the library, the tools and the benchmarks.

Kept free of project imports so that any layer (engine, explanation, tools) may use it.

Files are written atomically (:func:`atomic_write`): into a temporary file beside the target,
named ``.tmp-<name>.<random>`` (:data:`TEMPORARY_PREFIX`), flushed to the disk, then renamed over
the target, so that a reader sees the old file or the new one, never half of one. An error (a full
disk) removes the temporary file and leaves the old file as it was; only a killed process can
leave a temporary file behind, which :func:`remove_temporary_files` recognises and removes. The
temporary file is created like any other file, with mode ``0o666`` minus the process's umask.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterator
from typing import IO, Any

__all__ = [
    "LOCK_NAME", "TEMPORARY_PREFIX", "FolderInUseError", "atomic_write", "claim_folder", "held_folders", "names_file",
    "release_folder", "remove_temporary_files", "write_json",
]

logger = logging.getLogger(__name__)

TEMPORARY_PREFIX = ".tmp-"
"""How the name of an unfinished file of :func:`atomic_write` starts."""

LEGACY_TEMPORARY_SUFFIX = ".json.tmp"
"""How the temporary files of earlier versions of :func:`write_json` ended (``metrics.json.tmp``)."""


@contextlib.contextmanager
def names_file(path: str) -> Iterator[None]:
    """Gives an ``OSError`` raised in the block the file it concerns when the system call named
    none (a failed ``write()`` of a full disk or a file-size limit does not): the commands then
    report which file could not be written (``reid.cli.main.os_error_message``)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = os.fspath(path)
        raise


@contextlib.contextmanager
def atomic_write(path: str, binary: bool = False) -> Iterator[IO[Any]]:
    """Opens a temporary file beside ``path`` for writing; renames it to ``path`` when the block
    ends without an error.

    On an error (e.g. ``OSError`` ENOSPC, a full disk) the temporary file is removed, ``path`` is
    left as it was, the error is logged (one line: the file, the error, that the previous file is
    unchanged) and raised again.

    Args:
        path: the file to write (its folder must exist).
        binary: open in binary mode (``wb``) instead of UTF-8 text (``w``).

    Yields:
        The open file.
    """
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f"{TEMPORARY_PREFIX}{name}.{secrets.token_hex(4)}")
    try:
        with names_file(path):  # a failed write() names no file: name the one being written
            # os.open with 0o666: the umask applies, as for any file created with open().
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        if isinstance(exc, OSError):
            previous = "the previous file is unchanged" if os.path.exists(path) else "there was no previous file"
            logger.error("could not write %s (%s): %s; no partial file was left", path, exc, previous)
        raise
    _sync_folder(folder)


def _sync_folder(folder: str) -> None:
    """Flushes the folder's entry of a renamed file to the disk (POSIX; a no-op where a folder
    cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json(path: str, content: dict[str, Any]) -> None:
    """Writes ``content`` as indented JSON atomically (:func:`atomic_write`), so a reader never
    sees half a file and a failed write leaves the previous file intact."""
    with atomic_write(path) as handle:
        json.dump(content, handle, indent=2)


def remove_temporary_files(folder: str) -> list[str]:
    """Removes the unfinished files that an interrupted :func:`atomic_write` left in ``folder``
    (not in its subfolders): ``.tmp-*``, and ``*.json.tmp`` of earlier versions.

    Only call it when no other process is writing into ``folder``.

    Returns:
        The paths removed, sorted.
    """
    if not os.path.isdir(folder):
        return []
    removed = []
    with os.scandir(folder) as entries:
        for entry in entries:
            orphan = entry.name.startswith(TEMPORARY_PREFIX) or entry.name.endswith(LEGACY_TEMPORARY_SUFFIX)
            if orphan and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(entry.path)
                    removed.append(entry.path)
    return sorted(removed)


# -- one run per output folder --------------------------------------------------------------------

LOCK_NAME = ".reid.lock"
"""The lock file a command holds in its ``OUTPUT_DIR`` for as long as it runs."""

_HELD: dict[str, int] = {}  # real path of a folder -> the descriptor of its lock file


class FolderInUseError(RuntimeError):
    """Another live process holds the folder's lock (the message names it)."""


def held_folders() -> set[str]:
    """The folders this process holds the lock of."""
    return set(_HELD)


def claim_folder(folder: str, command: str) -> str | None:
    """Takes the lock of ``folder`` (created if needed) for this process: an exclusive
    ``flock`` on ``folder/.reid.lock``, which the operating system releases whenever the process
    ends, however it ends. The file names the holder (process id, host, command, start time).

    Re-entrant: a folder this process already holds is fine. A lock file left by a process that
    died without releasing it (killed) is taken over; the caller logs the line this returns.
    Where ``fcntl`` does not exist (Windows), nothing is locked.

    Returns:
        When a dead holder's lock was taken over, a line saying so (for the log, which the caller
        sets up after the lock is held, so that a refused command writes nothing into the folder);
        None otherwise.

    Raises:
        FolderInUseError: a live process holds it (its process id, command and start time).
        OSError: the folder cannot be created (e.g. the path is a file).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    os.makedirs(folder, exist_ok=True)
    key = os.path.realpath(folder)
    if key in _HELD:
        return None
    path = os.path.join(folder, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_lock(fd) or "another process"
        os.close(fd)
        raise FolderInUseError(
            f"{folder} is in use by {holder}: wait for it to end or stop it, or choose another OUTPUT_DIR"
        ) from None
    previous = _read_lock(fd)
    note = f"took over the lock of {folder} from {previous}, which ended without releasing it" if previous else None
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()} (reid {command}, started {started})".encode(), 0)
    _HELD[key] = fd
    return note


def release_folder(folder: str) -> None:
    """Releases this process's lock of ``folder`` (empties the lock file, so that nobody mistakes
    it for a dead holder's); nothing when it holds none."""
    fd = _HELD.pop(os.path.realpath(folder), None)
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
    os.close(fd)  # closing the descriptor releases the flock


def _read_lock(fd: int) -> str:
    with contextlib.suppress(OSError):
        return os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    return ""
