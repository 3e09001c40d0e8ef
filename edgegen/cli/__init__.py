"""The ``edgegen`` command line: one module per command, registered here.

Every EdgegenError becomes ``error: <one line>`` on stderr and exit code 2; an unexpected
exception is also one line (exit 1) unless EDGEGEN_DEBUG=1 asks for the traceback.
"""

from __future__ import annotations

import os

# tqdm reads TQDM_DISABLE once, when it is first imported (by diffusers, coremltools, ...), so
# converters' progress bars can only be switched off before any of them loads. litert-torch
# prints its progress to stdout, which would corrupt --json output.
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")

import typer  # noqa: E402
from typer.core import TyperGroup  # noqa: E402

from edgegen.errors import EdgegenError, first_line  # noqa: E402


class _OneLineErrors(TyperGroup):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgegenError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from None
        except (typer.Exit, typer.Abort, KeyboardInterrupt, SystemExit):
            raise
        except Exception as error:
            # Usage errors (typer's vendored click's exceptions) keep typer's usage message.
            if isinstance(error, typer.TyperException) or os.environ.get("EDGEGEN_DEBUG"):
                raise
            typer.echo(f"error: unexpected {type(error).__name__}: {first_line(error)} (EDGEGEN_DEBUG=1 shows the traceback)", err=True)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_OneLineErrors,
    name="edgegen",
    help="Export diffusers pipelines to on-device runtimes, profile them, and compare them with the teacher.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    from edgegen.cli import compare, data, default_pipeline, demo, export, families, inspect, probe, profile, report, student, sweep, targets, train

    app.command("export")(export.export_command)
    app.command("profile")(profile.profile_command)
    app.command("compare")(compare.compare_command)
    app.command("inspect")(inspect.inspect_command)
    app.command("targets")(targets.targets_command)
    app.command("families")(families.families_command)
    app.command("default-pipeline")(default_pipeline.default_pipeline_command)
    app.command("demo")(demo.demo_command)
    app.command("sweep")(sweep.sweep_command)
    app.command("report")(report.report_command)
    app.add_typer(student.student_app, name="student")
    app.command("train")(train.train_command)
    app.add_typer(data.data_app, name="data")
    app.add_typer(probe.probe_app, name="probe")


_register()


def main() -> None:
    from edgegen.terminal import filter_native_noise

    # Before any command loads a toolchain: ExecuTorch's and LiteRT's native info logs write to
    # fd 2 directly and would bury the command's output (EDGEGEN_DEBUG=1 keeps them).
    filter_native_noise()
    app()
