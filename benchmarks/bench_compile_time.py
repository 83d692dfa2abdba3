"""One-off cost of ``compile_likelihood``: compile time of the fused ZINB kernel.

In a fresh process, on the shapes of a K-member ``heartlike`` training step
(``(K, 128, 1200)``; the epoch's last, smaller minibatch compiles once more), times the
first forward + backward through ``compiled_likelihood()`` (tracing and compiling
``_dense_terms`` and ``_grad_terms``) against the median of later calls, and the eager
kernel's median for the per-step gain. Prints one markdown row per shape. The compile
caches go to a fresh temporary directory (a cold start, as on a new machine) unless
``--warm-cache``.

Run: ``.venv/bin/python benchmarks/bench_compile_time.py [--k 4] [--batches 128 81]``

2026-12-01, torch 2.13.0+cpu, 2 threads, machine shared (load average 3.5-4.5), K = 4:
cold cache, first calls 23.9 s + 6.7 s and 19.8 s + 4.0 s (two runs; (4, 128, 1200) and
(4, 81, 1200)); warm cache 4.1 s + 0.6 s. Step times are not meaningful under that load
(the steady-state gain is in ``docs/benchmarks.md``, measured on a quiet machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

if "--warm-cache" not in sys.argv:  # before torch reads it
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")

import torch

from ensemblevi.module import _likelihood as lik


def _inputs(k: int, b: int, g: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.poisson(torch.rand(b, g, generator=gen) * 4, generator=gen)
    x = x * (torch.rand(b, g, generator=gen) < 0.1)  # heartlike: about 10% non-zero
    mu = (torch.rand(k, b, g, generator=gen) * 5 + 0.01).requires_grad_()
    theta = (torch.rand(k, 1, g, generator=gen) * 3 + 0.1).requires_grad_()
    zi = torch.randn(k, b, g, generator=gen).requires_grad_()
    return x, mu, theta, zi


def _step(args) -> float:
    start = time.perf_counter()
    out = lik.zinb_log_prob_sum(*args)
    torch.autograd.grad(out.sum(), args[1:])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--genes", type=int, default=1200)
    parser.add_argument("--batches", type=int, nargs="+", default=[128, 81])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warm-cache", action="store_true", help="keep inductor's disk cache")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, K = {args.k}\n")
    print("| shape | first call (s) | compile (s) | compiled step (ms) | eager step (ms) |")
    print("| --- | --- | --- | --- | --- |")
    for b in args.batches:
        inputs = _inputs(args.k, b, args.genes)
        eager = statistics.median(_step(inputs) for _ in range(args.steps))
        with lik.compiled_likelihood() as run:
            first = _step(inputs)
            steady = statistics.median(_step(inputs) for _ in range(args.steps))
        if run.failed:
            raise SystemExit(f"torch.compile failed here: {run.failed}")
        print(
            f"| ({args.k}, {b}, {args.genes}) | {first:.1f} | {first - steady:.1f} | "
            f"{1e3 * steady:.1f} | {1e3 * eager:.1f} |"
        )


if __name__ == "__main__":
    main()
