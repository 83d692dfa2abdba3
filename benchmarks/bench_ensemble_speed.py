"""Training speed and memory of EnsembleSCVI against scvi-tools' SCVI, side by side.

Every configuration trains on the ``heartlike`` preset (18,641 cells x 1,200 genes,
4 batches) with the same architecture (1 hidden layer of 128, 10 latent, ZINB, batch
covariate) and the same 128 cells per minibatch per member, each in its own subprocess
(clean peak-memory figures). Prints a markdown report. A ``+compile`` suffix
(``deep4+compile``) trains with ``compile_likelihood=True``.

Run: ``.venv/bin/python benchmarks/bench_ensemble_speed.py [--epochs 3] [--seq 36]``
(``--only scvi single --repeats 5``: the side-by-side ratio on a loaded machine, medians;
``--only scvi single --interleaved``: every configuration in this one process, one epoch of
each in turn, wall and CPU seconds per epoch: the fairest comparison on a shared machine);
on a GPU: ``--accelerator gpu --batch-sizes 128 1024`` (adds peak GPU memory).
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
    "single+compile": "EnsembleSCVI single, compiled likelihood",
    "deep4": "EnsembleSCVI deep K=4",
    "deep4+compile": "EnsembleSCVI deep K=4, compiled likelihood",
    "batch4": "EnsembleSCVI batch K=4",
    "mcdropout4": "EnsembleSCVI mcdropout K=4",
    "deep36": "EnsembleSCVI deep K=36",
    "deep36+compile": "EnsembleSCVI deep K=36, compiled likelihood",
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

    name = name.partition("+")[0]
    if name == "scvi":
        scvi.model.SCVI.setup_anndata(adata, layer="counts", batch_key="batch")
        return scvi.model.SCVI(adata, **ARCH)
    EnsembleSCVI.setup_anndata(adata, layer="counts", batch_key="batch")
    kind = name.rstrip("0123456789")
    k = int(name[len(kind) :] or 1)
    return EnsembleSCVI(adata, n_members=k, ensemble=kind, **ARCH)


def _step_flops(model, batch_size: int) -> float:
    """Matmul FLOPs of one training step (forward + backward), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    loader = model._make_data_loader(adata=model.adata, batch_size=batch_size, shuffle=True)
    tensors = next(iter(loader))
    module = model.module
    module.train()
    with FlopCounterMode(display=False) as counter:
        _, _, loss = module(tensors)
        loss.loss.backward()
    module.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def worker(
    name: str, epochs: int, seq: int, data: str, accelerator: str = "cpu", batch_size: int = 128
) -> dict:
    """Train one configuration; returns its timings as a dict."""
    _quiet()
    import torch

    gpu = accelerator == "gpu"
    fit = {"batch_size": batch_size, "enable_progress_bar": False, "accelerator": accelerator}
    if gpu:
        fit["devices"] = 1
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
            model.train(max_epochs=epochs, **fit)
        out["total_s"] = time.perf_counter() - t0
        out["runs"] = seq
    else:
        model = _model(name, adata)
        out["flops_per_step"] = _step_flops(model, batch_size)
        if name != "scvi":  # an ensemblevi option: scvi.model.SCVI.train has no such argument
            # explicit both ways: the default compiles only long trainings
            fit["compile_likelihood"] = name.endswith("+compile")
        timer = EpochTimer()
        t0 = time.perf_counter()
        model.train(max_epochs=epochs, callbacks=[timer], **fit)
        out["total_s"] = time.perf_counter() - t0
        out["epoch_times"] = timer.times
        out["steps_per_epoch"] = timer.steps
        # steady state: epochs after the first (which pays one-off warm-up costs)
        steady = timer.times[1:] or timer.times
        out["epoch_s"] = statistics.median(steady)
        out["gflops"] = out["flops_per_step"] * out["steps_per_epoch"] / out["epoch_s"] / 1e9
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    if gpu:
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["device"] = torch.cuda.get_device_name()
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


def interleaved(names: list[str], epochs: int, data: str, batch_size: int = 128) -> None:
    """Train every configuration in this process, one epoch of each in turn.

    Each ``train`` call runs one epoch (the models keep training from where they were);
    the epoch's wall and CPU seconds (this process, all threads) are read by a callback, so
    set-up is excluded. A load change on a shared machine hits every configuration alike;
    CPU seconds are less sensitive to the load than wall seconds.
    """
    _quiet()
    from lightning.pytorch.callbacks import Callback

    class EpochClock(Callback):
        def __init__(self):
            self.wall: list[float] = []
            self.cpu: list[float] = []

        def on_train_epoch_start(self, trainer, pl_module):
            self._t, self._c = time.perf_counter(), time.process_time()

        def on_train_epoch_end(self, trainer, pl_module):
            self.wall.append(time.perf_counter() - self._t)
            self.cpu.append(time.process_time() - self._c)

    adata = _data(data)
    models = {name: _model(name, adata.copy()) for name in names}
    clocks = {name: EpochClock() for name in names}
    for epoch in range(epochs):
        for name in names if epoch % 2 == 0 else names[::-1]:
            fit = {"batch_size": batch_size, "enable_progress_bar": False}
            if name != "scvi":
                fit["compile_likelihood"] = name.endswith("+compile")
            models[name].train(max_epochs=1, callbacks=[clocks[name]], accelerator="cpu", **fit)
            print(f"  epoch {epoch + 1} {name}: {clocks[name].wall[-1]:.2f} s", file=sys.stderr)
    base = clocks.get("scvi")
    print(
        f"heartlike {adata.n_obs:,} cells, batch size {batch_size}, {epochs} epochs each, "
        "interleaved in one process; medians over the epochs\n"
    )
    print("| configuration | s / epoch | vs SCVI | CPU s / epoch | CPU vs SCVI |")
    print("| --- | --- | --- | --- | --- |")
    for name in names:
        wall, cpu = statistics.median(clocks[name].wall), statistics.median(clocks[name].cpu)
        w_base = statistics.median(base.wall) if base else float("nan")
        c_base = statistics.median(base.cpu) if base else float("nan")
        print(
            f"| {CONFIGS[name]} | {wall:.2f} | {wall / w_base:.2f}x | {cpu:.2f} "
            f"| {cpu / c_base:.2f}x |"
        )


def _run_worker(
    name: str, epochs: int, seq: int, data: str, accelerator: str = "cpu", batch_size: int = 128
) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--epochs", str(epochs)]
    cmd += ["--seq", str(seq), "--data", data, "--accelerator", accelerator]
    cmd += ["--batch-sizes", str(batch_size)]
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
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128])
    parser.add_argument("--cells", type=int, default=None, help="heartlike's size (smoke runs)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs per configuration, alternating the order; the table shows the medians",
    )
    parser.add_argument(
        "--interleaved",
        action="store_true",
        help="all configurations in this process, one epoch of each in turn",
    )
    args = parser.parse_args()
    if args.worker:
        res = worker(
            args.worker, args.epochs, args.seq, args.data, args.accelerator, args.batch_sizes[0]
        )
        print(json.dumps(res))
        return

    import os
    import tempfile

    from ensemblevi.data import synthetic

    tmp = tempfile.TemporaryDirectory()
    data = args.data or os.path.join(tmp.name, "heartlike.h5ad")
    if not os.path.exists(data):
        size = {} if args.cells is None else {"n_cells": args.cells}
        adata = synthetic("heartlike", seed=0, **size)
        del adata.layers["true_rate"]
        adata.write_h5ad(data)
        del adata

    import torch

    if args.interleaved:
        interleaved(args.only or ["scvi", "single"], args.epochs, data, args.batch_sizes[0])
        return
    gpu = args.accelerator == "gpu"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.accelerator}\n")
    best_peak = float("nan")
    if not gpu:
        peak = matmul_peak()
        best_peak = max(peak.values())
        print("matmul peak: " + ", ".join(f"{k}: {v:.0f} GFLOP/s" for k, v in peak.items()))
        print()
    names = args.only or list(CONFIGS)
    for batch_size in args.batch_sizes:
        runs: dict[str, list[dict]] = {name: [] for name in names}
        for rep in range(args.repeats):
            # alternate the order, so that a drift of the machine's load hits both sides
            for name in names if rep % 2 == 0 else names[::-1]:
                runs[name].append(
                    _run_worker(name, args.epochs, args.seq, data, args.accelerator, batch_size)
                )
                print(f"  done {name}: {runs[name][-1]['epoch_s']:.2f} s/epoch", file=sys.stderr)
        # each configuration's run with the median steady-state epoch
        results = {
            name: sorted(r, key=lambda x: x["epoch_s"])[(len(r) - 1) // 2]
            for name, r in runs.items()
        }
        base = results.get("scvi", {}).get("epoch_s")
        device = next(iter(results.values())).get("device", "CPU")
        print(
            f"heartlike on {device}, batch size {batch_size}, {args.epochs} epochs each, "
            "steady-state epoch = median of epochs 2+\n"
        )
        gpu_col = " peak GPU memory (MB) |" if gpu else ""
        print(
            "| configuration | s / epoch | vs SCVI | members / SCVI-time | GFLOP/s | % of peak "
            "| peak RSS (MB) | RSS after loading data (MB) |" + gpu_col
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- |" + (" --- |" if gpu else ""))
        for name in names:
            r = results[name]
            k = 36 if "36" in name else 4 if "4" in name else 1
            ratio = r["epoch_s"] / base if base else float("nan")
            print(
                f"| {CONFIGS[name]} | {r['epoch_s']:.2f} | {ratio:.2f}x | {k / ratio:.1f} "
                f"| {r['gflops']:.1f} | {100 * r['gflops'] / best_peak:.0f}% "
                f"| {r['peak_rss_mb']:.0f} | {r['rss_after_data_mb']:.0f} |"
                + (f" {r['peak_gpu_mb']:.0f} |" if gpu else "")
            )
        big = [n for n in names if n.startswith("deep36")]
        if big and args.seq:
            seq = _run_worker(
                "scvi_seq", args.seq_epochs, args.seq, data, args.accelerator, batch_size
            )
            print(
                f"\n36 members, {args.seq_epochs} epoch(s) each, wall time including set-up: "
                f"{args.seq} sequential scvi.model.SCVI trainings {seq['total_s']:.1f} s"
            )
            for name in big:
                one = _run_worker(
                    name, args.seq_epochs, args.seq, data, args.accelerator, batch_size
                )
                print(
                    f"- {CONFIGS[name]}: {one['total_s']:.1f} s, ratio "
                    f"{one['total_s'] / seq['total_s']:.3f}; steady-state ratio from the "
                    f"table {results[name]['epoch_s'] / (36 * base):.3f}"
                )
        print()


if __name__ == "__main__":
    main()
