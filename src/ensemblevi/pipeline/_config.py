"""The settings of one run, in one object, checked before anything is loaded or trained."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ensemblevi._constants import ENSEMBLE_KINDS
from ensemblevi._fingerprint import option_changes

#: the options a trained model depends on (with the data): they go into the model's record
TRAINING_OPTIONS = ("n_top_genes", "ensemble", "members", "seeds", "epochs", "seed", "layer")


@dataclass(frozen=True)
class RunConfig:
    """Everything ``ensemblevi run`` was asked to do.

    Parameters
    ----------
    data
        ``"synthetic"``, ``"heart"`` or the path of a .h5ad / 10x file.
    preset
        Synthetic preset (``data="synthetic"``).
    n_cells
        Cells simulated (``data="synthetic"``).
    heart_path
        Folder of the heart atlas file (``data="heart"``); not part of :meth:`options`
        (where a file lies does not change a result; its content is fingerprinted).
    layer
        Layer holding the counts (``None``: ``X``).
    batch_key
        ``obs`` column of the batch; ``None`` uses ``"batch"`` when it has several values.
    labels_key
        ``obs`` column of the cell groups; ``None`` for a training without analysis. Where
        the data has no column of the default name (``cell_type``), the run goes on
        without groups (the report says so); another name must exist.
    n_top_genes
        Highly variable genes kept (markers are kept too).
    ensemble
        Ensemble kind.
    members
        Members K.
    seeds
        Train this many ``scvi.model.SCVI`` seeds instead (0: an ``EnsembleSCVI``).
    markers
        ``"auto"``: the heart set where any of its genes is in the data, else each group's
        top markers found in the data (:func:`ensemblevi.tl.data_markers`; the report
        says so); a built-in marker set name or a JSON/YAML file; ``None`` or ``"none"``:
        no markers (the marker section is skipped).
    marker
        Extra markers, ``TYPE=GENE,GENE`` each.
    epochs
        Training epochs.
    n_samples
        Latent samples per member in the analyses.
    seed
        Random seed (data, initialisation, training, analyses).
    resolution
        Leiden resolution of the cluster stability (each member's clusters and the
        consensus).
    sample_key
        ``obs`` column of the biological samples (donors); recorded in ``run.json`` and
        used by ``ensemblevi de`` to compare samples, not cells. With it, whole samples
        are also kept out of training (:func:`ensemblevi.tl.sample_split`) and the novelty
        rule is calibrated on them, so its false-positive rate is that of a new sample.
        ``None``: none.
    holdout_samples
        Samples kept out of training with ``sample_key`` (``None``: a quarter of them, at
        least 1; 0: none, and the thresholds then hold for new cells of the training
        samples only).
    """

    data: str = "synthetic"
    preset: str = "heartlike"
    n_cells: int = 3000
    heart_path: Path = Path("data")
    layer: str | None = None
    batch_key: str | None = None
    labels_key: str | None = "cell_type"
    n_top_genes: int = 1200
    ensemble: str = "deep"
    members: int = 4
    seeds: int = 0
    markers: str | None = "auto"
    marker: tuple[str, ...] = field(default_factory=tuple)
    epochs: int = 60
    n_samples: int = 10
    seed: int = 0
    resolution: float = 1.0
    sample_key: str | None = None
    holdout_samples: int | None = None

    def __post_init__(self) -> None:
        # lists from the CLI become tuples: a frozen config must hash and compare by value
        object.__setattr__(self, "marker", tuple(self.marker or ()))
        object.__setattr__(self, "heart_path", Path(self.heart_path))

    def validate(self) -> RunConfig:
        """Check every option's value; raise a ``ValueError`` naming all bad ones at once."""
        problems = []
        at_least = {
            "members": 1,
            "epochs": 1,
            "n_samples": 1,
            "n_top_genes": 1,
            "seeds": 0,
            "n_cells": 1,
        }
        for name, low in at_least.items():
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                option = "--" + name.replace("_", "-")
                problems.append(f"{option} must be an integer >= {low}, got {value!r}")
        if not isinstance(self.resolution, int | float) or not self.resolution > 0:
            problems.append(f"--resolution must be a number > 0, got {self.resolution!r}")
        if self.ensemble not in ENSEMBLE_KINDS:
            problems.append(
                f"--ensemble must be one of {list(ENSEMBLE_KINDS)}, got {self.ensemble!r}"
            )
        if self.holdout_samples is not None:
            if not isinstance(self.holdout_samples, int) or self.holdout_samples < 0:
                problems.append(
                    f"--holdout-samples must be an integer >= 0, got {self.holdout_samples!r}"
                )
            elif self.sample_key is None and self.holdout_samples:
                problems.append(
                    "--holdout-samples keeps whole samples out of training: pass "
                    "--sample-key, the obs column of the samples"
                )
        if problems:
            raise ValueError("; ".join(problems) + ".")
        return self

    @property
    def keeps_samples_out(self) -> bool:
        """Whether whole samples are kept out of training (``sample_key`` given, and
        ``holdout_samples`` not 0)."""
        return self.sample_key is not None and self.holdout_samples != 0

    def options(self) -> dict:
        """The settings as recorded in ``run.json`` (JSON types; ``heart_path`` left out)."""
        out = dataclasses.asdict(self)
        out.pop("heart_path")
        for name in ("sample_key", "holdout_samples"):
            if out[name] is None:  # runs recorded before the option compare equal
                out.pop(name)
        out["marker"] = list(self.marker)
        return out

    def training_options(self, batch_key: str | None) -> dict:
        """The options the trained model depends on, with the batch column actually used.

        Parameters
        ----------
        batch_key
            The resolved batch column (the option or the detected ``"batch"``).
        """
        out = {**{k: getattr(self, k) for k in TRAINING_OPTIONS}, "batch_key": batch_key}
        if self.keeps_samples_out:  # else the record of models trained before the option
            out["sample_split"] = {
                "sample_key": self.sample_key,
                "holdout_samples": self.holdout_samples,
            }
        return out

    def changed(self, previous: dict) -> list[str]:
        """``key: old -> new`` for each setting that differs from a recorded run's.

        Parameters
        ----------
        previous
            :meth:`options` of the earlier run (from its ``run.json``).
        """
        return option_changes(previous, self.options())
