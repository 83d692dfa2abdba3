"""``python -m ensemblevi``: the ``ensemblevi`` command, as scanpy's ``python -m scanpy``."""

from ensemblevi.cli import main

main()
