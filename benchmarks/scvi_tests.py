"""Run scvi-tools' own ``tests/model/test_scvi.py`` against ``EnsembleSCVI``.

The test file is scvi-tools' (public, BSD-3); the project does not vendor it. This script
takes it from a scvi-tools source tree or git clone on the developer's machine, copies
its ``tests`` package into a scratch folder, and swaps the one line that imports
``SCVI`` for a subclass of ``EnsembleSCVI`` whose only change is the defaults of
``ensemble`` and ``n_members``. Nothing else in the test file changes.

Usage (no network needed once the clone exists)::

    git clone https://github.com/scverse/scvi-tools /tmp/scvi-tools   # once, anywhere
    .venv/bin/python benchmarks/scvi_tests.py --source /tmp/scvi-tools --tag 1.4.2 \
        --ensemble single --n-members 1
    .venv/bin/python benchmarks/scvi_tests.py --source /tmp/scvi-tools --tag 1.4.2 \
        --ensemble deep --n-members 2
    .venv/bin/python benchmarks/scvi_tests.py --source /tmp/scvi-tools --reference  # scvi's SCVI

``--source`` may be a plain source tree (then ``--tag`` is ignored) or a git repository
(a bare one works: the tag's ``tests`` folder is extracted with ``git archive``). Extra
arguments after ``--`` go to pytest (e.g. ``-- -k batch_embeddings -x``). The script
prints pytest's summary and writes a JSON of every test's outcome with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

MARKER = ".ensemblevi-scvi-tests"
IMPORT_LINE = "from scvi.model import SCVI\n"

SHIM = '''"""SCVI as EnsembleSCVI with other defaults: written by benchmarks/scvi_tests.py."""

from ensemblevi.model import EnsembleSCVI


class SCVI(EnsembleSCVI):
    """``EnsembleSCVI`` whose ``ensemble`` and ``n_members`` defaults are {ensemble!r}, {n}."""

    def __init__(self, adata=None, n_members={n}, ensemble={ensemble!r}, **kwargs):
        super().__init__(adata, n_members=n_members, ensemble=ensemble, **kwargs)
'''


def extract_tests(source: Path, tag: str, dest: Path) -> Path:
    """Copy scvi-tools' ``tests`` package for ``tag`` from ``source`` into ``dest``."""
    shutil.rmtree(dest / "tests", ignore_errors=True)  # dest is the script's own scratch
    if (source / "tests" / "model" / "test_scvi.py").is_file() and not _is_git(source):
        subprocess.run(["cp", "-r", str(source / "tests"), str(dest)], check=True)
        return dest / "tests"
    archive = dest / "tests.tar"
    with open(archive, "wb") as fh:
        subprocess.run(
            ["git", "--git-dir", str(_git_dir(source)), "archive", tag, "tests"],
            stdout=fh,
            check=True,
        )
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest / "tests"


def _is_git(path: Path) -> bool:
    return (path / ".git").exists() or (path / "HEAD").is_file()


def _git_dir(path: Path) -> Path:
    return path / ".git" if (path / ".git").exists() else path


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, prepare the scratch folder and run pytest there."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, type=Path, help="scvi-tools clone or tree")
    parser.add_argument("--tag", default="1.4.2", help="git tag whose tests run (git sources)")
    parser.add_argument("--ensemble", default="single")
    parser.add_argument("--n-members", type=int, default=1)
    parser.add_argument("--reference", action="store_true", help="run scvi's own SCVI instead")
    parser.add_argument("--json", type=Path, help="write every test's outcome here")
    parser.add_argument("--keep", type=Path, help="scratch folder to use and keep")
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args(argv)

    scratch = args.keep or Path(tempfile.mkdtemp(prefix="scvi-tests-"))
    marker = scratch / MARKER
    if scratch.exists() and any(scratch.iterdir()) and not marker.exists():
        # the folder is refilled on every run: never write into one this script did not make
        raise SystemExit(
            f"--keep {scratch} is not empty and was not made by this script; pass a new or "
            "empty folder."
        )
    scratch.mkdir(parents=True, exist_ok=True)
    marker.write_text("scratch folder of benchmarks/scvi_tests.py; refilled on every run\n")
    tests = extract_tests(args.source.resolve(), args.tag, scratch)
    test_file = tests / "model" / "test_scvi.py"
    text = test_file.read_text()
    if IMPORT_LINE not in text:
        raise SystemExit(f"{test_file} has no line {IMPORT_LINE!r}: another scvi-tools layout.")
    if not args.reference:
        (scratch / "ensemblevi_scvi_shim.py").write_text(
            SHIM.format(ensemble=args.ensemble, n=args.n_members)
        )
        text = text.replace(IMPORT_LINE, "from ensemblevi_scvi_shim import SCVI\n")
        test_file.write_text(text)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(test_file.relative_to(scratch)),
        "-p",
        "no:cacheprovider",
        "-q",
        "-rfEs",
        "--tb=line",
        "-o",
        "addopts=",
        "-W",
        "ignore::DeprecationWarning",
        f"--junitxml={scratch / 'junit.xml'}",
        *args.pytest_args,
    ]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(scratch), os.environ.get("PYTHONPATH", "")])
    )
    rc = subprocess.run(cmd, cwd=scratch, env=env).returncode
    if args.json:
        outcomes = _junit_outcomes(scratch / "junit.xml")
        args.json.write_text(json.dumps(outcomes, indent=1, sort_keys=True))
    return rc


def _junit_outcomes(path: Path) -> dict[str, str]:
    import xml.etree.ElementTree as ET

    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = case.get("name")
        state = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                state = child.tag
        out[name] = state
    return out


if __name__ == "__main__":
    raise SystemExit(main())
