"""`edgegen data`: placeholder being written now (owned by one helper)."""

import typer

data_app = typer.Typer(help="(in progress)", no_args_is_help=True)
