"""Running the suites' units: timed training, and per-unit result files written
atomically and reused on a rerun with the same settings (an interrupted suite resumes)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from ensemblevi._files import write_text


def train_timed(
    adata,
    kind: str,
    k: int,
    seed: int,
    epochs: int,
    lr: float,
    train_size: float | None = None,
    **kwargs,
):
    """An :class:`~ensemblevi.model.EnsembleSCVI` trained quietly; ``(model, seconds)``."""
    from ensemblevi.model import EnsembleSCVI

    model = EnsembleSCVI(adata, n_members=k, ensemble=kind, seed=seed, **kwargs)
    t = time.perf_counter()
    extra = {} if train_size is None else {"train_size": train_size}
    model.train(
        max_epochs=epochs, seed=seed, enable_progress_bar=False, plan_kwargs={"lr": lr}, **extra
    )
    return model, time.perf_counter() - t


def settings_of(cfg, drop: tuple[str, ...] = ()) -> dict:
    """The config as plain JSON values (what a saved record must match to be reused)."""
    return json.loads(
        json.dumps({k: v for k, v in asdict(cfg).items() if k not in drop}, default=str)
    )


def cached(path: Path, settings: dict) -> dict | None:
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    return record if record.get("settings") == settings else None


def save(path: Path, record: dict) -> None:
    # floats for numpy scalars: the records are read back as plain JSON numbers
    write_text(path, json.dumps(record, default=float))


def load_dataset(name: str, cfg, pbmc: Path | None):
    """(adata with counts in ``layers["counts"]``, batch key) or None when not available."""
    import anndata as ad

    from ensemblevi import data

    if name == "pbmc3k":
        if pbmc is None or not Path(pbmc).exists():
            return None
        adata = ad.read_h5ad(pbmc)
        data.preprocess(adata, n_top_genes=1200)
        return adata, None
    adata = data.synthetic(name, seed=cfg.seed, **cfg.data_overrides)
    return adata, ("batch" if adata.obs["batch"].nunique() > 1 else None)


def run_datasets(
    out: Path, cfg, runner: Callable, pbmc: Path | None, log=print, train: bool = True
) -> list[dict]:
    """``runner(name, adata, batch_key, cfg, log)`` for each of ``cfg.datasets`` (with
    ``train=False`` only the saved records)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = settings_of(cfg)
    records = []
    for name in cfg.datasets:
        path = out / f"{name}.json"
        record = cached(path, settings)
        if record is None and not train:
            log(f"  {name}: not run yet, left out")
            continue
        if record is None:
            loaded = load_dataset(name, cfg, pbmc)
            if loaded is None:
                log(f"  {name}: skipped (no file; pass --pbmc PATH to pbmc3k.h5ad)")
                continue
            log(f"  {name}:")
            record = {**runner(name, *loaded, cfg, log), "settings": settings}
            save(path, record)
        else:
            log(f"  {name}: reusing {path}")
        records.append(record)
    return records
