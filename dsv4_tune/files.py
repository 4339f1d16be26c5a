"""Writing a file a user named: whole or not at all, readable as the user's umask says, and errors
that name the user's path (pure Python, importable from every layer).

A policy is shipped and read by a serving process under another user, so a new file gets mode
0666 less the umask (as ``open`` would give it), never ``mkstemp``'s 0600; a file replaced keeps
its mode.  The folder must exist: a mistyped ``--out`` fails instead of growing folders.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path


def _named(e: OSError, path: Path) -> OSError:
    """``e`` as the user would read it: about ``path``, not the hidden temporary file."""
    return type(e)(e.errno, e.strerror or str(e), str(path))


def check_folder(path: Path) -> None:
    """FileNotFoundError naming ``path`` when its folder does not exist (nothing is created)."""
    if not path.parent.is_dir():
        why = f"{path.parent} is not a folder" if path.parent.exists() else \
            f"its folder {path.parent} does not exist (create it first)"
        raise FileNotFoundError(errno.ENOENT, why, str(path))


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a new empty file beside ``path`` to write; on success it is renamed over ``path``, on any
    failure it (and any ``<name>-wal`` / ``-shm`` SQLite left beside it) is removed and ``path`` is
    untouched."""
    path = Path(path)
    check_folder(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # the umask applies, as for open()
    except OSError as e:
        raise _named(e, path) from None
    try:
        yield tmp
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))  # a replaced file keeps its mode
        os.replace(tmp, path)
    except OSError as e:
        if e.filename not in (str(tmp), tmp):  # about another file (an input): its own name is right
            raise
        raise _named(e, path) from None
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
            leftover.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through :func:`replacing`."""
    path = Path(path)
    with replacing(path) as tmp:
        tmp.write_text(text)
    return path
