"""``ensemblevi run`` as a pipeline of stages, each testable alone.

:func:`prepare_data` (load, check, markers, batch column, genes) -> :func:`train_or_reuse`
(a saved model whose record matches, or a new one saved at once) -> :func:`analyse` ->
:func:`write_outputs` (tables, figures, results.h5ad, run.json, report), all into the stage
of the run directory, committed by :func:`run_pipeline` at the end. :func:`run_de` adds a
DE result to a finished run; :func:`run_map` maps new cells onto its ensemble;
:func:`run_annotate` transfers cell types with an ensemble scANVI.
"""

from ._analyse import Analysis, analyse
from ._annotate import AnnotateResult, run_annotate
from ._config import RunConfig
from ._data import Prepared, load_data, prepare_data, training_data
from ._de import DEResult, de_name, run_de
from ._map import MapResult, prepare_query, run_map
from ._outputs import write_figures, write_outputs
from ._readings import run_reading
from ._report import render_run_report
from ._run import StageFailed, run_pipeline
from ._train import RunRefused, Trained, train_or_reuse
from ._train_command import merge_command, parse_shard, train_command

__all__ = [
    "Analysis",
    "AnnotateResult",
    "DEResult",
    "MapResult",
    "Prepared",
    "RunConfig",
    "RunRefused",
    "StageFailed",
    "Trained",
    "analyse",
    "de_name",
    "load_data",
    "merge_command",
    "parse_shard",
    "prepare_data",
    "prepare_query",
    "render_run_report",
    "run_annotate",
    "run_de",
    "run_map",
    "run_pipeline",
    "run_reading",
    "train_command",
    "train_or_reuse",
    "training_data",
    "write_figures",
    "write_outputs",
]
