"""One way to write files: atomic files, and output directories that ensemblevi owns.

Every writer of the package goes through here, so that the same rules hold everywhere:

- a file is written to a temporary name beside it and renamed into place
  (:func:`atomic_file`), so a reader sees the old file or the new one, never half of one;
- a command writes only into an :class:`OutputDirectory`: a directory it created (or that
  was empty), whose manifest lists the files it wrote. It refuses a non-empty directory it
  did not write, never removes a file that is not in its manifest, and stages a new result
  beside the old one, swapping it in only once the new result is complete;
- every temporary name starts with :data:`TMP_PREFIX`, so leftovers of a killed process
  can be told apart from a user's files and cleaned up safely.

This module imports nothing from the rest of the package (it is the lowest layer).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

TMP_PREFIX = ".ensemblevi-tmp-"
MANIFEST = ".ensemblevi-manifest.json"
STAGE = ".ensemblevi-stage"
JOURNAL = ".ensemblevi-commit.json"
LOCK = ".ensemblevi-lock"
#: names inside an owned directory that belong to the bookkeeping, not to a result
BOOKKEEPING = (MANIFEST, STAGE, JOURNAL, LOCK)


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
    for file in sorted(p for p in source.rglob("*") if not p.is_dir()):
        rel = file.relative_to(source)
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        _fsync(file)
        os.replace(file, dest)
        moved.append(rel)
    return moved


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
    found = [p for p in directory.rglob(f"{TMP_PREFIX}*")]
    for p in found:
        _remove(p)
    return found


class OutputDirectory:
    """A directory a command owns: it writes only there, and only removes what it wrote.

    Parameters
    ----------
    path
        The directory.
    command
        Name of the command that owns it (``"run"``, ``"train"``, ...). Another command's
        directory is refused.
    stage
        Name of the stage folder. A step that adds to a result (``de`` on a run) uses a
        stage of its own, so that it neither sees nor commits what an unfinished run left
        in the run's stage (e.g. a trained model kept for reuse).

    Notes
    -----
    The manifest (``.ensemblevi-manifest.json``) lists the owning command and every file
    (relative path) the command wrote. A new result is written into the stage
    (``.ensemblevi-stage/``) and committed: files are renamed into place, the files of the
    previous result that the new one does not hold are removed, then the manifest is
    rewritten. The commit is journalled, so a process killed in the middle of it is rolled
    forward by the next :meth:`claim`.
    """

    def __init__(self, path: str | os.PathLike, command: str, stage: str = STAGE) -> None:
        if not stage.startswith(STAGE):
            raise ValueError(f"a stage name starts with {STAGE!r}, got {stage!r}")
        self.path = Path(path)
        self.command = command
        self.stage_name = stage

    # ------------------------------------------------------------------ state
    @property
    def stage(self) -> Path:
        """The folder where the next result is assembled."""
        return self.path / self.stage_name

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def read_manifest(self) -> dict | None:
        """The manifest as a dict, or ``None`` where there is none."""
        try:
            return json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(
                f"{self.manifest_path} is damaged ({err}); ensemblevi will not write into "
                f"{self.path} until it is readable. Remove {self.path} by hand if its "
                "contents are not needed, or choose another output directory."
            ) from err

    @property
    def files(self) -> list[str]:
        """Relative paths of the files the current result holds."""
        manifest = self.read_manifest()
        return [] if manifest is None else list(manifest.get("files", []))

    # ------------------------------------------------------------------ claim
    def claim(self) -> OutputDirectory:
        """Create the directory or check that this command owns it; finish a broken commit.

        Raises
        ------
        FileExistsError
            The directory holds files ensemblevi did not write, or another command's output.
        """
        if self.path.exists() and not self.path.is_dir():
            raise FileExistsError(
                f"{self.path} is a file, not a directory; choose another output directory."
            )
        self.path.mkdir(parents=True, exist_ok=True)
        manifest = self.read_manifest()
        if manifest is None:
            foreign = sorted(p.name for p in self.path.iterdir())
            if foreign:
                shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
                raise FileExistsError(
                    f"{self.path} is not empty ({shown}) and was not written by ensemblevi; "
                    "ensemblevi writes only into a new or empty directory, or one it wrote "
                    "before, so that it never replaces or removes a file of yours. Choose "
                    "another output directory."
                )
            self._write_manifest([])
            return self
        if manifest.get("command") != self.command:
            raise FileExistsError(
                f"{self.path} holds the output of `ensemblevi {manifest.get('command')}`, not "
                f"of `ensemblevi {self.command}`; choose another output directory."
            )
        # a live writer's journal and temporaries are its own: leave them alone
        self._refuse_live_writer()
        if (self.path / JOURNAL).exists():
            self._roll_forward()
        clean_temporaries(self.path)
        return self

    def _write_manifest(self, files: Iterable[str]) -> None:
        record = {"command": self.command, "files": sorted(set(files))}
        write_json(self.manifest_path, record)

    # ------------------------------------------------------------------ staging
    def new_stage(self, keep: Iterable[str] = ()) -> Path:
        """An empty stage (a previous, unfinished one is removed: it is ours).

        Parameters
        ----------
        keep
            Top-level names in the previous stage that stay (e.g. ``"model"``: a trained
            model that a failed run left for the next one to reuse).
        """
        kept = set(keep)
        if self.stage.exists():
            for entry in self.stage.iterdir():
                if entry.name not in kept:
                    _remove(entry)
        self.stage.mkdir(parents=True, exist_ok=True)
        return self.stage

    def commit(self, keep: Iterable[str] = ()) -> list[str]:
        """Swap the stage in as the new result.

        Parameters
        ----------
        keep
            Relative paths of the previous result that stay (e.g. a reused model). Every
            other file of the previous result that the stage does not replace is removed.

        Returns
        -------
        The relative paths of the new result.
        """
        staged = sorted(
            str(p.relative_to(self.stage)) for p in self.stage.rglob("*") if not p.is_dir()
        )
        old = set(self.files)
        kept = {k for k in keep if k in old}
        new = sorted(set(staged) | kept)
        remove = sorted(old - set(new))
        journal = {"files": new, "remove": remove, "stage": self.stage_name}
        write_json(self.path / JOURNAL, journal)
        self._roll_forward()
        return new

    def _roll_forward(self) -> None:
        journal = json.loads((self.path / JOURNAL).read_text())
        # the stage being committed, which need not be this instance's
        stage = self.path / journal.get("stage", STAGE)
        if stage.exists():
            move_into(stage, self.path)
        for rel in journal["remove"]:
            target = self.path / rel
            target.unlink(missing_ok=True)
            _prune_empty(target.parent, self.path)
        self._write_manifest(journal["files"])
        (self.path / JOURNAL).unlink(missing_ok=True)
        if stage.exists():
            _remove(stage)

    def discard_stage(self) -> None:
        """Remove the stage (an abandoned new result); the current result is untouched."""
        if self.stage.exists():
            _remove(self.stage)

    # ------------------------------------------------------------------ lock
    @contextlib.contextmanager
    def locked(self) -> Iterator[OutputDirectory]:
        """Hold the directory's lock: a second process writing into it is refused.

        A lock left by a process that no longer runs is taken over.
        """
        lock = self.path / LOCK
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                break
            except FileExistsError:
                self._refuse_live_writer(own_too=True)
                lock.unlink(missing_ok=True)
        else:  # pragma: no cover - a race with another process taking over the same lock
            raise FileExistsError(f"could not lock {self.path}; try again.")
        try:
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            yield self
        finally:
            lock.unlink(missing_ok=True)

    def _refuse_live_writer(self, own_too: bool = False) -> None:
        """Raise ``FileExistsError`` if a running process (other than this one) holds the lock.

        Parameters
        ----------
        own_too
            Refuse this process's own lock as well (a second ``locked()`` in one process).
        """
        try:
            pid = int((self.path / LOCK).read_text().strip() or 0)
        except (OSError, ValueError):
            return
        if pid and _alive(pid) and (own_too or pid != os.getpid()):
            raise FileExistsError(
                f"{self.path} is being written by another ensemblevi process (pid "
                f"{pid}); wait for it to finish or choose another output directory."
            )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _prune_empty(folder: Path, root: Path) -> None:
    # a removed figure may leave figures/ empty; only folders below root, only if empty
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent
