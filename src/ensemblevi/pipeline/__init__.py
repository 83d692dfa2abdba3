"""``ensemblevi run`` as a pipeline of stages, each testable alone.

``prepare_data`` (load, check, markers, batch column, genes) -> ``train_or_reuse``
(a saved model whose record matches, or a new one saved at once) -> ``analyse`` ->
``write_outputs`` (tables, figures, results.h5ad, run.json, report), all into the stage
of the run directory, committed by :func:`run_pipeline` at the end. :func:`run_de` adds a
DE result to a finished run; :func:`run_map` maps new cells onto its ensemble;
:func:`run_annotate` transfers cell types with an ensemble scANVI. The stages stay
importable from their private modules (``ensemblevi.pipeline._data``, ...).
"""

from ._annotate import run_annotate
from ._config import RunConfig
from ._de import run_de
from ._map import run_map
from ._run import run_pipeline

__all__ = ["RunConfig", "run_annotate", "run_de", "run_map", "run_pipeline"]
