"""Atomic files, and the one check of paths read back from ensemblevi's bookkeeping."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_PREFIX = ".ensemblevi-tmp-"
MANIFEST = ".ensemblevi-manifest.json"
STAGE = ".ensemblevi-stage"
JOURNAL = ".ensemblevi-commit.json"
LOCK = ".ensemblevi-lock"
#: names inside an owned directory that belong to the bookkeeping, not to a result
BOOKKEEPING = (MANIFEST, STAGE, JOURNAL, LOCK)


class UnsafePathError(ValueError):
    """A path read from ensemblevi's bookkeeping leads outside the folder it belongs to."""


class OutputNotWritableError(ValueError):
    """The output directory cannot be created or written (permissions, a full disk, ...)."""


def contained(root: str | os.PathLike, relpath: str | os.PathLike, *, source: str = "") -> Path:
    """``root / relpath``, refused unless it lies strictly inside ``root`` (symlinks resolved).

    Every path that ensemblevi reads back from a file it wrote earlier (a manifest, a commit
    journal, a stage name, a checkpoint record) goes through here before it is used: such a
    file may have been crafted or damaged, and following it could move or delete a file
    outside the output directory.

    Parameters
    ----------
    root
        The folder the path must stay in (it may itself be a symbolic link).
    relpath
        The path as read: relative, without a way out of ``root``.
    source
        The file the path was read from, named in the error.

    Returns
    -------
    The path, ``root / relpath`` (not resolved: a link that stays inside is kept as a link).

    Raises
    ------
    UnsafePathError
        ``relpath`` is absolute, empty, not a string, or resolves (``..``, a symbolic link)
        to ``root`` itself or to a place outside it.
    """
    root = Path(root)
    where = f" (read from {source})" if source else ""
    if not isinstance(relpath, (str, os.PathLike)) or not os.fspath(relpath):
        raise UnsafePathError(
            f"{relpath!r}{where} is not a file path inside {root}. " + _UNSAFE_FIX.format(root=root)
        )
    rel = Path(relpath)
    if rel.is_absolute() or "\x00" in os.fspath(rel):
        raise UnsafePathError(
            f"{os.fspath(rel)!r}{where} is an absolute path, not one inside "
            f"{root}. " + _UNSAFE_FIX.format(root=root)
        )
    path = root / rel
    real_root = root.resolve()
    real = path.resolve()  # follows every symbolic link on the way, the last one too
    if real == real_root or real_root not in real.parents:
        raise UnsafePathError(
            f"{os.fspath(rel)!r}{where} leads outside {root} (to {real}). "
            + _UNSAFE_FIX.format(root=root)
        )
    return path


_UNSAFE_FIX = (
    "ensemblevi never writes such a path, so the folder's bookkeeping was edited "
    "or the folder holds a symbolic link pointing out of it; nothing was touched. "
    "Check {root} by hand, or choose another output directory."
)


def _fsync(path: Path) -> None:
    # without it a power cut after the rename can leave an empty file under the final name
    if path.is_file():
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` when the block succeeds.

    Parameters
    ----------
    path
        The file to write. Its folder is created if needed.
    overwrite
        Replace an existing file. With ``False`` an existing file raises
        :class:`FileExistsError` before anything is written.

    Examples
    --------
    >>> with atomic_file("table.csv") as tmp:  # doctest: +SKIP
    ...     frame.to_csv(tmp)
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{str(path)!r} exists; refusing to overwrite it. Choose another path or pass "
            "overwrite=True (--force on the command line)."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{path.name}"
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to the temporary file for {path}")
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            _remove(tmp)


def write_text(path: str | os.PathLike, text: str, *, overwrite: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically.

    Parameters
    ----------
    path
        The file to write.
    text
        Its content.
    overwrite
        Replace an existing file (else :class:`FileExistsError`).
    """
    with atomic_file(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, *, overwrite: bool = True) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically (unknown types as ``str``).

    Parameters
    ----------
    path
        The file to write.
    obj
        A JSON-serialisable object.
    overwrite
        Replace an existing file (else :class:`FileExistsError`).
    """
    return write_text(path, json.dumps(obj, indent=2, default=str), overwrite=overwrite)


def write_csv(frame, path: str | os.PathLike, *, index: bool = True, overwrite: bool = True):
    """Write a DataFrame to ``path`` as CSV atomically.

    Parameters
    ----------
    frame
        A :class:`pandas.DataFrame`.
    path
        The file to write.
    index
        Write the index as the first column.
    overwrite
        Replace an existing file (else :class:`FileExistsError`).
    """
    with atomic_file(path, overwrite=overwrite) as tmp:
        frame.to_csv(tmp, index=index)
    return Path(path)


def move_into(source: str | os.PathLike, target: str | os.PathLike) -> list[Path]:
    """Move every file below ``source`` to the same relative place below ``target``.

    Each file is renamed into place (atomic per file); files of ``target`` that ``source``
    does not hold are left alone, which is what makes this safe in a user's folder. Both
    must be on one file system (``source`` is meant to be a temporary folder beside
    ``target``).

    Parameters
    ----------
    source
        Folder of finished files.
    target
        Folder they go to (created if needed).

    Returns
    -------
    The relative paths moved.
    """
    source, target = Path(source), Path(target)
    moved = []
    for file in _files_below(source):
        rel = file.relative_to(source)
        if rel.parent != Path("."):  # a linked folder in target must not lead the file out
            contained(target, rel.parent)
        dest = target / rel  # a link in its place is replaced, never written through
        dest.parent.mkdir(parents=True, exist_ok=True)
        _fsync(file)
        os.replace(file, dest)
        moved.append(rel)
    return moved


def _files_below(folder: Path) -> list[Path]:
    """The files below ``folder``, sorted; a symbolic link there is refused (never ours)."""
    found = []
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            raise UnsafePathError(
                f"{p} is a symbolic link; ensemblevi writes none, so it was placed there by "
                "hand and is not followed. " + _UNSAFE_FIX.format(root=folder)
            )
        if not p.is_dir():
            found.append(p)
    return found


def clean_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Remove what killed writers left in ``directory``: only names starting with TMP_PREFIX.

    Parameters
    ----------
    directory
        Folder to clean (its sub-folders too); absent is fine.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for p in directory.rglob(f"{TMP_PREFIX}*"):
        try:  # only what lies inside: never through a link pointing out
            contained(directory, p.relative_to(directory))
        except UnsafePathError:
            continue
        _remove(p)
        found.append(p)
    return found


#: errors of writing (not of reading an input): a full disk, a read-only file system
_WRITE_ERRNOS = {
    errno.ENOSPC: "the disk is full (free space, or choose a folder on another disk)",
    errno.EDQUOT: "your disk quota is used up",
    errno.EROFS: "it lies on a read-only file system",
    errno.EFBIG: "a file grew beyond the size the system allows",
}
_PERMISSION = {
    errno.EACCES: "it is not writable for you (check its permissions)",
    errno.EPERM: "it is not writable for you (check its permissions)",
}


def _not_writable(
    path: Path, err: BaseException, permissions: bool = True
) -> OutputNotWritableError | None:
    """The named error for ``err`` if it is a failure to write (``None`` for anything else)."""
    if not isinstance(err, OSError) or isinstance(err, (FileExistsError, FileNotFoundError)):
        return None
    hints = {**_WRITE_ERRNOS, **(_PERMISSION if permissions else {})}
    if err.errno not in hints:
        return None
    why = os.strerror(err.errno)
    return OutputNotWritableError(
        f"cannot write the output directory {path}: {hints[err.errno]} ({why}: "
        f"{err.filename or path}). Nothing of an earlier result there was changed; choose "
        "another --out or fix the folder and rerun."
    )


@contextlib.contextmanager
def _writable(path: Path) -> Iterator[None]:
    """Turn an ``OSError`` of writing (permissions, a full disk) into a named error."""
    try:
        yield
    except OSError as err:
        named = _not_writable(path, err)
        if named is None:
            raise
        raise named from err
