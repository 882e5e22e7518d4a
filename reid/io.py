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
from collections.abc import Iterator
from typing import IO, Any

__all__ = ["TEMPORARY_PREFIX", "atomic_write", "remove_temporary_files", "write_json"]

logger = logging.getLogger(__name__)

TEMPORARY_PREFIX = ".tmp-"
"""How the name of an unfinished file of :func:`atomic_write` starts."""

LEGACY_TEMPORARY_SUFFIX = ".json.tmp"
"""How the temporary files of earlier versions of :func:`write_json` ended (``metrics.json.tmp``)."""


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
