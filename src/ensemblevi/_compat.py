"""Every place where ensemblevi relies on scvi-tools beyond its documented public API.

Kept in one module so that a new scvi-tools release that changes one of them fails here,
loudly and by name (:func:`check_scvi_tools`, run by the test suite), instead of somewhere
deep inside a model method. Public API (``BaseModelClass``, the mixins, ``TrainingPlan``,
``AnnDataManager``, the distributions) is imported where it is used.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version

import numpy as np
import pandas as pd
import scvi
import torch

# Private helpers and constants (not in scvi-tools' public API).
from scvi.model._utils import _init_library_size  # noqa: F401  (re-exported)
from scvi.model.base._constants import SAVE_KEYS  # the saved-model file layout
from scvi.module._constants import MODULE_KEYS

#: The scvi-tools versions this code was written and tested against (checked by the tests).
TESTED_SCVI = "1.4"

#: The module output keys our module produces with scvi-tools' names.
REQUIRED_MODULE_KEYS = ("Z_KEY", "QZ_KEY", "QL_KEY", "LIBRARY_KEY", "PX_KEY", "PL_KEY", "PZ_KEY")

#: scvi-tools model methods that EnsembleSCVI calls on itself.
REQUIRED_MODEL_METHODS = ("_make_data_loader", "_validate_anndata", "_check_if_trained")


def saved_model_file(dir_path: str | os.PathLike, prefix: str | None = None) -> str:
    """Path of the weights file that ``save`` writes into ``dir_path``."""
    return os.path.join(os.fspath(dir_path), f"{prefix or ''}{SAVE_KEYS.MODEL_FNAME}")


def saved_var_names(dir_path: str | os.PathLike, prefix: str | None = None) -> pd.Index:
    """Gene names stored with a saved model (scvi-tools' saved-file layout)."""
    saved = torch.load(saved_model_file(dir_path, prefix), map_location="cpu", weights_only=False)
    return pd.Index(np.asarray(saved[SAVE_KEYS.VAR_NAMES_KEY]).astype(str))


@contextmanager
def data_split_seed(seed: int | None) -> Iterator[None]:
    """Make scvi-tools' train/validation split use ``seed`` without reseeding anything else.

    scvi-tools draws the split from ``scvi.settings.seed``, whose setter also reseeds torch,
    numpy and Python globally. The private ``_seed`` is set instead and restored afterwards.
    """
    if seed is None:
        yield
        return
    previous = scvi.settings._seed
    scvi.settings._seed = int(seed)
    try:
        yield
    finally:
        scvi.settings._seed = previous


def check_scvi_tools() -> None:
    """Raise ``ImportError`` naming what changed if scvi-tools lacks what ensemblevi uses."""
    from scvi.dataloaders import _data_splitting
    from scvi.model.base import BaseModelClass, RNASeqMixin, VAEMixin

    problems = []
    if not hasattr(scvi.settings, "_seed"):
        problems.append("scvi.settings._seed (the split seed) is gone")
    if "settings.seed" not in inspect.getsource(_data_splitting):
        problems.append("DataSplitter no longer draws the split from scvi.settings.seed")
    for key in REQUIRED_MODULE_KEYS:
        if not hasattr(MODULE_KEYS, key):
            problems.append(f"scvi.module._constants.MODULE_KEYS lacks {key}")
    for name in REQUIRED_MODEL_METHODS:
        if not hasattr(BaseModelClass, name):
            problems.append(f"BaseModelClass.{name} is gone")
    save_src = inspect.getsource(BaseModelClass.save)
    if "SAVE_KEYS.VAR_NAMES_KEY" not in save_src or "SAVE_KEYS.MODEL_FNAME" not in save_src:
        problems.append("BaseModelClass.save no longer writes SAVE_KEYS.VAR_NAMES_KEY to model.pt")
    sample = inspect.signature(scvi.module.VAE.sample).parameters
    if "generative_kwargs" not in sample or "max_poisson_rate" not in sample:
        problems.append("scvi.module.VAE.sample changed its signature")
    from ensemblevi.model._members import MEMBER_ONLY, OVERRIDDEN, VIA_MODULE

    inherited = {
        name
        for cls in (RNASeqMixin, VAEMixin)
        for name, value in vars(cls).items()
        if callable(value) and not name.startswith("__")
    }
    unknown = inherited - set(MEMBER_ONLY) - set(OVERRIDDEN) - set(VIA_MODULE)
    if unknown:
        problems.append(
            f"scvi-tools' mixins have methods ensemblevi does not handle: {sorted(unknown)}"
        )
    if problems:
        raise ImportError(
            f"ensemblevi was written for scvi-tools {TESTED_SCVI}.x; the installed "
            f"scvi-tools {version('scvi-tools')} differs: " + "; ".join(problems) + ". Install "
            f"'scvi-tools>={TESTED_SCVI},<{TESTED_SCVI[:-1]}{int(TESTED_SCVI[-1]) + 1}' or "
            "report the incompatibility."
        )


def batch_codes(adata_manager, transform_batch) -> list[int | None]:
    """Batch categories (names or codes, one or a list) as codes, as scvi-tools reads them."""
    from scvi.model._utils import _get_batch_code_from_category

    return _get_batch_code_from_category(adata_manager, transform_batch)
