"""``python -m jobqueue`` runs the ``jobqueue`` command."""

from .cli import main

main()
