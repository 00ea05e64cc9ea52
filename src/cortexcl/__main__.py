"""``python -m cortexcl``: the command line, as the ``cortexcl`` command."""

from cortexcl.cli import main

main()
