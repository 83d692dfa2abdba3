"""Names from the user's data, made safe for every place they are written to.

A group label, a gene or a file name comes from the user's data and may hold anything: a
leading ``/``, dots, ``NA``, brackets, newlines, unicode. This module is the only place
where such a value becomes

- a key of an AnnData's ``uns``, ``obsm``/``varm`` DataFrame column or other HDF5 name
  (:func:`h5_key`, reversed by :func:`from_h5_key`): ``/`` would make a path;
- part of a file name (:func:`file_stem`): readable, and never shared by two names;
- a cell of a table that is read back (:func:`read_table`): ``NA`` stays ``NA``;
- console text (:func:`console_text`): Rich markup such as ``[bold]`` prints literally;
- HTML (:func:`html_text`).

It imports nothing from the rest of the package (it is the lowest layer).
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
from typing import Any

#: characters of an HDF5 name that would change its meaning: percent-encoded
_H5_UNSAFE = re.compile(r"[%/\x00]")
_H5_ENCODED = re.compile(r"%([0-9A-F]{2})")
#: a name made only of dots is a relative HDF5 path ("." is the group itself)
_DOTS = re.compile(r"\.+")
_EMPTY = "%empty"

#: characters kept as they are in a file name; every other run becomes "_"
_FILE_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
#: longest readable part of a file name (file systems allow 255 bytes in all)
_MAX_STEM = 80


def h5_key(name: Any) -> str:
    """``name`` as an HDF5 name that anndata writes and reads back as one key.

    ``%``, ``/`` and NUL are percent-encoded (``"/A"`` -> ``"%2FA"``), a name of dots only
    has its dots encoded and the empty name becomes ``"%empty"``; every other name is
    unchanged, so ordinary group names read as they are. :func:`from_h5_key` reverses it.

    Parameters
    ----------
    name
        A group, type or gene name (converted with ``str``).
    """
    text = str(name)
    if text == "":
        return _EMPTY
    if _DOTS.fullmatch(text):
        return "%2E" * len(text)
    return _H5_UNSAFE.sub(lambda m: f"%{ord(m.group()):02X}", text)


def from_h5_key(key: Any) -> str:
    """The name that :func:`h5_key` encoded as ``key``.

    Parameters
    ----------
    key
        A key written by :func:`h5_key`.
    """
    text = str(key)
    if text == _EMPTY:
        return ""
    return _H5_ENCODED.sub(lambda m: chr(int(m.group(1), 16)), text)


def file_stem(
    *names: Any, prefix: str = "", sep: str = "_", hashed: bool = False, exact: Any = None
) -> str:
    """A file-name stem for ``names``, readable and unique per exact names.

    The names joined by ``sep``, with every run of characters other than letters, digits
    and ``_ . -`` (and a leading dot) replaced by ``_``. Where that spelling is not
    faithful (a character was replaced, ``sep`` occurs inside a name, or it was shortened
    to 80 characters), 8 hex digits of a hash of the exact names are appended, so "CD4 T"
    and "CD4+ T" get different stems; dots are kept, so "CD4.Naive" and "CD4.Memory" do
    too. Record the exact names beside the file where they must be recovered.

    Parameters
    ----------
    *names
        The parts (each converted with ``str``).
    prefix
        Put first, as it is (a fixed word such as ``"de_"``).
    sep
        Put between the parts.
    hashed
        Append the hash even where the spelling is faithful (a name that would read as
        something else).
    exact
        What the hash is computed from (JSON-encoded; ``None``: the names).
    """
    parts = [str(n) for n in names]
    raw = sep.join(parts)
    # a leading dot would hide the file, or make ".." a path: it becomes "_" too
    slug = re.sub(r"^\.", "_", _FILE_UNSAFE.sub("_", raw))
    lossy = (
        hashed
        or slug != raw
        or len(slug) > _MAX_STEM
        or (len(parts) > 1 and any(sep in p for p in parts))
    )
    if lossy:
        data = json.dumps(parts if exact is None else exact, ensure_ascii=False).encode()
        slug = slug[:_MAX_STEM] + "_" + hashlib.blake2b(data, digest_size=4).hexdigest()
    return prefix + slug


def console_text(value: Any) -> str:
    """``value`` as text that Rich prints literally (its markup escaped).

    Parameters
    ----------
    value
        A name, path, message or table (converted with ``str``).
    """
    from rich.markup import escape

    return escape(str(value))


def html_text(value: Any) -> str:
    """``value`` escaped for HTML text and attribute values.

    Parameters
    ----------
    value
        A name or message (converted with ``str``).
    """
    return html.escape(str(value))


def read_table(path: str | os.PathLike, *, index_col: int | None = None, **kwargs: Any):
    """Read a CSV table that ensemblevi wrote, every name as it was written.

    pandas reads ``NA``, ``N/A``, ``null``, ``nan`` and others as missing by default,
    which would turn a cell type called ``NA`` into NaN; here only an empty field is
    missing (what :meth:`pandas.DataFrame.to_csv` writes for NaN).

    Parameters
    ----------
    path
        The CSV file.
    index_col
        Column to use as the index (``None``: a plain row number).
    **kwargs
        Passed to :func:`pandas.read_csv` (``dtype``, ``usecols``, ...).
    """
    import pandas as pd

    return pd.read_csv(path, index_col=index_col, keep_default_na=False, na_values=[""], **kwargs)


def h5_columns(frame):
    """A copy of ``frame`` whose column names are :func:`h5_key`\\ s (for ``uns``/``obsm``).

    Parameters
    ----------
    frame
        A :class:`pandas.DataFrame` whose columns are names from the data.
    """
    out = frame.copy()
    out.columns = [h5_key(c) for c in frame.columns]
    return out


def from_h5_columns(frame):
    """A copy of ``frame`` with the names that :func:`h5_columns` encoded.

    Parameters
    ----------
    frame
        A :class:`pandas.DataFrame` written by :func:`h5_columns` (and maybe read back).
    """
    out = frame.copy()
    out.columns = [from_h5_key(c) for c in frame.columns]
    return out
