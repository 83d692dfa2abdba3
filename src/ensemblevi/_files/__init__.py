"""One way to write files: atomic files, and output directories that ensemblevi owns.

Every writer of the package goes through here, so that the same rules hold everywhere:

- a file is written to a temporary name beside it and renamed into place
  (:func:`atomic_file`), so a reader sees the old file or the new one, never half of one;
- a command writes only into an :class:`OutputDirectory`: a directory it created (or that
  was empty), whose manifest lists the files it wrote. It refuses a non-empty directory it
  did not write, never removes a file that is not in its manifest, and stages a new result
  beside the old one, swapping it in only once the new result is complete;
- every temporary name starts with :data:`TMP_PREFIX`, so leftovers of a killed process
  can be told apart from a user's files and cleaned up safely;
- every path read back from the bookkeeping (manifest, commit journal, stage, a record
  such as a checkpoint's) goes through :func:`contained`, which refuses one that leads
  outside the output directory (``..``, an absolute path, a symbolic link pointing out)
  before any file is touched: a crafted or damaged folder cannot make ensemblevi move or
  delete a file elsewhere;
- :func:`staged_output` is the one way a command writes a result: claim, lock, stage,
  commit on success, discard on failure.

This module imports nothing from the rest of the package (it is the lowest layer).
"""

from ._atomic import (
    BOOKKEEPING,
    JOURNAL,
    LOCK,
    MANIFEST,
    STAGE,
    TMP_PREFIX,
    OutputNotWritableError,
    UnsafePathError,
    atomic_file,
    clean_temporaries,
    contained,
    move_into,
    write_csv,
    write_json,
    write_text,
)
from ._output import OutputDirectory, staged_output

__all__ = [
    "BOOKKEEPING",
    "JOURNAL",
    "LOCK",
    "MANIFEST",
    "STAGE",
    "TMP_PREFIX",
    "OutputDirectory",
    "OutputNotWritableError",
    "UnsafePathError",
    "atomic_file",
    "clean_temporaries",
    "contained",
    "move_into",
    "staged_output",
    "write_csv",
    "write_json",
    "write_text",
]
