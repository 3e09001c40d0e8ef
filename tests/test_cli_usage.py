"""Usage errors and output paths of the wrong kind (issue 13, class 5): one line, exit code 2.

A usage error (missing argument, unknown option or command, a value of the wrong type) is one
line naming the command and where its help is, not typer's boxed page; an output that is a file
where a folder is written, or a folder where a file is, is refused before any work and left as it was.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from edgegen.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line(text: str) -> bool:
    return len(text.strip().splitlines()) == 1


USAGE_ERRORS = [
    (["export"], "edgegen export: missing argument 'pipeline_dir'"),
    (["export", "p", "-o", "o", "--bogus"], "edgegen export: no such option: --bogus"),
    (["export", "p", "-o", "o", "--batch-size", "abc"], "edgegen export: invalid value for '--batch-size'"),
    (["export", "p"], "edgegen export: missing option '--output'"),
    (["profile", "a", "--threads", "abc"], "edgegen profile: invalid value for '--threads'"),
    (["profile", "a", "--runs"], "edgegen profile: option '--runs' requires an argument"),
    (["bogus"], "edgegen: no such command 'bogus'"),
    (["student", "bogus"], "edgegen student: no such command 'bogus'"),
    (["student", "init", "--teacher", "t", "-o", "o", "--preset", "huge"], "edgegen student init: invalid value for '--preset'"),
    (["data", "clean"], "edgegen data clean: missing argument 'source'"),
    (["data", "shapes", "-o", "o", "--layout", "zip"], "edgegen data shapes: invalid value for '--layout'"),
    (["compare", "a"], "edgegen compare: missing option '--teacher'"),
    (["sweep", "--teacher", "t"], "edgegen sweep: missing option '--student'"),
    (["report"], "edgegen report: missing argument 'results"),
    (["probe", "score", "p"], "edgegen probe score: missing argument 'images'"),
    (["demo", "--precision", "int4"], "edgegen demo: invalid value for '--precision'"),
    (["inspect", "a", "b"], "edgegen inspect: got unexpected extra argument(s) (b)"),
]


@pytest.mark.parametrize(("arguments", "message"), USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
def test_a_usage_error_is_one_line_and_exit_2(arguments, message):
    result = invoke(*arguments)
    assert result.exit_code == 2, result.output
    assert one_line(result.stderr), result.stderr
    assert result.stderr.startswith(f"error: {message}"), result.stderr
    assert "--help)" in result.stderr and "╭" not in result.stderr and result.stdout == ""


def test_the_installed_entry_point_prints_one_line_too():
    # main() is what the console script runs (pyproject's [project.scripts]); __main__ calls it.
    result = subprocess.run([sys.executable, "-m", "edgegen.cli", "export", "p", "-o", "o", "--threads", "2"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().endswith("no such option: --threads (see python -m edgegen.cli export --help)"), result.stderr
    assert one_line(result.stderr) and "Traceback" not in result.stderr


def test_help_still_works():
    result = invoke("export", "--help")
    assert result.exit_code == 0 and "--output" in result.stdout
    result = invoke("student")  # a group without a command shows its help
    assert "init" in result.stdout and result.stderr == ""


# -- an output of the wrong kind: (command line, what it writes) -----------------------------------
# {file}: an existing file; {folder}: an existing folder with something in it.
WRONG_KIND = [
    ("export {p} -o {file}", "file"),
    ("export {p} -o {file}/sub", "file"),
    ("export {p} -o {out} --component text_encoder --force", "artifact-file"),
    ("student init --teacher {p} -o {file}", "file"),
    ("student init --teacher {p} -o {file} --force", "file"),
    ("train finetune output={file} teacher={p} steps=1", "file"),
    ("data shapes -o {file} --count 2", "file"),
    ("data shapes -o {file} --count 2 --force", "file"),
    ("data clean builtin:shapes?count=4 --report {folder}", "folder"),
    ("compare --prompts {prompts} --teacher {p} --student {p} -o {folder} --runs 0", "folder"),
    ("compare --prompts {prompts} --teacher {p} --student {p} -o {file}/results.jsonl --runs 0", "file"),
    ("sweep --teacher {p} --student {p} --prompts {prompts} -o {folder}", "folder"),
    ("report {results} -o {folder}", "folder"),
    ("report {results} -o {tmp}/r.html --screenshot {folder}", "folder"),
    ("probe train -o {file} --steps 1", "file"),
    ("probe export-features {p} -o {folder}", "folder"),
    ("default-pipeline {file}", "file"),
    ("default-pipeline {file} --force", "file"),
    ("default-pipeline {tmp}/new --student {file}", "file"),
    ("demo -o {file} --runs 1", "file"),
]


@pytest.mark.parametrize(("command", "kind"), WRONG_KIND, ids=[c.split(" -")[0].split(" {")[0] + f" ({k})" for c, k in WRONG_KIND])
def test_an_output_of_the_wrong_kind_is_refused_untouched(tmp_path, pipeline_dir, command, kind):
    existing_file = tmp_path / "existing.txt"
    existing_file.write_text("keep me")
    folder = tmp_path / "existing-folder"
    folder.mkdir()
    (folder / "inside.txt").write_text("keep me too")
    out = tmp_path / "out"
    (out / "text_encoder-onnx").parent.mkdir()
    (out / "text_encoder-onnx").write_text("an artifact that is a file")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    arguments = command.format(p=pipeline_dir, file=existing_file, folder=folder, out=out, prompts=prompts, results=prompts, tmp=tmp_path).split()
    result = invoke(*arguments)
    assert result.exit_code == 2, result.output
    assert one_line(result.stderr) and "Traceback" not in result.output, result.stderr
    wanted = {"file": "is a file, not a folder", "artifact-file": "is a file, not a folder", "folder": "is a directory"}[kind]
    assert wanted in result.stderr, result.stderr
    assert existing_file.read_text() == "keep me" and (folder / "inside.txt").read_text() == "keep me too"
    assert (out / "text_encoder-onnx").read_text() == "an artifact that is a file"
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
