"""Execute the tutorial notebooks (docs/tutorials/*.ipynb) in sorted order.

    python docs/tutorials/run_tutorials.py           # full settings, outputs written in place
    python docs/tutorials/run_tutorials.py --quick   # small settings, executed copies in a temp dir
    python docs/tutorials/run_tutorials.py --quick --only 03_new_sample

Every kernel is the running interpreter (a kernel spec written to a temporary folder and
put first on JUPYTER_PATH), so whatever environment runs this script runs the notebooks;
the kernel's working directory is docs/tutorials/ and, when the checkout's src/ holds the
package, it is put first on the kernel's PYTHONPATH so the notebooks document the code
beside them rather than some other installed copy. Exits non-zero on the first failing
cell, naming the notebook and the cell.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SITE_PACKAGES = re.compile(r"/[^\s\"']*/site-packages/")
KERNEL_NAME = "python3"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _kernel_spec_dir(root: Path) -> None:
    """Write a kernel spec pointing at this interpreter under ``root/kernels``."""
    spec = root / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "Python 3", "language": "python"})
    )


def _kernel_env(quick: bool, threads: int | None) -> None:
    """The environment every kernel inherits (jupyter_client copies os.environ)."""
    os.environ["EV_TUTORIAL_QUICK"] = "1" if quick else "0"
    if threads:
        # On a shared machine torch's default of one thread per core oversubscribes it: a
        # PBMC epoch measured 10x slower with 2 threads than with 1 under other jobs' load.
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(threads)
    # Lightning and tqdm would otherwise fill the outputs with progress bars.
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    # tqdm warns at import when ipywidgets is missing, which a headless run need not have.
    os.environ.setdefault("PYTHONWARNINGS", "ignore:IProgress not found")
    src = ROOT / "src"
    if (src / "ensemblevi" / "__init__.py").exists():
        parts = [str(src), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))


def _cell_source_head(cell, n: int = 3) -> str:
    lines = cell.source.strip().splitlines()[:n]
    return "\n".join("    " + line for line in lines)


def tidy_paths(nb) -> None:
    """Shorten this machine's paths in the printed outputs (warnings name their source
    file): the checkout's root goes, an environment's prefix becomes ``site-packages/``,
    so the rendered docs show where a warning comes from, not where it was executed."""
    root = str(ROOT) + os.sep
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                text = output["text"].replace(root, "")
                output["text"] = SITE_PACKAGES.sub("site-packages/", text)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_notebook(path: Path, out: Path, timeout: int) -> tuple[float, float]:
    """Execute ``path`` and write it to ``out``; raise SystemExit on a failing cell.

    Returns the wall-clock seconds and the CPU seconds of the kernel and what it started
    (counted once the kernel has exited): on a shared machine the CPU time says more about
    the notebook than the wall-clock time does.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name=KERNEL_NAME,
        resources={"metadata": {"path": str(HERE)}},
        record_timing=False,
        allow_errors=False,
    )
    start, cpu = time.perf_counter(), _children_cpu()
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            try:
                client.execute_cell(cell, index)
            except (CellExecutionError, CellTimeoutError) as err:
                # Keep the failed notebook so its traceback can be read in full, outside
                # docs/ so that a failed run leaves nothing for the site or git to pick up.
                failed_dir = Path(tempfile.gettempdir()) / "ev-tutorials-failed"
                failed_dir.mkdir(exist_ok=True)
                failed = failed_dir / path.name
                nbformat.write(nb, failed)
                raise SystemExit(
                    f"{path.name}: cell {index} failed ({type(err).__name__}):\n"
                    f"{_cell_source_head(cell)}\n{ANSI.sub('', str(err))[-3000:]}\n"
                    f"executed copy with the error: {failed}"
                ) from None
    elapsed = time.perf_counter() - start
    nb.metadata.pop("widgets", None)
    tidy_paths(nb)
    nbformat.validate(nb)
    nbformat.write(nb, out)
    return elapsed, _children_cpu() - cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small settings (EV_TUTORIAL_QUICK=1)")
    parser.add_argument("--only", action="append", default=[], help="a notebook (repeatable)")
    parser.add_argument("--out", type=Path, default=None, help="folder for executed copies")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per kernel")
    args = parser.parse_args(argv)

    notebooks = sorted(HERE.glob("[0-9]*.ipynb"))
    if args.only:
        wanted = {name.removesuffix(".ipynb") for name in args.only}
        unknown = wanted - {nb.stem for nb in notebooks}
        if unknown:
            names = ", ".join(nb.stem for nb in notebooks)
            parser.error(f"no notebook named {sorted(unknown)}; there are: {names}")
        notebooks = [nb for nb in notebooks if nb.stem in wanted]
    if not notebooks:
        parser.error(f"no notebooks in {HERE}")

    # Quick runs are checks: they never rewrite the committed notebooks.
    in_place = not args.quick and args.out is None
    out_dir = args.out or (None if in_place else Path(tempfile.mkdtemp(prefix="ev-tutorials-")))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)

    _kernel_env(args.quick, args.threads)
    with tempfile.TemporaryDirectory(prefix="ev-kernel-") as kdir:
        _kernel_spec_dir(Path(kdir))
        jpath = [kdir, *filter(None, os.environ.get("JUPYTER_PATH", "").split(os.pathsep))]
        os.environ["JUPYTER_PATH"] = os.pathsep.join(jpath)
        total = 0.0
        mode = "quick" if args.quick else "full"
        for nb in notebooks:
            out = nb if in_place else out_dir / nb.name
            print(f"[{mode}] {nb.name} ...", flush=True)
            seconds, cpu = run_notebook(nb, out, args.timeout)
            total += seconds
            print(f"[{mode}] {nb.name}: {seconds:.1f} s ({cpu:.1f} s CPU) -> {out}", flush=True)
    print(f"[{mode}] {len(notebooks)} notebook(s) in {total:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
