"""Time of the uncertainty summary per chunk of cells: decoder pass vs the decomposition.

Builds ``heartlike`` at ``--cells`` x ``--genes`` (sparse, ``lean=True``), an untrained deep
ensemble of ``--members`` (the cost does not depend on training), and times, per chunk
of ``--chunk`` cells with ``--n-samples`` latent samples per member: the decoder pass
alone (``module.predictive``) and one whole step of ``iter_uncertainty`` (decoder pass,
gene selection and variance decomposition); the difference is the decomposition's cost.
Single-threaded by default, so it can run beside another job.

Run: ``.venv/bin/python benchmarks/profile_uncertainty.py``
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=2048)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--n-samples", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import torch

    from ensemblevi.data import synthetic
    from ensemblevi.model import EnsembleSCVI

    torch.set_num_threads(args.threads)
    adata = synthetic("heartlike", seed=0, n_cells=args.cells, n_genes=args.genes, lean=True)
    EnsembleSCVI.setup_anndata(adata, batch_key="batch")
    model = EnsembleSCVI(adata, n_members=args.members, seed=0)
    model.is_trained_ = True
    model.module.eval()
    loader = model._make_data_loader(adata=adata, batch_size=args.chunk)
    chunks = [t for t, _ in zip(loader, range(args.cells // args.chunk), strict=False)]
    kw = {"n_samples": args.n_samples, "batch_size": args.chunk, "progress": False}

    def timed(fn) -> float:
        fn()  # warm-up
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e3 / len(chunks)

    with torch.inference_mode():
        decode = timed(
            lambda: [model.module.predictive(c, n_samples=args.n_samples) for c in chunks]
        )
    whole = timed(lambda: list(model.iter_uncertainty(adata, **kw)))
    print(
        f"{args.members} members x {args.n_samples} samples, chunks of {args.chunk} cells x "
        f"{args.genes} genes, {torch.get_num_threads()} thread(s); ms per chunk, median of 3\n"
    )
    print("| decoder pass | whole iter_uncertainty step | decomposition (difference) |")
    print("| --- | --- | --- |")
    print(f"| {decode:.0f} | {whole:.0f} | {whole - decode:.0f} |")


if __name__ == "__main__":
    main()
