"""Stage 2 of a run: reuse a saved model whose record matches, or train and save one."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ensemblevi._compat import UntrustedModelError
from ensemblevi._files import OutputDirectory
from ensemblevi._fingerprint import data_fingerprint, model_record, reuse_problems, save_with_record
from ensemblevi._interrupt import set_resume_hint
from ensemblevi._warnings import quiet_third_party
from ensemblevi.pipeline._config import RunConfig
from ensemblevi.pipeline._data import Log, Prepared

#: folders of the trained model(s) in a run directory (and in its stage)
MODEL_DIRS = ("model", "seeds")


class RunRefused(Exception):
    """The run would replace or discard something the user did not ask to replace."""


@dataclass
class Trained:
    """The model of a run and where it came from.

    Parameters
    ----------
    model
        The trained (or loaded) ``EnsembleSCVI``.
    source
        ``"trained"`` (now, saved to the stage), ``"stage"`` (trained by an earlier run
        that did not finish, kept in the stage) or ``"result"`` (the committed run's model).
    path
        Folder of the saved model.
    record
        The model's record (``model/ensemblevi.json``).
    """

    model: object
    source: str
    path: Path
    record: dict


def wanted_record(config: RunConfig, prepared: Prepared) -> dict:
    """The record a model trained now on ``prepared`` with ``config`` gets.

    Parameters
    ----------
    config
        The run's settings.
    prepared
        The run's data.
    """
    data = data_fingerprint(prepared.adata, prepared.layer, [prepared.batch_key])
    return model_record(data, config.training_options(prepared.batch_key))


def training_split(config: RunConfig, prepared: Prepared) -> dict | None:
    """The samples kept out of training with ``--sample-key`` (``None``: a random split).

    Checked here, after the data is read and before anything is trained: a missing column,
    fewer than 2 samples or samples too small to be kept out raise a ``ValueError`` naming
    the fix.

    Parameters
    ----------
    config
        The run's settings (``sample_key``, ``holdout_samples``, ``seed``).
    prepared
        The run's data.

    Returns
    -------
    :func:`ensemblevi.tl.sample_split`'s result, or ``None`` without ``sample_key`` (or
    with ``holdout_samples=0``).
    """
    from ensemblevi.tl._novelty_rule import sample_split

    if not config.keeps_samples_out:
        return None
    try:
        return sample_split(
            prepared.adata, config.sample_key, n_holdout=config.holdout_samples, seed=config.seed
        )
    except ValueError as err:
        raise ValueError(
            f"--sample-key {config.sample_key!r}: {err} Or pass --holdout-samples 0 to "
            "train on every sample (the novelty thresholds then hold for new cells of the "
            "training samples only)."
        ) from err


def _load(path: Path, prepared: Prepared, trust: bool):
    from ensemblevi.model import EnsembleSCVI

    EnsembleSCVI.setup_anndata(prepared.adata, layer=prepared.layer, batch_key=prepared.batch_key)
    return EnsembleSCVI.load(path, adata=prepared.adata, trust=trust)


def _train(
    config: RunConfig,
    prepared: Prepared,
    stage: Path,
    log: Log,
    trust: bool,
    split: dict | None = None,
):
    from ensemblevi import tl
    from ensemblevi.model import EnsembleSCVI

    adata, setup = prepared.adata, {"layer": prepared.layer, "batch_key": prepared.batch_key}
    kwargs = {} if split is None else {"datasplitter_kwargs": split["datasplitter_kwargs"]}
    if split is not None:
        log(
            f"keeping the samples {split['holdout_samples']} of obs[{config.sample_key!r}] "
            "out of training: the novelty thresholds are set on them"
        )
    if config.seeds:
        log(f"training {config.seeds} scvi.model.SCVI seeds for {config.epochs} epochs")
        # each seed model is saved with its record as it finishes: an interrupted run resumes
        model = tl.seed_ensemble(
            adata,
            n_seeds=config.seeds,
            save_dir=stage / "seeds",
            setup_kwargs=setup,
            max_epochs=config.epochs,
            train_kwargs=kwargs or None,
            trust=trust,
        )
        if split is not None:  # every seed trained on this split: the rules calibrate on it
            train, val, _ = split["datasplitter_kwargs"]["external_indexing"]
            model.train_indices, model.validation_indices = train, val
        return model
    EnsembleSCVI.setup_anndata(adata, **setup)
    model = EnsembleSCVI(
        adata, n_members=config.members, ensemble=config.ensemble, seed=config.seed
    )
    log(f"training {model._model_summary_string} for {config.epochs} epochs")
    model.train(max_epochs=config.epochs, seed=config.seed, **kwargs)
    return model


def train_or_reuse(
    config: RunConfig,
    prepared: Prepared,
    out: OutputDirectory,
    force: bool = False,
    log: Log = print,
    *,
    trust: bool = False,
    split: dict | None = None,
) -> Trained:
    """Reuse a saved model trained on the same data with the same options, or train one.

    A saved model is reused only when its record (``ensemblevi.json`` beside it: a
    fingerprint of the counts, genes, cells and batch column, the training options and the
    ensemblevi version) matches. Looked at in turn: a model an unfinished run left in the
    stage, then the committed run's model. A model that does not match is replaced only
    with ``force`` (else :class:`RunRefused`, naming what changed). A new model is saved
    with its record into the stage before this returns, so a later failure keeps it.

    Parameters
    ----------
    config
        The run's settings.
    prepared
        The run's data (from :func:`prepare_data`).
    out
        The run directory, claimed, with its stage created.
    force
        Replace (train anew over) a saved model that does not match.
    log
        Where progress lines go.
    trust
        Also reuse a model in scvi-tools' pickled format (an older ensemblevi's save):
        loading it unpickles it, which runs any code the file carries.
    split
        :func:`training_split`'s result: the samples kept out of a model trained now (a
        reused model was trained with the same split: the split is in its record).

    Raises
    ------
    UntrustedModelError
        The matching model's file needs unpickling (without ``trust`` and ``force``).
    """
    wanted = wanted_record(config, prepared)
    places = {"stage": out.stage / "model", "result": out.path / "model"}
    found = {}
    for source, path in places.items():
        owned = source == "stage" or "model/model.pt" in out.files
        problems = reuse_problems(path, wanted, trust=trust) if owned else None
        if problems is not None:
            found[source] = problems
    for source in places:
        if source in found and not found[source]:
            try:
                with quiet_third_party():
                    model = _load(places[source], prepared, trust)
            except ValueError as err:  # damaged, or needs unpickling: load names the file
                if not force:
                    raise type(err)(
                        f"{err} Or pass --force to train a new model in its "
                        "place (the current result stays whole until the new "
                        "run is complete)."
                    ) from err
                found[source] = [
                    "its model file needs unpickling"
                    if isinstance(err, UntrustedModelError)
                    else "its model file cannot be read"
                ]
                continue
            why = "an unfinished earlier run" if source == "stage" else "the previous run"
            log(
                f"reusing the trained model in {places[source]} (trained by {why} on the "
                "same data with the same options)"
            )
            if source == "result":  # the stage's leftovers must not replace it at commit
                _discard_stage_models(out.stage)
            _kept_hint(out, places[source])
            return Trained(model, source, places[source], wanted)
    stale = {s: diffs for s, diffs in found.items() if diffs}
    if stale and not force:
        lines = [
            f"{places[s]} holds a model trained on other data or options (" + "; ".join(d) + ")"
            for s, d in stale.items()
        ]
        raise RunRefused(
            "; ".join(lines) + ". Pass --force to train a new one (the current "
            "result stays whole until the new run is complete) or choose "
            "another --out."
        )
    for source, diffs in stale.items():
        log(f"not reusing {places[source]}: {'; '.join(diffs)}")
    if "stage" in stale:
        _discard_stage_models(out.stage)
    with quiet_third_party():
        model = _train(config, prepared, out.stage, log, trust, split)
    path = out.stage / "model"
    save_with_record(path, wanted, lambda p: model.save(p, overwrite=True))
    log(f"saved the trained model to {path} (kept there until the run is committed)")
    _kept_hint(out, path)
    return Trained(model, "trained", path, wanted)


def _discard_stage_models(stage: Path) -> None:
    for name in MODEL_DIRS:
        shutil.rmtree(stage / name, ignore_errors=True)


def _kept_hint(out: OutputDirectory, model_dir: Path) -> None:
    if model_dir.parent == out.stage:
        hint = (
            f"The trained model is kept in {model_dir}; rerun the same command to reuse "
            f"it. {out.path} still holds its previous result, whole."
        )
    else:
        hint = (
            f"Nothing was lost: {out.path} holds its previous result, whole, and its "
            "model is reused by the same command."
        )
    set_resume_hint(hint)
