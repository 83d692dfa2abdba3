"""The run as a pipeline: data -> model (trained or reused) -> analyses -> outputs -> commit."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from anndata import AnnData

from ensemblevi._files import OutputDirectory, staged_output
from ensemblevi._interrupt import set_resume_hint
from ensemblevi.pipeline._analyse import analyse
from ensemblevi.pipeline._config import RunConfig
from ensemblevi.pipeline._data import Log, prepare_data
from ensemblevi.pipeline._outputs import write_outputs
from ensemblevi.pipeline._train import MODEL_DIRS, RunRefused, train_or_reuse, training_split


class StageFailed(RuntimeError):
    """A stage after training failed; the trained model was kept (the message says where)."""


def _previous_config(out: OutputDirectory) -> dict | None:
    if "run.json" not in out.files:
        return None
    return json.loads((out.path / "run.json").read_text())["config"]


def run_pipeline(
    config: RunConfig,
    out: str | Path,
    force: bool = False,
    log: Log = print,
    on_loaded: Callable[[AnnData, str | None, str], None] | None = None,
    *,
    trust: bool = False,
) -> list[str]:
    """Run ``ensemblevi run``: every stage in turn, the result committed into ``out`` at the end.

    The new result is assembled in the stage of ``out``; the previous result stays whole
    until the new one is complete, then is replaced in one commit. A model trained here is
    saved (with its record) before the analyses start and survives their failure, for the
    next run with the same data and options to reuse.

    Parameters
    ----------
    config
        The run's settings.
    out
        The run directory (new, empty, or written by an earlier ``ensemblevi run``).
    force
        Replace a different run (settings, data or model) in ``out``.
    log
        Where progress lines go.
    on_loaded
        Called with ``(adata, layer, title)`` once the data is read.
    trust
        Reuse a saved model in scvi-tools' pickled format (an older ensemblevi's): loading
        it unpickles it, which runs any code the file carries.

    Returns
    -------
    The report's reading (its plain-language sentences).

    Raises
    ------
    ValueError, FileNotFoundError
        Bad settings or data (nothing trained, ``out`` untouched).
    RunRefused, FileExistsError
        ``out`` holds something the run would replace without ``force``, or is not ours.
    StageFailed
        A stage after training failed; the model is kept in the stage.
    """
    config.validate()

    def refuse_other_run(directory: OutputDirectory) -> None:
        set_resume_hint(
            f"Nothing was lost: {directory.path} holds its previous result (if "
            "any), whole; rerun the same command to start again."
        )
        previous = _previous_config(directory)
        if previous is not None and previous != config.options() and not force:
            raise RunRefused(
                f"{directory.path} holds a different run ({'; '.join(config.changed(previous))}"
                "); pass --force to replace it (the current result stays whole until the new "
                "run is complete) or choose another --out."
            )

    def reused_model_files(directory: OutputDirectory) -> list[str]:
        # a model reused from the result stays; one trained now comes from the stage
        if trained.source != "result":
            return []
        return [f for f in directory.files if f.split("/")[0] in MODEL_DIRS]

    # a model a failed run left in the stage is kept there, to be reused
    with staged_output(
        out,
        "run",
        keep_stage=MODEL_DIRS,
        on_claimed=refuse_other_run,
        keep_files=reused_model_files,
    ) as directory:
        timings: dict[str, float] = {}
        t = time.perf_counter()
        prepared = prepare_data(config, log=log, on_loaded=on_loaded)
        split = training_split(config, prepared)  # bad samples fail before training
        timings["data"] = time.perf_counter() - t
        t = time.perf_counter()
        trained = train_or_reuse(
            config, prepared, directory, force=force, log=log, trust=trust, split=split
        )
        timings["training"] = time.perf_counter() - t
        try:
            t = time.perf_counter()
            analysis = analyse(
                trained.model,
                prepared.adata,
                prepared.markers,
                prepared.labels_key,
                config.n_samples,
                config.seed,
                config.resolution,
                sample_key=config.sample_key,
            )
            timings["analysis"] = time.perf_counter() - t
            reading = write_outputs(directory, config, prepared, trained, analysis, timings)
        except Exception as err:
            kept = (
                (f"the trained model is kept in {trained.path}; rerun the same command to reuse it")
                if trained.source != "result"
                else (f"the model in {trained.path} is unchanged")
            )
            raise StageFailed(
                f"{type(err).__name__}: {err} ({kept}; {directory.path} still "
                "holds its previous result, whole)."
            ) from err
    set_resume_hint(None)
    return reading
