"""Every place where ensemblevi relies on scvi-tools beyond its documented public API.

Kept in one module so that a new scvi-tools release that changes one of them fails here,
loudly and by name (:func:`check_scvi_tools`, run by the test suite), instead of somewhere
deep inside a model method. Public API (``BaseModelClass``, the mixins, ``TrainingPlan``,
``AnnDataManager``, the distributions) is imported where it is used.

Rank 0 of the package's layering: nothing from ensemblevi is imported here except
``_constants``. What the model layer adds on top of scvi-tools' mixins (which of their
methods it overrides, runs as they are, or refuses) is checked by
:func:`ensemblevi.model.check_member_contract`.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version

import numpy as np
import pandas as pd

# scvi-tools 1.4.2's view_anndata_setup/view_setup_args call rich.pretty.pprint but import
# only rich.table and rich.console, which in rich 15 no longer import rich.pretty: without
# this import both fail with "module 'rich' has no attribute 'pretty'" (scvi.model.SCVI too).
import rich.pretty  # noqa: F401
import scvi
import torch

# Private helpers and constants (not in scvi-tools' public API).
from scvi.model._utils import _get_batch_code_from_category, _init_library_size  # noqa: F401
from scvi.model.base._constants import SAVE_KEYS  # the saved-model file layout
from scvi.module._constants import MODULE_KEYS  # re-exported for module/

#: The scvi-tools versions this code was written and tested against (checked by the tests).
TESTED_SCVI = "1.4"

#: ``MODULE_KEYS`` names the ensemble module's inference, generative and loss outputs use
#: (the module writes ``outputs[MODULE_KEYS.Z_KEY]``, ...); each must exist.
REQUIRED_MODULE_KEYS = (
    "Z_KEY",
    "QZ_KEY",
    "QL_KEY",
    "LIBRARY_KEY",
    "PX_KEY",
    "PL_KEY",
    "PZ_KEY",
    "KL_Z_KEY",
    "KL_L_KEY",
)

#: The outputs among them that scvi-tools' own mixins read when they run on one member
#: (``model.members[k]``): their source must read them under the same names (through
#: ``MODULE_KEYS.<name>`` or the literal value), or a member view reads a missing key.
MIXIN_READ_KEYS = ("Z_KEY", "QZ_KEY", "QL_KEY", "LIBRARY_KEY", "PX_KEY")

#: Private scvi-tools model methods that ensemblevi's models call on themselves.
REQUIRED_MODEL_METHODS = (
    "_make_data_loader",
    "_validate_anndata",
    "_check_if_trained",
    "_get_init_params",
    "_get_setup_method_args",
)


def saved_model_file(dir_path: str | os.PathLike, prefix: str | None = None) -> str:
    """Path of the weights file that ``save`` writes into ``dir_path``.

    Parameters
    ----------
    dir_path
        The directory a model was saved to.
    prefix
        The ``prefix`` given to ``save``.
    """
    return os.path.join(os.fspath(dir_path), f"{prefix or ''}{SAVE_KEYS.MODEL_FNAME}")


def existing_model_file(dir_path: str | os.PathLike, prefix: str | None, cls_name: str) -> str:
    """:func:`saved_model_file`, or an error naming what the folder holds instead.

    Parameters
    ----------
    dir_path
        The directory a model was saved to.
    prefix
        The ``prefix`` given to ``save``.
    cls_name
        The model class, for the conversion hint.
    """
    model_file = saved_model_file(dir_path, prefix)
    legacy = os.path.join(os.fspath(dir_path), f"{prefix or ''}model_params.pt")
    if not os.path.exists(model_file) and os.path.exists(legacy):
        raise ValueError(  # scvi-tools raises ValueError here too
            f"{dir_path} holds a model saved by scvi-tools < 0.15 ({legacy}); convert it "
            f"first with {cls_name}.convert_legacy_save(dir_path, output_dir_path)."
        )
    if not os.path.exists(model_file):
        raise FileNotFoundError(
            f"No saved model at {model_file}; pass the directory given to model.save()."
        )
    return model_file


def saved_var_names(dir_path: str | os.PathLike, prefix: str | None = None) -> pd.Index:
    """Gene names stored with a saved model (scvi-tools' saved-file layout).

    Parameters
    ----------
    dir_path
        The directory a model was saved to.
    prefix
        The ``prefix`` given to ``save``.
    """
    saved = torch.load(saved_model_file(dir_path, prefix), map_location="cpu", weights_only=False)
    return pd.Index(np.asarray(saved[SAVE_KEYS.VAR_NAMES_KEY]).astype(str))


@contextmanager
def data_split_seed(seed: int | None) -> Iterator[None]:
    """Make scvi-tools' train/validation split use ``seed`` without reseeding anything else.

    scvi-tools draws the split from ``scvi.settings.seed``, whose setter also reseeds torch,
    numpy and Python globally. The private ``_seed`` is set instead and restored afterwards.

    Parameters
    ----------
    seed
        Seed of the split; ``None`` leaves the split as scvi-tools would draw it.
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


def batch_codes(adata_manager, transform_batch) -> list[int | None]:
    """Batch categories (names or codes, one or a list) as codes, as scvi-tools reads them.

    Parameters
    ----------
    adata_manager
        The model's ``AnnDataManager``.
    transform_batch
        ``None``, one batch category or a list of them.
    """
    return _get_batch_code_from_category(adata_manager, transform_batch)


@functools.cache
def _named_scvi(cls: type) -> type:
    return type("SCVI", (cls,), {"__module__": cls.__module__, "__doc__": cls.__doc__})


@contextmanager
def base_accepts_no_data(model: object) -> Iterator[None]:
    """Let scvi-tools' ``BaseModelClass.__init__`` run for ``adata=None``.

    scvi-tools 1.4 builds a model without data (its module made at ``train``) only for
    classes named ``SCVI`` or ``GIMVI``: a check on the class name, not on any ability. Its
    own initialiser runs here with the instance seen as a subclass of that name.

    Why a class swap and not a hook: ``BaseModelClass.__init__`` has no argument, class
    attribute or method that allows ``adata=None`` (the name test is inline), and
    re-implementing its body here would copy a dozen private attributes that change between
    releases. The swap lasts for that one call and is undone also on an error;
    :func:`scvi_tools_problems` fails the import if scvi-tools drops the name test.

    Parameters
    ----------
    model
        The model being initialised.
    """
    cls = type(model)
    if cls.__name__ in ("SCVI", "GIMVI"):
        yield
        return
    model.__class__ = _named_scvi(cls)
    try:
        yield
    finally:
        model.__class__ = cls


def _reads_key(source: str, name: str) -> bool:
    value = getattr(MODULE_KEYS, name)
    return f"MODULE_KEYS.{name}" in source or f'"{value}"' in source or f"'{value}'" in source


def scvi_tools_problems() -> list[str]:
    """What ensemblevi uses beyond scvi-tools' public API and the installed release lacks.

    Read from scvi-tools' source text because these are behaviours, not names: no public
    attribute says that the data split draws from ``scvi.settings.seed``, that the mixins
    read a module output key, or that ``__init__`` tests the class name. A changed behaviour
    would give wrong results silently; the text check turns it into an ``ImportError`` that
    names it, and each line says which ensemblevi function relies on it.
    """
    from scvi.dataloaders import _data_splitting
    from scvi.model.base import BaseModelClass, RNASeqMixin, VAEMixin
    from scvi.train import TrainingPlan

    problems = []
    if not hasattr(scvi.settings, "_seed"):
        problems.append("scvi.settings._seed (the split seed) is gone")
    if "settings.seed" not in inspect.getsource(_data_splitting):
        problems.append("DataSplitter no longer draws the split from scvi.settings.seed")
    mixin_source = inspect.getsource(RNASeqMixin) + inspect.getsource(VAEMixin)
    for key in REQUIRED_MODULE_KEYS:
        if not hasattr(MODULE_KEYS, key):
            problems.append(f"scvi.module._constants.MODULE_KEYS lacks {key}")
        elif key in MIXIN_READ_KEYS and not _reads_key(mixin_source, key):
            problems.append(f"scvi-tools' mixins no longer read the module output {key}")
    for name in REQUIRED_MODEL_METHODS:
        if not hasattr(BaseModelClass, name):
            problems.append(f"BaseModelClass.{name} is gone")
    save_src = inspect.getsource(BaseModelClass.save)
    if "SAVE_KEYS.VAR_NAMES_KEY" not in save_src or "SAVE_KEYS.MODEL_FNAME" not in save_src:
        problems.append("BaseModelClass.save no longer writes SAVE_KEYS.VAR_NAMES_KEY to model.pt")
    # EnsembleTrainingPlan overrides this private hook to build the fused optimiser
    if not hasattr(TrainingPlan, "_optimizer_creator_fn") or "self._optimizer_creator_fn(" not in (
        inspect.getsource(TrainingPlan.get_optimizer_creator)
    ):
        problems.append("TrainingPlan.get_optimizer_creator no longer calls _optimizer_creator_fn")
    # base_accepts_no_data relies on this name check of BaseModelClass.__init__
    if '__class__.__name__ == "SCVI"' not in inspect.getsource(BaseModelClass.__init__):
        problems.append("BaseModelClass.__init__ no longer decides adata=None by the class name")
    # EnsembleVAE.sample is called by RNASeqMixin.posterior_predictive_sample with these
    if "generative_kwargs=" not in inspect.getsource(RNASeqMixin.posterior_predictive_sample):
        problems.append(
            "posterior_predictive_sample no longer calls module.sample(generative_kwargs=)"
        )
    return problems


def incompatibility_error(problems: list[str]) -> ImportError:
    """The ``ImportError`` naming ``problems`` and the supported scvi-tools releases.

    Parameters
    ----------
    problems
        One phrase per incompatibility.
    """
    major, minor = TESTED_SCVI.split(".")
    return ImportError(
        f"ensemblevi was written for scvi-tools {TESTED_SCVI}.x; the installed "
        f"scvi-tools {version('scvi-tools')} differs: " + "; ".join(problems) + ". Install "
        f"'scvi-tools>={TESTED_SCVI},<{major}.{int(minor) + 1}' or report the incompatibility."
    )


def check_scvi_tools() -> None:
    """Raise ``ImportError`` naming what changed if scvi-tools lacks what ensemblevi uses."""
    problems = scvi_tools_problems()
    if problems:
        raise incompatibility_error(problems)
