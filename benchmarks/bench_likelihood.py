"""Forward + backward time of the ZINB / NB per-cell log-likelihood sums, side by side.

Shapes of a K-member training step on the ``heartlike`` preset: ``(K, 128, 1200)``
rates and zero-inflation logits, ``(K, 1, 1200)`` dispersion, counts with the preset's
sparsity. Compares, interleaved in one run (best of ``--repeats`` rounds, each the median
of ``--steps`` calls):

* ``scvi``: ``ZeroInflatedNegativeBinomial(...).log_prob(x).sum(-1)`` with autograd;
* ``composed``: the exact sums of ``ensemblevi.module._likelihood`` without the fused
  backward (lgamma terms at per-gene shape and on non-zeros, autograd for the rest);
* ``fused``: the same sums through the hand-written ``autograd.Function``;
* ``fused+compile`` (``--compile``): the fused element-wise kernel through
  ``torch.compile`` (fixed shapes, so it compiles once).

Run: ``.venv/bin/python benchmarks/bench_likelihood.py [--k 1 4 36] [--compile]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from scvi.distributions import NegativeBinomial, ZeroInflatedNegativeBinomial

from ensemblevi.module import _likelihood as lik


def _inputs(k: int, b: int, g: int, nnz_frac: float, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.poisson(torch.rand(b, g, generator=gen) * 4, generator=gen)
    x = x * (torch.rand(b, g, generator=gen) < nnz_frac)
    mu = (torch.rand(k, b, g, generator=gen) * 5 + 0.01).requires_grad_()
    theta = (torch.rand(k, 1, g, generator=gen) * 3 + 0.1).requires_grad_()
    zi = torch.randn(k, b, g, generator=gen).requires_grad_()
    return x, mu, theta, zi


def _methods(zinb: bool, compiled: bool | None):
    def scvi(x, mu, theta, zi):
        if zinb:
            return (
                ZeroInflatedNegativeBinomial(mu=mu, theta=theta, zi_logits=zi).log_prob(x).sum(-1)
            )
        return NegativeBinomial(mu=mu, theta=theta).log_prob(x).sum(-1)

    def composed(x, mu, theta, zi):
        if zinb:
            return lik._zinb_log_prob_sum(x, mu, theta, zi)
        return lik._nb_log_prob_sum(x, mu, theta)

    def fused(x, mu, theta, zi):
        return lik._CountLogProbSum.apply(x, mu, theta, zi if zinb else None)

    out = {"scvi": scvi, "composed": composed, "fused": fused}
    if compiled is not None:

        def fused_compiled(x, mu, theta, zi):
            with lik.compiled_likelihood():
                return fused(x, mu, theta, zi)

        out["fused+compile"] = fused_compiled
    return out


def _time(fn, inputs, steps: int) -> float:
    x, mu, theta, zi = inputs
    params = [mu, theta, zi]
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        out = fn(x, mu, theta, zi)
        torch.autograd.grad(
            out.mean(-1).sum(), [p for p in params if p is not None], allow_unused=True
        )
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 4, 36])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--genes", type=int, default=1200)
    parser.add_argument("--nnz", type=float, default=0.35, help="fraction of non-zero counts")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()

    compiled = args.compile or None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ")
    print(
        f"B = {args.batch}, G = {args.genes}, {args.nnz:.0%} non-zero counts; "
        f"ms per forward+backward, best of {args.repeats} rounds of the median of "
        f"{args.steps} calls, methods interleaved\n"
    )
    print(
        "| likelihood | K | scvi-tools (ms) | composed (ms) | fused (ms) | "
        + ("fused+compile (ms) | " if args.compile else "")
        + "fused vs scvi-tools | fused vs composed |"
    )
    print("| --- | --- | --- | --- | --- | " + ("--- | " if args.compile else "") + "--- | --- |")
    for zinb in (True, False):
        methods = _methods(zinb, compiled)
        for k in args.k:
            steps = max(3, args.steps // max(1, k // 4))
            inputs = _inputs(k, args.batch, args.genes, args.nnz)
            for fn in methods.values():  # warm-up (and compilation)
                _time(fn, inputs, 2)
            best = {name: float("inf") for name in methods}
            for _ in range(args.repeats):
                for name, fn in methods.items():
                    best[name] = min(best[name], _time(fn, inputs, steps))
            ms = {name: 1e3 * v for name, v in best.items()}
            row = f"| {'ZINB' if zinb else 'NB'} | {k} | {ms['scvi']:.1f} | "
            row += f"{ms['composed']:.1f} | {ms['fused']:.1f} | "
            if args.compile:
                row += f"{ms['fused+compile']:.1f} | "
            row += f"{ms['scvi'] / ms['fused']:.2f}x | {ms['composed'] / ms['fused']:.2f}x |"
            print(row, flush=True)


if __name__ == "__main__":
    main()
