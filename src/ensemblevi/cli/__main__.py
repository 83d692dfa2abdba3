"""``python -m ensemblevi.cli``: the ``ensemblevi`` command."""

from ensemblevi.cli import main

main()
