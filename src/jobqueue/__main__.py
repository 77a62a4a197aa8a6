"""``python -m jobqueue`` runs the ``jobqueue`` command."""

from ._console import main

main()
