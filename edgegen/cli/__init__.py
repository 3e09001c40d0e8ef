"""The ``edgegen`` command line: one module per command, registered here.

Every EdgegenError, usage error (missing argument, unknown option or command, bad value) and
I/O error (a read-only or full disk) becomes ``error: <one line>`` on stderr and exit code 2; an
unexpected exception is also one line (exit 1) unless EDGEGEN_DEBUG=1 asks for the traceback.
"""

from __future__ import annotations

import os
import sys

# tqdm reads TQDM_DISABLE once, when it is first imported (by diffusers, coremltools, ...), so
# converters' progress bars can only be switched off before any of them loads. litert-torch
# prints its progress to stdout, which would corrupt --json output.
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")

import typer  # noqa: E402
from typer.core import TyperGroup  # noqa: E402

# typer 0.29 (pinned) vendors click; its exceptions are the usage errors.
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError  # noqa: E402

from edgegen.errors import EdgegenError, describe_os_error, first_line  # noqa: E402


def usage_error_line(error: ClickException, command_path: str) -> str:
    """A usage error in one line: the command, click's reason and where the help is."""
    reason = " ".join(error.format_message().split()).rstrip(".")
    reason = reason[:1].lower() + reason[1:]
    context = getattr(error, "ctx", None)
    if context is not None:
        command_path = context.command_path
    return f"error: {command_path}: {reason} (see {command_path} --help)"


class _OneLineErrors(TyperGroup):
    def command_path_of(self, args: list[str], prog_name: str) -> str:
        """The command ``args`` name, for a parse error that carries no context (an option missing its value)."""
        path, command = [prog_name], self
        for word in args:
            commands = getattr(command, "commands", None)
            if commands is None:
                break
            if word in commands:
                path.append(word)
                command = commands[word]
            elif not word.startswith("-"):
                break
        return " ".join(path)

    def main(self, args=None, prog_name=None, *more, standalone_mode: bool = True, **kwargs):
        """Typer's standalone mode, with every usage error as one line instead of a boxed page."""
        if not standalone_mode:
            return super().main(args, prog_name, *more, standalone_mode=False, **kwargs)
        try:
            code = super().main(args, prog_name, *more, standalone_mode=False, **kwargs)
        except NoArgsIsHelpError as error:
            sys.exit(error.exit_code)  # the help page is already printed
        except UsageError as error:
            words = list(sys.argv[1:] if args is None else args)
            typer.echo(usage_error_line(error, self.command_path_of(words, prog_name or self.name or "edgegen")), err=True)
            sys.exit(2)
        except ClickException as error:
            typer.echo(f"error: {' '.join(error.format_message().split())}", err=True)
            sys.exit(error.exit_code)
        except typer.Abort:
            typer.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgegenError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from None
        except (typer.Exit, typer.Abort, KeyboardInterrupt, SystemExit, ClickException):
            raise
        except OSError as error:
            # A read-only or full disk is the environment, not a bug: say which file, exit 2.
            if os.environ.get("EDGEGEN_DEBUG"):
                raise
            typer.echo(f"error: {describe_os_error(error)}", err=True)
            raise typer.Exit(2) from None
        except Exception as error:
            if os.environ.get("EDGEGEN_DEBUG"):
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
    from edgegen.cli import bundle, compare, data, default_pipeline, demo, export, families, inspect, probe, profile, report, student, sweep, targets, train

    app.command("export")(export.export_command)
    app.command("profile")(profile.profile_command)
    app.command("bundle")(bundle.bundle_command)
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
