"""``python -m matsim`` runs the command-line interface."""

from matsim.cli.app import main

main()
