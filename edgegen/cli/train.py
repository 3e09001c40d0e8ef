"""`edgegen train`: placeholder being written now (owned by one helper)."""

import typer

train_app = typer.Typer(help="(in progress)", no_args_is_help=True)
