"""The benchmark suite behind ``ensemblevi benchmark`` and ``make bench``.

Three suites, each saving one result file per unit of work (reused on a rerun with the
same settings), tables as CSV, figures as PNG and a Markdown section:

- ``fdr``: the paper draft's DE experiment (:mod:`._fdr`) on the simulator's presets and,
  with ``pbmc3k.h5ad``, on real counts with a known truth (:mod:`._thinning`);
- ``calibration``: count calibration on held-out cells (:mod:`._calibration`);
- ``ood``: novelty of a left-out cell type (:mod:`._ood`).
"""

from __future__ import annotations

import time
from datetime import date
from pathlib import Path

from ensemblevi._warnings import quiet_third_party

from . import _calibration, _fdr, _ood
from ._calibration import CalibrationConfig
from ._fdr import FDRConfig
from ._markdown import calibration_markdown, fdr_markdown, ood_markdown, update_docs
from ._ood import OODConfig
from ._thinning import THINNING_DATASETS

SUITES = ("fdr", "calibration", "ood")


def run_suite(
    suite: str,
    out: str | Path,
    reps: int | None = None,
    quick: bool = False,
    pbmc: str | Path | None = None,
    docs: str | Path | None = None,
    figures: str | Path | None = None,
    train: bool = True,
    datasets: tuple[str, ...] | None = None,
    log=print,
) -> dict[str, Path]:
    """Run one suite (or ``all``), writing results, tables and figures under ``out``.

    Parameters
    ----------
    suite
        ``fdr``, ``calibration``, ``ood`` or ``all``.
    out
        Output directory: ``<suite>/`` result files, ``<suite>.csv``, ``<suite>.md``,
        ``figures/``.
    reps
        Repetitions of the FDR experiment (seeds 0..reps-1); default 5, 1 with ``quick``.
    quick
        Tiny data, few epochs: checks the plumbing in seconds (numbers are meaningless).
    pbmc
        Path of ``pbmc3k.h5ad`` for the PBMC parts (skipped without it).
    docs
        A Markdown file (``docs/benchmarks.md``) whose ``<!-- suite:NAME -->`` section is
        replaced with the results (appended when absent).
    figures
        Also save the figures here (``docs/figures``).
    train
        ``False``: train nothing, report the saved results only (units not run yet are
        left out and the tables say how many repetitions they hold).
    datasets
        FDR suite only: run just these presets and real-count data sets (of
        ``("lopez2020", "draft", "hard", "pbmc_thinning", "pbmc_null")``); default all of
        them (the real-count ones only with ``pbmc``).
    log
        Progress messages go here.

    Returns
    -------
    The files written: per suite ``{suite: its Markdown section}`` and, where the suite
    draws one, ``{f"{suite}_figure": its PNG}``.
    """
    if suite not in (*SUITES, "all"):
        raise ValueError(f"Unknown suite {suite!r}; choose one of {(*SUITES, 'all')}.")
    with quiet_third_party(loggers=True):
        return _run_suites(suite, out, reps, quick, pbmc, docs, figures, train, datasets, log)


def _run_suites(suite, out, reps, quick, pbmc, docs, figures, train, datasets, log):
    """:func:`run_suite`'s body, run with third-party warnings and log lines quieted."""
    from ensemblevi.pl._utils import save_figure

    from ._figures import calibration_figure, fdr_figure

    reps = (1 if quick else 5) if reps is None else reps
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    stamp = f"{date.today().isoformat()}"
    flags = (" --quick" if quick else "") + ("" if train else " --no-train")
    command = "`ensemblevi benchmark --suite {}" + f"{flags}`"
    for name in SUITES if suite == "all" else (suite,):
        t = time.perf_counter()
        log(f"suite {name}:")
        if name == "fdr":
            cfg = FDRConfig.quick(reps=reps) if quick else FDRConfig(reps=reps)
            if datasets is not None:
                known = (*_fdr.PRESETS, *THINNING_DATASETS)
                bad = [d for d in datasets if d not in known]
                if bad:
                    raise ValueError(f"Unknown FDR data set(s) {bad}; choose from {known}.")
                cfg.presets = tuple(d for d in datasets if d in _fdr.PRESETS)
                cfg.datasets = tuple(d for d in datasets if d in THINNING_DATASETS)
            records = _fdr.run(out / "fdr", cfg, log, train, pbmc=pbmc)
            if not records:
                log("suite fdr: no results to report")
                continue
            summary = _fdr.summarise(records)
            body = fdr_markdown(summary, records)
            fig = fdr_figure(records)
            fig_name = "de_fdr"
            intro = (
                "The default DE (the counts estimand: the groups' mean normalised counts, "
                "empirical Bayes within strata of the model's posterior) and its posterior "
                "expected FDR rule (B vs A, delta 0.5; 'model alone (population)': the deep "
                "ensemble's own posterior, the earlier default) "
                "against the simulator's ground truth (pbmc_thinning: binomial thinning of "
                "real counts, truth on normalised expected expression; pbmc_null: no DE, "
                "'called' = fraction of genes called); deep K=1/3/5 are the first members of "
                f"the deep K=10; lr {cfg.lr:g} (real counts "
                f"{cfg.lr_of('pbmc_thinning'):g}), {cfg.n_samples} posterior draws per member."
            )
        elif name == "calibration":
            cfg = CalibrationConfig.quick() if quick else CalibrationConfig()
            records = _calibration.run(out / "calibration", cfg, pbmc, log, train)
            summary = _calibration.summarise(records)
            body = calibration_markdown(summary, records)
            fig = calibration_figure(records) if records else None
            fig_name = "calibration"
            intro = (
                "80/20 split of cells; randomised PIT and central-interval coverage of "
                f"held-out counts under the posterior predictive ({cfg.n_samples} latent "
                "draws per member, members mixed equally); coverage in brackets: minus "
                "nominal, in points. Held-out NLL: importance-sampled, nats per cell."
            )
        else:
            cfg = OODConfig.quick() if quick else OODConfig()
            records = _ood.run(out / "ood", cfg, pbmc, log, train)
            summary = _ood.summarise(records)
            body = ood_markdown(summary) if len(summary) else "No data set available.\n"
            fig, fig_name = None, None
            intro = (
                "Each model trains without one cell type; AUROC of each per-cell score for "
                "the left-out type's cells against seen cells held out from training."
            )
        summary.to_csv(out / f"{name}.csv", index=False)
        when = (
            f"Run time {time.perf_counter() - t:.0f} s."
            if train
            else "Rebuilt from the saved results of earlier runs."
        )
        when += " Training times are in the CSV only: they depend on the machine's load."
        reps_flag = f" --reps {reps}" if name == "fdr" else ""
        if name == "fdr" and datasets is not None:
            reps_flag += f" --datasets {','.join(datasets)}"
        heading = f"## Suite `{name}` ({command.format(name + reps_flag)}, {stamp})"
        section = f"{heading}\n\n{intro} {when}\n\n{body}"
        if fig is not None:
            for target in filter(None, (out / "figures", figures)):
                paths = save_figure(fig, Path(target) / fig_name)
                written[f"{name}_figure"] = paths[0]
            section += f"\n![{name}](figures/{fig_name}.png)\n"
        (out / f"{name}.md").write_text(section)
        written[name] = out / f"{name}.md"
        if docs is not None:
            update_docs(Path(docs), name, section)
        log(f"suite {name}: done in {time.perf_counter() - t:.0f} s")
    return written


__all__ = ["run_suite"]
