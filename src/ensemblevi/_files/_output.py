"""Output directories a command owns: claim, stage, commit, lock (:func:`staged_output`)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from ._atomic import (
    _UNSAFE_FIX,
    BOOKKEEPING,
    JOURNAL,
    LOCK,
    MANIFEST,
    STAGE,
    TMP_PREFIX,
    UnsafePathError,
    _files_below,
    _not_writable,
    _remove,
    _writable,
    clean_temporaries,
    contained,
    move_into,
    write_json,
)


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
    forward by the next :meth:`claim`. Every path read back from the manifest or the
    journal is checked with :func:`contained` before any file is touched.
    """

    def __init__(self, path: str | os.PathLike, command: str, stage: str = STAGE) -> None:
        if not stage.startswith(STAGE) or "/" in stage or "\\" in stage:
            raise ValueError(f"a stage name starts with {STAGE!r} and has no '/', got {stage!r}")
        self.path = Path(path)
        self.command = command
        self.stage_name = stage
        #: the directory was created (or was empty) at this instance's claim
        self.created = False
        #: a commit happened (staged_output then does not commit again)
        self.committed = False
        #: the command has nothing to write after all (staged_output does not commit)
        self.abandoned = False

    # ------------------------------------------------------------------ state
    @property
    def stage(self) -> Path:
        """The folder where the next result is assembled (checked: inside the directory)."""
        return contained(self.path, self.stage_name, source="the stage name")

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def read_manifest(self) -> dict | None:
        """The manifest as a dict, or ``None`` where there is none.

        Raises
        ------
        ValueError
            The manifest is damaged.
        UnsafePathError
            It lists a path outside the directory.
        """
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(
                f"{self.manifest_path} is damaged ({err}); ensemblevi will not write into "
                f"{self.path} until it is readable. Remove {self.path} by hand if its "
                "contents are not needed, or choose another output directory."
            ) from err
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files", []), list):
            raise ValueError(
                f"{self.manifest_path} is damaged (not an ensemblevi manifest); "
                f"remove {self.path} by hand if its contents are not needed, or "
                "choose another output directory."
            )
        for rel in manifest.get("files", []):
            contained(self.path, rel, source=str(self.manifest_path))
        return manifest

    @property
    def files(self) -> list[str]:
        """Relative paths of the files the current result holds."""
        manifest = self.read_manifest()
        return [] if manifest is None else list(manifest.get("files", []))

    # ------------------------------------------------------------------ claim
    def claim(self) -> OutputDirectory:
        """Create the directory or check that this command owns it; finish a broken commit.

        Every path its bookkeeping names is checked before anything is touched.

        Raises
        ------
        FileExistsError
            The directory holds files ensemblevi did not write, or another command's output.
        UnsafePathError
            Its manifest, journal or stage leads outside it.
        OutputNotWritableError
            It cannot be created or written.
        """
        if self.path.exists() and not self.path.is_dir():
            raise FileExistsError(
                f"{self.path} is a file, not a directory; choose another output directory."
            )
        with _writable(self.path):
            existed = self.path.exists()
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
            with _writable(self.path):
                try:
                    self._write_manifest([])
                except BaseException:
                    if not existed:  # a new folder we could not write in: not left behind
                        _remove_if_only_bookkeeping(self.path)
                    raise
            self.created = True
            return self
        if manifest.get("command") != self.command:
            raise FileExistsError(
                f"{self.path} holds the output of `ensemblevi {manifest.get('command')}`, not "
                f"of `ensemblevi {self.command}`; choose another output directory."
            )
        self.stage  # noqa: B018 - checks the stage before anything below touches it
        journal = self._read_journal()  # checked in full before the roll-forward moves a file
        # a live writer's journal and temporaries are its own: leave them alone
        self._refuse_live_writer()
        with _writable(self.path):
            if journal is not None:
                self._roll_forward(journal)
            clean_temporaries(self.path)
        return self

    def _write_manifest(self, files: Iterable[str]) -> None:
        record = {"command": self.command, "files": sorted(set(files))}
        write_json(self.manifest_path, record)

    def _read_journal(self) -> dict | None:
        """The commit journal, every path in it checked; ``None`` where there is none."""
        path = self.path / JOURNAL
        try:
            journal = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(
                f"{path} is damaged ({err}); remove {self.path} by hand if its "
                "contents are not needed, or choose another output "
                "directory."
            ) from err
        ok = isinstance(journal, dict) and all(
            isinstance(journal.get(k), list) for k in ("files", "remove")
        )
        stage = journal.get("stage", STAGE) if ok else None
        if not ok or not isinstance(stage, str) or not stage.startswith(STAGE) or "/" in stage:
            raise UnsafePathError(
                f"{path} is not a commit journal ensemblevi writes (its "
                f"stage {stage!r} is not an ensemblevi stage). "
                + _UNSAFE_FIX.format(root=self.path)
            )
        contained(self.path, stage, source=str(path))
        for rel in journal["files"] + journal["remove"]:
            contained(self.path, rel, source=str(path))
        return journal

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
        stage = self.stage
        with _writable(self.path):
            if stage.exists():
                for entry in stage.iterdir():
                    if entry.name not in kept or entry.is_symlink():
                        _remove(entry)
            stage.mkdir(parents=True, exist_ok=True)
        return stage

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
        stage = self.stage
        staged = sorted(str(p.relative_to(stage)) for p in _files_below(stage))
        old = set(self.files)
        kept = {k for k in keep if k in old}
        new = sorted(set(staged) | kept)
        remove = sorted(old - set(new))
        journal = {"files": new, "remove": remove, "stage": self.stage_name}
        with _writable(self.path):
            write_json(self.path / JOURNAL, journal)
            self._roll_forward(self._read_journal())
        self.committed = True
        return new

    def _roll_forward(self, journal: dict) -> None:
        # the stage being committed, which need not be this instance's; every path in the
        # journal was checked by _read_journal
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
        stage = self.stage
        if stage.exists() or stage.is_symlink():
            _remove(stage)

    def abandon(self) -> None:
        """Mark the stage as not to be committed (the command found nothing to do)."""
        self.abandoned = True

    def discard_if_new(self) -> None:
        """Remove the directory again if this claim created it and it holds no result.

        Called when a command fails before its first commit: a new output folder is not
        left behind holding only bookkeeping.
        """
        if self.created and not self.files and not _holds_files(self.stage):
            _remove_if_only_bookkeeping(self.path)

    # ------------------------------------------------------------------ lock
    @contextlib.contextmanager
    def locked(self) -> Iterator[OutputDirectory]:
        """Hold the directory's lock: a second process writing into it is refused.

        A lock left by a process that no longer runs is taken over.
        """
        lock = self.path / LOCK
        for _ in range(2):
            try:
                with _writable(self.path):
                    fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                break
            except FileExistsError:
                self._refuse_live_writer(own_too=True)
                lock.unlink(missing_ok=True)  # a link is removed, never what it points to
        else:  # pragma: no cover - a race with another process taking over the same lock
            raise FileExistsError(f"could not lock {self.path}; try again.")
        try:
            try:
                os.write(fd, str(os.getpid()).encode())
            finally:
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
        lock = self.path / LOCK
        if lock.is_symlink():  # never read through a link: ensemblevi writes none
            return
        try:
            pid = int(lock.read_text().strip() or 0)
        except (OSError, ValueError):
            return
        if pid and _alive(pid) and (own_too or pid != os.getpid()):
            raise FileExistsError(
                f"{self.path} is being written by another ensemblevi process (pid "
                f"{pid}); wait for it to finish or choose another output directory."
            )


@contextlib.contextmanager
def staged_output(
    path: str | os.PathLike,
    command: str,
    *,
    stage: str = STAGE,
    replace: bool = True,
    keep_stage: Iterable[str] | None = None,
    keep_files: Callable[[OutputDirectory], Iterable[str]] | None = None,
    on_claimed: Callable[[OutputDirectory], None] | None = None,
) -> Iterator[OutputDirectory]:
    """Write one result into an owned directory: claim, lock, stage, commit or discard.

    The one pattern every command uses. The block receives the claimed, locked
    :class:`OutputDirectory`, whose stage (``out.stage``) exists; it writes its result
    there. When the block ends normally the stage is committed (unless the block committed
    itself, e.g. inside a section that defers interrupts, or called ``out.abandon()``:
    nothing to write after all); when it raises, the stage is removed (or,
    with ``keep_stage``, kept where it holds something worth keeping, e.g. a trained
    model), the previous result stays whole, the lock goes, and a directory this call
    created is removed again if it still holds no result.

    Parameters
    ----------
    path
        The output directory.
    command
        The command that owns it.
    stage
        The stage's name (see :class:`OutputDirectory`).
    replace
        ``False``: an existing result is refused (``FileExistsError`` naming ``--force``)
        right after the claim, before any work.
    keep_stage
        Top-level names of an earlier stage that stay in the new one, and survive a failure
        of the block (``None``: the stage starts empty and is removed on failure).
    keep_files
        Called with the directory at commit: files of the previous result that stay (see
        :meth:`OutputDirectory.commit`).
    on_claimed
        Called with the directory once it is claimed and locked, before the stage is made
        (a check that may refuse, e.g. a different earlier run).

    Raises
    ------
    FileExistsError, UnsafePathError, OutputNotWritableError
        From the claim; nothing was touched.

    Examples
    --------
    >>> with staged_output("out", "map") as out:  # doctest: +SKIP
    ...     write_csv(table, out.stage / "tables" / "t.csv")
    """
    out = OutputDirectory(path, command, stage=stage).claim()
    if not replace and out.files:
        raise FileExistsError(
            f"{out.path} holds an earlier `ensemblevi {command}`; pass --force "
            "to replace it (it stays whole until the new one is complete)."
        )
    try:
        with out.locked():
            if on_claimed is not None:
                on_claimed(out)
            stage_dir = out.new_stage(keep=keep_stage or ())
            try:
                yield out
                if out.abandoned:
                    if keep_stage is None or not _holds_files(stage_dir):
                        out.discard_stage()
                elif not out.committed:
                    out.commit(keep=keep_files(out) if keep_files is not None else ())
            except BaseException:
                if keep_stage is None or not _holds_files(stage_dir):
                    out.discard_stage()
                raise
    except BaseException as err:
        out.discard_if_new()
        # a full disk while the block wrote: named, after the cleanup above (an EACCES in
        # the block may come from reading an input, so it is left as it is)
        named = _not_writable(out.path, err, permissions=False)
        if named is not None:
            raise named from err
        raise


def _holds_files(folder: Path) -> bool:
    # empty folders (a model folder whose save failed) are not worth keeping
    return folder.is_dir() and any(not p.is_dir() for p in folder.rglob("*"))


def _remove_if_only_bookkeeping(path: Path) -> None:
    # a folder this process created and that holds nothing but its own bookkeeping
    try:
        entries = list(path.iterdir())
    except OSError:
        return
    if all(e.name in BOOKKEEPING or e.name.startswith(TMP_PREFIX) for e in entries):
        for e in entries:
            _remove(e)
        with contextlib.suppress(OSError):
            path.rmdir()


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
