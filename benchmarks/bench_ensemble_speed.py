"""Training speed and memory of EnsembleSCVI against scvi-tools' SCVI, side by side.

Every configuration trains on the ``heartlike`` preset (18,641 cells x 1,200 genes,
4 batches) with the same architecture (1 hidden layer of 128, 10 latent, ZINB, batch
covariate) and the same 128 cells per minibatch per member, each in its own subprocess
(clean peak-memory figures). Prints a markdown report.

Run: ``.venv/bin/python benchmarks/bench_ensemble_speed.py [--epochs 3] [--seq 36]``
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
import warnings

CONFIGS = {
    "scvi": "scvi.model.SCVI",
    "single": "EnsembleSCVI single",
    "deep4": "EnsembleSCVI deep K=4",
    "batch4": "EnsembleSCVI batch K=4",
    "mcdropout4": "EnsembleSCVI mcdropout K=4",
    "deep36": "EnsembleSCVI deep K=36",
}
ARCH = {"n_hidden": 128, "n_latent": 10, "n_layers": 1, "gene_likelihood": "zinb"}


def _quiet() -> None:
    import logging

    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _data(path: str):
    import anndata

    return anndata.read_h5ad(path)


def _model(name: str, adata):
    import scvi

    from ensemblevi.model import EnsembleSCVI

    if name == "scvi":
        scvi.model.SCVI.setup_anndata(adata, layer="counts", batch_key="batch")
        return scvi.model.SCVI(adata, **ARCH)
    EnsembleSCVI.setup_anndata(adata, layer="counts", batch_key="batch")
    kind = name.rstrip("0123456789")
    k = int(name[len(kind) :] or 1)
    return EnsembleSCVI(adata, n_members=k, ensemble=kind, **ARCH)


def _step_flops(model) -> float:
    """Matmul FLOPs of one training step (forward + backward), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    loader = model._make_data_loader(adata=model.adata, batch_size=128, shuffle=True)
    tensors = next(iter(loader))
    module = model.module
    module.train()
    with FlopCounterMode(display=False) as counter:
        _, _, loss = module(tensors)
        loss.loss.backward()
    module.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def worker(name: str, epochs: int, seq: int, data: str) -> dict:
    """Train one configuration; returns its timings as a dict."""
    _quiet()
    from lightning.pytorch.callbacks import Callback

    class EpochTimer(Callback):
        def __init__(self):
            self.times: list[float] = []
            self.steps = 0

        def on_train_epoch_start(self, trainer, pl_module):
            self._t = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            self.times.append(time.perf_counter() - self._t)
            self.steps = trainer.num_training_batches

    adata = _data(data)
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    out: dict = {"name": name, "rss_after_data_mb": rss_data}
    if name == "scvi_seq":
        t0 = time.perf_counter()
        for _ in range(seq):
            model = _model("scvi", adata)
            model.train(max_epochs=epochs, batch_size=128, enable_progress_bar=False)
        out["total_s"] = time.perf_counter() - t0
        out["runs"] = seq
    else:
        model = _model(name, adata)
        out["flops_per_step"] = _step_flops(model)
        timer = EpochTimer()
        t0 = time.perf_counter()
        model.train(max_epochs=epochs, batch_size=128, enable_progress_bar=False, callbacks=[timer])
        out["total_s"] = time.perf_counter() - t0
        out["epoch_times"] = timer.times
        out["steps_per_epoch"] = timer.steps
        # steady state: epochs after the first (which pays one-off warm-up costs)
        steady = timer.times[1:] or timer.times
        out["epoch_s"] = statistics.median(steady)
        out["gflops"] = out["flops_per_step"] * out["steps_per_epoch"] / out["epoch_s"] / 1e9
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    return out


def matmul_peak() -> dict:
    """GFLOP/s of torch.matmul on the shapes of the model, best of several runs."""
    import torch

    res = {}
    for rows in (128, 512, 4096):
        a, b = torch.randn(rows, 1200), torch.randn(1200, 128)
        for _ in range(5):
            a @ b
        n = max(10, 20000 // rows)
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(n):
                a @ b
            best = min(best, (time.perf_counter() - t0) / n)
        res[f"{rows}x1200 @ 1200x128"] = 2 * rows * 1200 * 128 / best / 1e9
    return res


def _run_worker(name: str, epochs: int, seq: int, data: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--epochs", str(epochs)]
    cmd += ["--seq", str(seq), "--data", data]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"worker {name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seq", type=int, default=36, help="sequential SCVI trainings")
    parser.add_argument("--seq-epochs", type=int, default=1)
    parser.add_argument("--worker")
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--data", help="heartlike .h5ad (written to a temporary dir if absent)")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.epochs, args.seq, args.data)))
        return

    import os
    import tempfile

    from ensemblevi.data import synthetic

    tmp = tempfile.TemporaryDirectory()
    data = args.data or os.path.join(tmp.name, "heartlike.h5ad")
    if not os.path.exists(data):
        adata = synthetic("heartlike", seed=0)
        del adata.layers["true_rate"]
        adata.write_h5ad(data)
        del adata

    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    peak = matmul_peak()
    best_peak = max(peak.values())
    print("matmul peak: " + ", ".join(f"{k}: {v:.0f} GFLOP/s" for k, v in peak.items()) + "\n")

    names = args.only or list(CONFIGS)
    results = {}
    for name in names:
        results[name] = _run_worker(name, args.epochs, args.seq, data)
        print(f"  done {name}: {results[name]['epoch_s']:.2f} s/epoch", file=sys.stderr)
    base = results.get("scvi", {}).get("epoch_s")
    print(f"heartlike, {args.epochs} epochs each, steady-state epoch = median of epochs 2+\n")
    print(
        "| configuration | s / epoch | vs SCVI | members / SCVI-time | GFLOP/s | % of peak "
        "| peak RSS (MB) | RSS after loading data (MB) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in names:
        r = results[name]
        k = 36 if "36" in name else 4 if "4" in name else 1
        ratio = r["epoch_s"] / base if base else float("nan")
        print(
            f"| {CONFIGS[name]} | {r['epoch_s']:.2f} | {ratio:.2f}x | {k / ratio:.1f} "
            f"| {r['gflops']:.1f} | {100 * r['gflops'] / best_peak:.0f}% | {r['peak_rss_mb']:.0f} "
            f"| {r['rss_after_data_mb']:.0f} |"
        )

    if "deep36" in results and args.seq:
        seq = _run_worker("scvi_seq", args.seq_epochs, args.seq, data)
        one = _run_worker("deep36", args.seq_epochs, args.seq, data)
        print(
            f"\n36 members, {args.seq_epochs} epoch(s) each, wall time including set-up: "
            f"{args.seq} sequential scvi.model.SCVI trainings {seq['total_s']:.1f} s; "
            f"one EnsembleSCVI(deep, K=36) {one['total_s']:.1f} s; ratio "
            f"{one['total_s'] / seq['total_s']:.3f} (target <= 0.2). Steady-state ratio "
            f"from the table: {results['deep36']['epoch_s'] / (36 * base):.3f}."
        )


if __name__ == "__main__":
    main()
