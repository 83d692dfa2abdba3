"""Atlas-size run: peak memory and throughput of training and the uncertainty summary.

The ``heartlike`` preset scaled to ``--cells`` x ``--genes`` (``synthetic(lean=True)``:
sparse counts only) is written to an ``.h5ad``; a fresh worker process then reads it
(in memory, or ``--backed``), registers it, trains a deep ensemble of ``--members`` for
``--epochs`` epoch(s), and computes the full per-gene and per-cell uncertainty summary
(``get_uncertainty(return_frames=False, store_layers=False)``), streaming over cells.
Peak resident memory (the process's high-water mark) is reported after each phase.

Run: ``.venv/bin/python benchmarks/bench_atlas.py --cells 500000 --genes 2000``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def generate(path: str, cells: int, genes: int, seed: int) -> dict:
    from ensemblevi.data import synthetic

    t0 = time.perf_counter()
    adata = synthetic("heartlike", seed=seed, n_cells=cells, n_genes=genes, lean=True)
    t_sim = time.perf_counter() - t0
    adata.write_h5ad(path)
    return {
        "simulate_s": t_sim,
        "write_s": time.perf_counter() - t0 - t_sim,
        "nnz": int(adata.X.nnz),
        "density": adata.X.nnz / (cells * genes),
        "file_mb": os.path.getsize(path) / 2**20,
        "peak_rss_mb": _peak_mb(),
    }


def worker(path: str, members: int, epochs: int, n_samples: int, backed: bool) -> dict:
    import logging

    import anndata
    import torch

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    from ensemblevi.model import EnsembleSCVI

    out: dict = {"rss_after_import_mb": _rss_mb()}
    t0 = time.perf_counter()
    adata = anndata.read_h5ad(path, backed="r" if backed else None)
    out["read_s"] = time.perf_counter() - t0
    out["rss_after_read_mb"] = _rss_mb()
    t0 = time.perf_counter()
    EnsembleSCVI.setup_anndata(adata, batch_key="batch")
    model = EnsembleSCVI(adata, n_members=members, ensemble="deep", seed=0)
    out["setup_s"] = time.perf_counter() - t0
    out["peak_after_setup_mb"] = _peak_mb()
    t0 = time.perf_counter()
    model.train(max_epochs=epochs, batch_size=128, train_size=1.0, enable_progress_bar=False)
    out["train_s"] = time.perf_counter() - t0
    out["train_cells_per_s"] = adata.n_obs * epochs / out["train_s"]
    out["peak_after_train_mb"] = _peak_mb()
    t0 = time.perf_counter()
    res = model.get_uncertainty(
        adata, n_samples=n_samples, return_frames=False, store_layers=False, progress=False
    )
    out["summary_s"] = time.perf_counter() - t0
    out["summary_cells_per_s"] = adata.n_obs / out["summary_s"]
    out["peak_after_summary_mb"] = _peak_mb()
    out["summary_shapes"] = [list(res["genes"].shape), list(res["cells"].shape)]
    out["threads"] = torch.get_num_threads()
    return out


def _sub(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cells", type=int, default=500_000)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--n-samples", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backed", action="store_true", help="read the .h5ad backed ('r')")
    parser.add_argument("--data", help=".h5ad to (re)use; generated when absent")
    parser.add_argument("--role", choices=["generate", "worker"])
    args = parser.parse_args()
    if args.role == "generate":
        print(json.dumps(generate(args.data, args.cells, args.genes, args.seed)))
        return
    if args.role == "worker":
        print(json.dumps(worker(args.data, args.members, args.epochs, args.n_samples, args.backed)))
        return

    tmp = tempfile.TemporaryDirectory()
    data = args.data or os.path.join(tmp.name, f"heartlike_{args.cells}.h5ad")
    size = ["--cells", str(args.cells), "--genes", str(args.genes), "--seed", str(args.seed)]
    gen = None
    if not os.path.exists(data):
        gen = _sub(["--role", "generate", "--data", data, *size])
    run = ["--members", str(args.members), "--epochs", str(args.epochs)]
    run += ["--n-samples", str(args.n_samples)] + (["--backed"] if args.backed else [])
    res = _sub(["--role", "worker", "--data", data, *run])
    mode = "backed" if args.backed else "in memory"
    print(
        f"heartlike scaled to {args.cells:,} cells x {args.genes:,} genes, deep K = "
        f"{args.members}, {args.epochs} epoch(s), batch 128, uncertainty summary with "
        f"{args.n_samples} latent samples per member; data read {mode}; "
        f"{res['threads']} torch threads\n"
    )
    if gen:
        print(
            f"simulation {gen['simulate_s']:.0f} s, write {gen['write_s']:.0f} s, "
            f"{gen['nnz']:,} non-zeros ({100 * gen['density']:.0f}% dense), file "
            f"{gen['file_mb']:,.0f} MB, generator peak RSS "
            f"{gen['peak_rss_mb']:,.0f} MB\n"
        )
    print("| phase | time (s) | cells / s | peak RSS so far (MB) |")
    print("| --- | --- | --- | --- |")
    print(f"| import | | | {res['rss_after_import_mb']:,.0f} (current) |")
    print(f"| read .h5ad | {res['read_s']:.1f} | | {res['rss_after_read_mb']:,.0f} (current) |")
    print(f"| setup_anndata + model | {res['setup_s']:.1f} | | {res['peak_after_setup_mb']:,.0f} |")
    print(
        f"| train | {res['train_s']:.1f} | {res['train_cells_per_s']:,.0f} "
        f"| {res['peak_after_train_mb']:,.0f} |"
    )
    print(
        f"| uncertainty summary | {res['summary_s']:.1f} | {res['summary_cells_per_s']:,.0f} "
        f"| {res['peak_after_summary_mb']:,.0f} |"
    )
    peak = res["peak_after_summary_mb"]
    print(f"\npeak RSS {peak / 1024:.2f} GB (target < 8 GB: {'met' if peak < 8192 else 'missed'})")


if __name__ == "__main__":
    main()
