"""Which scvi-tools this ensemblevi runs on: the private names it reads, checked once at import.

ensemblevi extends scvi-tools through its public API, but a few keys and methods it reads are not
promised stable; :func:`check_scvi_tools` names each one missing, so an upgrade that breaks them
fails with the fix (pin scvi-tools) instead of deep inside training.
"""

from __future__ import annotations

import inspect
from importlib.metadata import version

import scvi
from scvi.module._constants import MODULE_KEYS

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
