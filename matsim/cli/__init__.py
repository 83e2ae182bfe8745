"""Command-line interface (typer): ``matsim --help`` lists the verbs."""
