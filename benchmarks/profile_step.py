"""Profile training steps (forward, backward, Adam) outside Lightning, per configuration.

Run: ``.venv/bin/python benchmarks/profile_step.py scvi deep4 single`` (names as in
``bench_ensemble_speed.py``; a ``+compile`` suffix, e.g. ``deep4+compile``, runs the step
inside ``compiled_likelihood()``; ``+composed`` uses autograd through the composed
likelihood instead of the fused forward/backward). Prints ms per step and torch
profiler's top operators. ``--cells`` (3,000) and ``--steps`` (20 timed, 10 profiled)
change the size.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from torch.profiler import profile

from ensemblevi.data import synthetic
from ensemblevi.module import _likelihood
from ensemblevi.module._likelihood import compiled_likelihood


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", default=["scvi", "deep4"])
    parser.add_argument("--cells", type=int, default=3000)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    names, n_steps = args.names, args.steps
    warnings.filterwarnings("ignore")
    from bench_ensemble_speed import _model

    adata = synthetic("heartlike", seed=0, n_cells=args.cells)
    for label in names:
        name, _, flag = label.partition("+")
        model = _model(name, adata)
        module = model.module
        module.train()
        loader = model._make_data_loader(adata=adata, batch_size=128, shuffle=True)
        batches = [b for b, _ in zip(loader, range(n_steps), strict=False)]
        # the optimiser each model's own training plan builds (scvi-tools: default Adam;
        # EnsembleTrainingPlan: fused Adam)
        opt = torch.optim.Adam(module.parameters(), lr=1e-3, eps=0.01, fused=name != "scvi")

        def step(batch, module=module, opt=opt, flag=flag):
            with compiled_likelihood(flag == "compile"):
                _, _, loss = module(batch, loss_kwargs={"kl_weight": 0.5})
                opt.zero_grad()
                loss.loss.backward()
            opt.step()

        fused = _likelihood._fused
        if flag == "composed":
            _likelihood._fused = lambda *args: False
        for b in batches[:3]:
            step(b)
        t0 = time.perf_counter()
        for b in batches:
            step(b)
        print(f"{label}: {(time.perf_counter() - t0) / len(batches) * 1e3:.1f} ms/step")
        with profile() as prof:
            for b in batches[: max(1, n_steps // 2)]:
                step(b)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
        _likelihood._fused = fused


if __name__ == "__main__":
    main()
