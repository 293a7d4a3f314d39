"""Atomic file and folder writes: a reader sees the old content or the new, never a mix.

Files: the bytes go to a temp file in the same folder (so the rename never crosses file
systems), are flushed and fsynced, and `os.replace` puts them in place; the folder is then
fsynced so the rename itself survives a power cut (best effort where folders cannot be
opened, e.g. Windows).

Folders: `staged_directory` yields a temp folder beside the final one; the caller fills
it, and only if the block finishes does it become `final_path` (one rename). A kill
before then leaves `final_path` untouched plus a hidden `.<name>.staging-*` folder
that is safe to delete.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_writer", "fsync_dir", "staged_directory", "write_bytes_atomic", "write_json_atomic",
           "write_text_atomic"]


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a folder so renames and new entries in it are durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows cannot open folders; its renames are durable enough here
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Yield a binary handle whose contents replace `path` when the block exits cleanly
    (for writers that stream, e.g. a token cache). If the block raises, the temp file is
    removed and `path` keeps whatever it had before. The parent folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A leading dot and a .tmp suffix keep half-written files out of globs like *.bin.
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    # Mode 0o666 lets the umask set permissions as for an ordinary new file (mkstemp would
    # make it 0o600); O_EXCL refuses to reuse an existing name.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (temp file beside it, fsync, os.replace). Returns path."""
    with atomic_writer(path) as handle:
        handle.write(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """`write_bytes_atomic` of UTF-8 text (newlines written as given, never translated)."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj) -> Path:
    """`obj` as indented, key-sorted JSON plus a final newline, written atomically.

    NaN and infinities are refused (ValueError): they are not JSON and other readers
    would reject the file.
    """
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"
    return write_text_atomic(path, text)


def _fsync_tree(root: Path) -> None:
    """fsync every file and folder under root (the staged content must be durable before
    the rename that publishes it, or a power cut could publish empty files)."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(folder)


@contextlib.contextmanager
def staged_directory(final_path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temp folder beside `final_path`; on success it becomes `final_path`.

        with staged_directory("runs/b") as tmp:
            (tmp / "x.json").write_text("{}")
        # runs/b now holds x.json; had the block raised, runs/b would not exist

    - The parent folder of `final_path` is created if needed.
    - If the block raises, the temp folder is removed and `final_path` is untouched.
    - An existing `final_path` is refused (FileExistsError, before the block runs) unless
      `overwrite=True`; then it is replaced only after the block succeeds: the old one is
      renamed aside, the new one renamed in, and the old one deleted. Between those two
      renames (microseconds) `final_path` does not exist; a kill there leaves the old
      content in a hidden `.<name>.replaced-*` folder beside it.
    - One writer per `final_path`: nothing here locks against a concurrent writer.
    """
    final = Path(final_path)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists (pass overwrite=True to replace it)")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.staging-"))
    try:
        yield tmp
        _fsync_tree(tmp)
        if not final.exists() and not final.is_symlink():
            os.rename(tmp, final)
        elif not overwrite:  # appeared while the block ran
            raise FileExistsError(f"{final} was created by someone else while it was staged")
        else:
            aside = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.replaced-"))
            old = aside / "old"
            os.rename(final, old)
            try:
                os.rename(tmp, final)
            except BaseException:
                os.rename(old, final)
                raise
            shutil.rmtree(aside, ignore_errors=True)
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
