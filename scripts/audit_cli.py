"""Audit the installed ``edgegen`` CLI against bad input and faults (issue 13's eight classes).

Runs each case as a subprocess of ``.venv/bin/edgegen`` on tiny inputs built here in a temporary
folder (the embedded default pipeline, its exported artifacts, one results file), and records
for each: the exit code, whether stderr was exactly one line, whether a traceback appeared,
whether anything that existed before was changed, and whether a half-written leftover
(``.partial-*``, ``.replaced-*``, ``.lock``, ``*.tmp``) stayed behind. A case is clean when all of
that is as promised: a refusal exits 2 with one ``error:`` line and writes nothing; a success
exits 0 and passes its own check. Prints a table with totals per class and a JSON summary.

    make .venv/.installed && .venv/bin/python scripts/audit_cli.py [--json-out audit.json] [--keep]

Not part of the test suite (about 3 to 5 minutes on two cores). Linux only: the full-disk faults
cap the child's file size (RLIMIT_FSIZE), which Python turns into EFBIG write errors.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EDGEGEN = REPO / ".venv" / "bin" / "edgegen"
PYTHON = REPO / ".venv" / "bin" / "python"

CLASSES = {
    1: "data lost",
    2: "half-written leftovers",
    3: "paths outside the artifact",
    4: "device strings as ssh options",
    5: "wrong exit code or vague message",
    6: "unbounded or unchecked values",
    7: "accepted when it should refuse",
    8: "silently wrong with exit 0",
}
LEFTOVER_MARKS = (".partial-", ".replaced-", ".lock")
CASE_TIMEOUT_S = 180


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


@dataclass
class Case:
    klass: int
    name: str
    argv: list[str] = field(default_factory=list)  # after `edgegen`; {p} {arts} {te} {results} {scratch} {fixtures} are filled in
    expect: int = 2
    says: str = ""  # a refusal's line must contain this
    setup: Callable[[Path, Path], None] | None = None  # (scratch, fixtures): what exists before the case
    check: Callable[[Path, Path, Run], str | None] | None = None  # a problem, or None
    runner: Callable[[Path, Path], Run] | None = None  # instead of one `edgegen argv` run
    file_size_limit: int | None = None  # bytes: a full disk for every file the command writes
    may_change: tuple[str, ...] = ()  # paths in the case's folder that the promised outcome changes


# -- helpers ---------------------------------------------------------------------------------------


def edgegen(argv: list[str], cwd: Path, file_size_limit: int | None = None, timeout: int = CASE_TIMEOUT_S) -> Run:
    def limit() -> None:
        if file_size_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("EDGEGEN_DEBUG", None)
    try:
        done = subprocess.run([str(EDGEGEN), *argv], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, preexec_fn=limit)
    except subprocess.TimeoutExpired as expired:
        return Run(-1, str(expired.stdout or ""), f"timed out after {timeout} s")
    return Run(done.returncode, done.stdout, done.stderr)


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with what it is: a file's hash, a link's target, 'dir'."""
    found = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[relative] = "link:" + os.readlink(path)
        elif path.is_dir():
            found[relative] = "dir"
        else:
            found[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _edit_manifest(folder: Path, edit: Callable[[dict], None]) -> None:
    data = _manifest(folder)
    edit(data)
    (folder / "manifest.json").write_text(json.dumps(data))


def _entry(path: Path, name: str) -> dict:
    data = path.read_bytes()
    return {"path": name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def copy_artifact(fixtures: Path, scratch: Path, name: str = "text_encoder-onnx") -> Path:
    destination = scratch / "artifact"
    shutil.copytree(fixtures / "arts" / name, destination)
    return destination


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# -- setups --------------------------------------------------------------------------------------


def an_existing_file(scratch: Path, fixtures: Path) -> None:
    (scratch / "existing.txt").write_text("keep me\n")


def an_existing_folder(scratch: Path, fixtures: Path) -> None:
    (scratch / "folder").mkdir()
    (scratch / "folder" / "inside.txt").write_text("keep me too\n")


def prompts(scratch: Path, fixtures: Path) -> None:
    (scratch / "prompts.txt").write_text("a red circle at the top left\n")


def both(*setups):
    def run(scratch: Path, fixtures: Path) -> None:
        for setup in setups:
            setup(scratch, fixtures)

    return run


def mutated_artifact(edit: Callable[[Path, dict], None]):
    def setup(scratch: Path, fixtures: Path) -> None:
        folder = copy_artifact(fixtures, scratch)
        _edit_manifest(folder, lambda data: edit(folder, data))

    return setup


def _symlinked_reference(scratch: Path, fixtures: Path) -> None:
    folder = copy_artifact(fixtures, scratch)
    outside = scratch / "reference-elsewhere.safetensors"
    shutil.move(folder / "reference.safetensors", outside)
    (folder / "reference.safetensors").symlink_to(outside)


def _truncated_model(scratch: Path, fixtures: Path) -> None:
    folder = copy_artifact(fixtures, scratch)
    model = folder / "model.onnx"
    model.write_bytes(model.read_bytes()[:1000])


def _truncated_model_no_files(scratch: Path, fixtures: Path) -> None:
    _truncated_model(scratch, fixtures)
    _edit_manifest(scratch / "artifact", lambda data: data.update(files=[]))


def _outside_listed(folder: Path, data: dict) -> None:
    (folder.parent / "x").write_bytes(b"outside")
    data["files"].append(_entry(folder.parent / "x", "../x"))


def _reference_outside(folder: Path, data: dict) -> None:
    outside = folder.parent / "reference.safetensors"
    shutil.copy(folder / "reference.safetensors", outside)
    data["reference_file"] = "../reference.safetensors"


def results_with(images_dir: str | None = None, link_outside: bool = False, line: str | None = None):
    def setup(scratch: Path, fixtures: Path) -> None:
        run = scratch / "run"
        shutil.copytree(fixtures / "results", run)
        results = run / "results.jsonl"
        if line is not None:
            results.write_text(line)
            return
        if images_dir is not None:
            rows = [json.loads(text) for text in results.read_text().splitlines()]
            rows[0]["images_dir"] = images_dir
            results.write_text("".join(json.dumps(row) + "\n" for row in rows))
        if link_outside:
            rows = [json.loads(text) for text in results.read_text().splitlines()]
            image = run / rows[0]["images_dir"] / "0.png"
            secret = scratch / "secret.png"
            shutil.move(image, secret)
            image.symlink_to(secret)

    return setup


def existing_artifact(scratch: Path, fixtures: Path) -> None:
    shutil.copytree(fixtures / "arts" / "text_encoder-onnx", scratch / "out" / "text_encoder-onnx")


def artifact_path_is_a_file(scratch: Path, fixtures: Path) -> None:
    (scratch / "out").mkdir()
    (scratch / "out" / "text_encoder-onnx").write_text("a file where the artifact goes\n")


def symlink_to_outside(scratch: Path, fixtures: Path) -> None:
    elsewhere = scratch / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "marker").write_text("outside -o: keep me\n")
    (scratch / "out").mkdir()
    (scratch / "out" / "text_encoder-onnx").symlink_to(elsewhere, target_is_directory=True)


def stale_leftovers(scratch: Path, fixtures: Path) -> None:
    out = scratch / "out"
    out.mkdir()
    partial = out / f".text_encoder-onnx.partial-{dead_pid()}-abcd1234"
    partial.mkdir()
    (partial / "model.onnx").write_bytes(b"half")
    (out / ".text_encoder-onnx.lock").write_text("")  # a killed writer's lock file (no lock held)


def retired_artifact(scratch: Path, fixtures: Path) -> None:
    out = scratch / "out"
    out.mkdir()
    shutil.copytree(fixtures / "arts" / "text_encoder-onnx", out / f".text_encoder-onnx.replaced-{dead_pid()}-abcd")


def pipeline_copy(edit: Callable[[Path], None]):
    def setup(scratch: Path, fixtures: Path) -> None:
        copy = scratch / "pipeline"
        shutil.copytree(fixtures / "p", copy)
        edit(copy)

    return setup


def _model_index(edit: Callable[[dict], None]):
    def run(folder: Path) -> None:
        data = json.loads((folder / "model_index.json").read_text())
        edit(data)
        (folder / "model_index.json").write_text(json.dumps(data))

    return run


def _pickle_weights(folder: Path) -> None:
    import torch
    from safetensors.torch import load_file

    weights = folder / "text_encoder" / "model.safetensors"
    torch.save(load_file(str(weights)), folder / "text_encoder" / "pytorch_model.bin")
    weights.unlink()


def huge_image(scratch: Path, fixtures: Path) -> None:
    from PIL import Image

    images = scratch / "images"
    images.mkdir()
    for index in range(2):
        Image.new("RGB", (48, 48), (200, 30, 30)).save(images / f"{index}.png")
        (images / f"{index}.txt").write_text("a red square\n")
    Image.new("1", (20000, 20000)).save(images / "bomb.png")  # 1-bit: small on disk, 400 MP decoded
    (images / "bomb.txt").write_text("a bomb\n")


def long_prompt(scratch: Path, fixtures: Path) -> None:
    (scratch / "prompts.txt").write_text("a red circle\n" + "x" * (1 << 20) + "\n")


# -- runners for the cases one command line cannot express ---------------------------------------


def two_exports_at_once(scratch: Path, fixtures: Path) -> Run:
    argv = [str(EDGEGEN), "export", str(fixtures / "p"), "-o", str(scratch / "out"), "--component", "text_encoder"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    children = [subprocess.Popen(argv, cwd=scratch, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outcomes = []
    for child in children:
        out, err = child.communicate(timeout=CASE_TIMEOUT_S)
        outcomes.append((child.returncode, out, err))
    outcomes.sort()
    (winner, _, _), (loser, _, message) = outcomes
    if (winner, loser) != (0, 2):
        return Run(loser if winner == 0 else winner, "", f"exit codes {winner} and {loser}, wanted 0 and 2: {outcomes}")
    return Run(2, "", message)  # judged as the loser's refusal; the check looks at the winner's artifact


def killed_export_then_rerun(sig: int):
    def run(scratch: Path, fixtures: Path) -> Run:
        argv = [str(EDGEGEN), "export", str(fixtures / "p"), "-o", str(scratch / "out"), "--component", "text_encoder"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        child = subprocess.Popen(argv, cwd=scratch, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list((scratch / "out").glob(".text_encoder-onnx.partial-*")):
            time.sleep(0.05)
        child.send_signal(sig)
        child.wait(timeout=60)
        return edgegen(argv[1:], scratch)  # the next export removes what the killed one left

    return run


# -- checks of successful cases ------------------------------------------------------------------


def artifact_loads(relative: str):
    def check(scratch: Path, fixtures: Path, run: Run) -> str | None:
        done = edgegen(["inspect", str(scratch / relative)], scratch)
        return None if done.code == 0 else f"edgegen inspect {relative}: exit {done.code}: {done.stderr.strip()}"

    return check


def marker_absent(scratch: Path, fixtures: Path, run: Run) -> str | None:
    return "the ProxyCommand ran" if (scratch / "pwned").exists() else None


def link_target_kept(scratch: Path, fixtures: Path, run: Run) -> str | None:
    if (scratch / "elsewhere" / "marker").read_text() != "outside -o: keep me\n":
        return "the symlink's target outside -o was changed"
    if (scratch / "out" / "text_encoder-onnx").is_symlink():
        return "the link is still there"
    return artifact_loads("out/text_encoder-onnx")(scratch, fixtures, run)


def retired_put_back(scratch: Path, fixtures: Path, run: Run) -> str | None:
    folder = scratch / "out" / "text_encoder-onnx"
    if not folder.is_dir() or _manifest(folder) != _manifest(fixtures / "arts" / "text_encoder-onnx"):
        return "the retired artifact was not put back"
    return None


def dropped_with_reason(scratch: Path, fixtures: Path, run: Run) -> str | None:
    return None if "too large" in run.stdout else "the huge image was not dropped with a reason"


def every_component_exported(scratch: Path, fixtures: Path, run: Run) -> str | None:
    from edgegen.families import family_of

    wanted = sorted(f"{spec.name}-onnx" for spec in family_of(fixtures / "p").components)
    got = sorted(p.name for p in (fixtures / "arts").iterdir())
    return None if got == wanted else f"exported {got}, the family has {wanted}"


def inputs_as_declared(component: str):
    def check(scratch: Path, fixtures: Path, run: Run) -> str | None:
        data = json.loads(run.stdout)
        converted = sorted(spec["name"] for spec in data["inputs"])
        eager = sorted(spec["name"] for spec in data["eager_inputs"])
        if converted != eager:
            return f"{component}: converted inputs {converted} differ from the eager module's {eager}"
        if data["parity"]["measured"] and not data["parity"]["psnr_db"] >= data["parity"]["min_psnr_db"]:
            return f"{component}: parity below its gate but exit 0"
        return None

    return check


def close_to_teacher(scratch: Path, fixtures: Path, run: Run) -> str | None:
    data = json.loads(run.stdout)
    return None if data["quality"]["psnr_db"] > 60 else f"PSNR {data['quality']['psnr_db']} vs the teacher, exit 0"


def timed(scratch: Path, fixtures: Path, run: Run) -> str | None:
    data = json.loads(run.stdout)
    return None if data["latency"]["p50_ms"] > 0 and data["latency"]["timed_runs"] == 2 else "profile reported no timing"


# -- the cases -----------------------------------------------------------------------------------

P = "{fixtures}/p"
TE = "{fixtures}/arts/text_encoder-onnx"
RESULTS = "{fixtures}/results/results.jsonl"
COMPARE_TO = ["compare", "--prompts", "prompts.txt", "--teacher", P, "--student", P, "--runs", "0", "--steps", "1", "-o"]
COMPARE = [*COMPARE_TO, "r.jsonl"]
SWEEP = ["sweep", "--teacher", P, "--student", P, "--prompts", "prompts.txt", "-o", "s.jsonl"]

CASES: list[Case] = [
    # 1. data lost
    Case(1, "export into an existing artifact without --force", ["export", P, "-o", "out", "--component", "text_encoder"], says="already exists", setup=existing_artifact),
    Case(1, "two exports into one folder at once", runner=two_exports_at_once, says="out/text_encoder-onnx", check=artifact_loads("out/text_encoder-onnx"), may_change=("out",)),
    Case(1, "export --force onto a symlink to a folder outside -o", ["export", P, "-o", "out", "--component", "text_encoder", "--force"], expect=0, setup=symlink_to_outside, check=link_target_kept, may_change=("out/text_encoder-onnx",)),
    Case(1, "compare -o onto a file that is not results", [*COMPARE_TO, "existing.txt"], says="is not JSON", setup=both(prompts, an_existing_file)),
    Case(1, "compare -o onto results whose line only carries a case_id", [*COMPARE_TO, "run/results.jsonl"], says="schema_version", setup=both(prompts, results_with(line='{"case_id": "teacher/eager/1-steps"}\n'))),
    Case(1, "student init onto an existing folder", ["student", "init", "--teacher", P, "-o", "folder"], says="already exists", setup=an_existing_folder),
    Case(1, "data shapes onto an existing folder", ["data", "shapes", "-o", "folder", "--count", "2"], says="already exists", setup=an_existing_folder),
    Case(1, "default-pipeline onto an existing folder", ["default-pipeline", "folder"], says="already exists", setup=an_existing_folder),
    Case(1, "default-pipeline --student onto an existing folder", ["default-pipeline", "new", "--student", "folder"], says="already exists", setup=an_existing_folder),
    # 2. half-written leftovers
    Case(2, "kill -9 during an export, then export again", runner=killed_export_then_rerun(signal.SIGKILL), expect=0, check=artifact_loads("out/text_encoder-onnx")),
    Case(2, "SIGTERM during an export, then export again", runner=killed_export_then_rerun(signal.SIGTERM), expect=0, check=artifact_loads("out/text_encoder-onnx")),
    Case(2, "a dead writer's .partial folder and lock file beside the destination", ["export", P, "-o", "out", "--component", "text_encoder"], expect=0, setup=stale_leftovers, check=artifact_loads("out/text_encoder-onnx")),
    Case(2, "an artifact retired by a killed --force export is put back", ["export", P, "-o", "out", "--component", "text_encoder"], says="already exists", setup=retired_artifact, check=retired_put_back, may_change=("out",)),
    Case(2, "report -o onto a directory", ["report", RESULTS, "-o", "folder"], says="is a directory", setup=an_existing_folder),
    Case(2, "export onto a full disk (files capped at 100 kB)", ["export", P, "-o", "out", "--component", "text_encoder"], says="model.onnx", file_size_limit=100_000),
    Case(2, "default-pipeline onto a full disk", ["default-pipeline", "new"], says="cannot write", file_size_limit=20_000),
    Case(2, "data shapes onto a full disk", ["data", "shapes", "-o", "shapes", "--count", "4", "--layout", "shards"], says="cannot write", file_size_limit=2_000),
    # 3. paths outside the artifact
    Case(3, "inspect: model_file is an absolute path", ["inspect", "artifact"], says="model_file", setup=mutated_artifact(lambda f, d: d.update(model_file=str((f / "model.onnx").resolve())))),
    Case(3, "inspect: a files entry is ../x", ["inspect", "artifact"], says="normalised relative path", setup=mutated_artifact(_outside_listed)),
    Case(3, "inspect: files is empty", ["inspect", "artifact"], says="files is empty", setup=mutated_artifact(lambda f, d: d.update(files=[]))),
    Case(3, "inspect: reference_file is ../reference.safetensors", ["inspect", "artifact"], says="reference_file", setup=mutated_artifact(_reference_outside)),
    Case(3, "inspect: reference.safetensors links outside", ["inspect", "artifact"], says="leads outside", setup=_symlinked_reference),
    Case(3, "inspect: a truncated model", ["inspect", "artifact"], says="corrupt", setup=_truncated_model),
    Case(3, "inspect: a truncated model with files emptied", ["inspect", "artifact"], says="files is empty", setup=_truncated_model_no_files),
    Case(3, "profile: model_file is an absolute path", ["profile", "artifact", "--runs", "1"], says="model_file", setup=mutated_artifact(lambda f, d: d.update(model_file=str((f / "model.onnx").resolve())))),
    Case(3, "report: images_dir is /etc", ["report", "run/results.jsonl", "-o", "r.html"], says="outside", setup=results_with("/etc")),
    Case(3, "report: images_dir climbs out with ../..", ["report", "run/results.jsonl", "-o", "r.html"], says="outside", setup=results_with("../../x")),
    Case(3, "report: an image links outside", ["report", "run/results.jsonl", "-o", "r.html"], says="links outside", setup=results_with(link_outside=True)),
    # 4. device strings as ssh options
    Case(4, "ssh://-oProxyCommand=...", ["profile", TE, "--device", "ssh://-oProxyCommand=touch {scratch}/pwned"], check=marker_absent),
    Case(4, "ssh://user@-oProxyCommand=...", ["profile", TE, "--device", "ssh://user@-oProxyCommand=touch {scratch}/pwned"], check=marker_absent),
    Case(4, "-oProxyCommand=... without a scheme", ["profile", TE, "--device", "-oProxyCommand=touch {scratch}/pwned"], check=marker_absent),
    Case(4, "a shell metacharacter in the host", ["profile", TE, "--device", "ssh://host;touch {scratch}/pwned"], check=marker_absent),
    Case(4, "a port out of range", ["profile", TE, "--device", "ssh://user@host:99999"]),
    Case(4, "a port that is not a number", ["profile", TE, "--device", "ssh://user@host:ab"]),
    Case(4, "an empty host", ["profile", TE, "--device", "ssh://"]),
    Case(4, "a space in the host", ["profile", TE, "--device", "ssh://user@host -p 1"]),
    # 5. wrong exit code or vague message
    Case(5, "export: missing argument", ["export"], says="missing argument"),
    Case(5, "export: unknown option", ["export", P, "-o", "out", "--bogus"], says="no such option: --bogus"),
    Case(5, "export: --batch-size abc", ["export", P, "-o", "out", "--batch-size", "abc"], says="--batch-size"),
    Case(5, "an unknown command", ["bogus"], says="no such command"),
    Case(5, "student: an unknown subcommand", ["student", "bogus"], says="no such command"),
    Case(5, "profile: --threads abc", ["profile", TE, "--threads", "abc"], says="--threads"),
    Case(5, "profile: an option without its value", ["profile", TE, "--runs"], says="requires an argument"),
    Case(5, "inspect: an extra argument", ["inspect", TE, "extra"], says="unexpected extra argument"),
    Case(5, "data shapes: a layout that does not exist", ["data", "shapes", "-o", "shapes", "--layout", "zip"], says="--layout"),
    Case(5, "export -o an existing file", ["export", P, "-o", "existing.txt", "--component", "text_encoder"], says="is a file", setup=an_existing_file),
    Case(5, "export --force where the artifact is a file", ["export", P, "-o", "out", "--component", "text_encoder", "--force"], says="is a file", setup=artifact_path_is_a_file),
    Case(5, "student init -o an existing file, --force", ["student", "init", "--teacher", P, "-o", "existing.txt", "--force"], says="is a file", setup=an_existing_file),
    Case(5, "train output= an existing file", ["train", "finetune", f"teacher={P}", "output=existing.txt", "steps=1"], says="is a file", setup=an_existing_file),
    Case(5, "data shapes -o an existing file", ["data", "shapes", "-o", "existing.txt", "--count", "2", "--force"], says="is a file", setup=an_existing_file),
    Case(5, "data clean --report onto a folder", ["data", "clean", "builtin:shapes?count=4", "--report", "folder"], says="is a directory", setup=an_existing_folder),
    Case(5, "compare -o onto a folder", [*COMPARE_TO, "folder"], says="is a directory", setup=both(prompts, an_existing_folder)),
    Case(5, "compare -o inside a file", [*COMPARE_TO, "existing.txt/r.jsonl"], says="is a file", setup=both(prompts, an_existing_file)),
    Case(5, "sweep -o onto a folder", [*SWEEP[:-2], "-o", "folder"], says="is a directory", setup=both(prompts, an_existing_folder)),
    Case(5, "probe train -o an existing file", ["probe", "train", "-o", "existing.txt", "--steps", "1"], says="is a file", setup=an_existing_file),
    Case(5, "probe export-features -o onto a folder", ["probe", "export-features", "probe", "-o", "folder"], says="is a directory", setup=an_existing_folder),
    Case(5, "demo -o an existing file", ["demo", "-o", "existing.txt", "--runs", "1"], says="is a file", setup=an_existing_file),
    Case(5, "report -o into a folder that cannot be created", ["report", RESULTS, "-o", "/proc/edgegen/r.html"], says="/proc/edgegen"),
    Case(5, "export -o into a folder that cannot be created", ["export", P, "-o", "/proc/edgegen", "--component", "text_encoder"], says="/proc/edgegen"),
    Case(5, "data clean --report onto a full disk", ["data", "clean", "builtin:shapes?count=64", "--report", "report.json"], says="report.json", file_size_limit=100),
    Case(5, "inspect a folder that does not exist", ["inspect", "absent"], says="not found"),
    Case(5, "corrupt model.onnx in profile", ["profile", "artifact", "--runs", "1"], says="corrupt", setup=_truncated_model),
    # 6. unbounded or unchecked values
    Case(6, "export --batch-size 100000", ["export", P, "-o", "out", "--batch-size", "100000"], says="--batch-size"),
    Case(6, "export --min-psnr nan", ["export", P, "-o", "out", "--min-psnr", "nan"], says="--min-psnr"),
    Case(6, "profile --threads 0", ["profile", TE, "--threads", "0"], says="--threads"),
    Case(6, "profile --runs -1", ["profile", TE, "--runs", "-1"], says="--runs"),
    Case(6, "profile --warmup -1", ["profile", TE, "--warmup", "-1"], says="--warmup"),
    Case(6, "compare --guidance-scale nan", [*COMPARE, "--guidance-scale", "nan"], says="--guidance-scale", setup=prompts),
    Case(6, "compare --steps 0", [*COMPARE, "--steps", "0"], says="--steps", setup=prompts),
    Case(6, "sweep --runs 0", [*SWEEP, "--runs", "0"], says="--runs", setup=prompts),
    Case(6, "data shapes --count 0", ["data", "shapes", "-o", "shapes", "--count", "0"], says="--count"),
    Case(6, "train steps=0", ["train", "finetune", f"teacher={P}", "output=t", "steps=0"], says="steps"),
    Case(6, "a 1 MiB prompt line", COMPARE, says="2", setup=long_prompt),
    Case(6, "data clean: a 20000x20000 image is dropped with a reason", ["data", "clean", "images"], expect=0, setup=huge_image, check=dropped_with_reason),
    # 7. accepted when it should refuse
    Case(7, "model_index names a pipeline class that does not exist", ["export", "pipeline", "-o", "out"], says="NoSuchPipeline", setup=pipeline_copy(_model_index(lambda d: d.update(_class_name="NoSuchPipeline")))),
    Case(7, "model_index names a scheduler that does not exist", ["export", "pipeline", "-o", "out"], says="NoSuchScheduler", setup=pipeline_copy(_model_index(lambda d: d.update(scheduler=["diffusers", "NoSuchScheduler"])))),
    Case(7, "pickle (.bin) weights", ["export", "pipeline", "-o", "out", "--component", "text_encoder"], says="safetensors", setup=pipeline_copy(_pickle_weights)),
    Case(7, "export --target that does not exist", ["export", P, "-o", "out", "--target", "bogus"], says="bogus"),
    Case(7, "export --component that does not exist", ["export", P, "-o", "out", "--component", "bogus"], says="bogus"),
    Case(7, "export the same component twice", ["export", P, "-o", "out", "--component", "text_encoder", "--component", "text_encoder"], says="more than once"),
    Case(7, "export --quantize int4", ["export", P, "-o", "out", "--quantize", "int4"], says="int4"),
    Case(7, "export --backend on a target without backends", ["export", P, "-o", "out", "--target", "onnx", "--backend", "xnnpack"], says="backend"),
    Case(7, "train a recipe that does not exist", ["train", "bogus"], says="bogus"),
    Case(7, "train with an unknown config key", ["train", "finetune", f"teacher={P}", "output=t", "bogus_key=1"], says="bogus_key"),
    Case(7, "compare --prompts without --student", ["compare", "--prompts", "prompts.txt", "--teacher", P], says="--student", setup=prompts),
    # 8. silently wrong with exit 0
    Case(8, "export of the whole pipeline exported every component", ["families"], expect=0, check=every_component_exported),
    Case(8, "text_encoder: converted inputs are the eager module's", ["inspect", "--json", TE], expect=0, check=inputs_as_declared("text_encoder")),
    Case(8, "denoiser: converted inputs are the eager module's", ["inspect", "--json", "{fixtures}/arts/denoiser-onnx"], expect=0, check=inputs_as_declared("denoiser")),
    Case(8, "vae_decoder: converted inputs are the eager module's", ["inspect", "--json", "{fixtures}/arts/vae_decoder-onnx"], expect=0, check=inputs_as_declared("vae_decoder")),
    Case(8, "compare an artifact with its teacher", ["compare", TE, "--teacher", P, "--json"], expect=0, check=close_to_teacher),
    Case(8, "profile an artifact", ["profile", TE, "--runs", "2", "--warmup", "1", "--json"], expect=0, check=timed),
]


# -- running and judging -------------------------------------------------------------------------


def build_fixtures(fixtures: Path) -> None:
    fixtures.mkdir(parents=True)
    steps = [
        ["default-pipeline", "p"],
        ["export", "p", "-o", "arts"],
        ["compare", "--prompts", "prompts.txt", "--teacher", "p", "--student", "p", "-o", "results/results.jsonl", "--runs", "0", "--steps", "1"],
    ]
    (fixtures / "prompts.txt").write_text("a red circle at the top left\n")
    for argv in steps:
        done = edgegen(argv, fixtures, timeout=600)
        if done.code != 0:
            raise SystemExit(f"fixture step `edgegen {' '.join(argv)}` failed ({done.code}): {done.stderr.strip()}")


def leftovers(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if any(mark in p.name for mark in LEFTOVER_MARKS) or p.name.endswith(".tmp"))


def run_case(number: int, case: Case, root: Path) -> dict:
    scratch = root / "cases" / f"{number:03d}"
    scratch.mkdir(parents=True)
    fixtures = root / "fixtures"
    if case.setup:
        case.setup(scratch, fixtures)
    before = {"fixtures/" + k: v for k, v in snapshot(fixtures).items()} | {"case/" + k: v for k, v in snapshot(scratch).items()}
    started = time.monotonic()
    if case.runner:
        run = case.runner(scratch, fixtures)
    else:
        argv = [a.format(fixtures=fixtures, scratch=scratch) for a in case.argv]
        run = edgegen(argv, scratch, case.file_size_limit)
    seconds = time.monotonic() - started
    after = {"fixtures/" + k: v for k, v in snapshot(fixtures).items()} | {"case/" + k: v for k, v in snapshot(scratch).items()}
    removed_leftovers = {p for p in before if p not in after and any(mark in p for mark in LEFTOVER_MARKS)}
    changed = [p for p, kind in before.items() if after.get(p) != kind and p not in removed_leftovers]
    # A refusal writes nothing; a success writes only in its own folder.
    changed += [p for p in after if p not in before and (case.expect != 0 or not p.startswith("case/"))]
    allowed = tuple(f"case/{prefix}" for prefix in case.may_change)
    changed = sorted(p for p in changed if not (allowed and p.startswith(allowed)))
    lines = run.stderr.strip().splitlines()
    problem = None
    if case.check:
        try:
            problem = case.check(scratch, fixtures, run)
        except Exception as error:  # a check that cannot read the output is a finding too
            problem = f"check failed: {type(error).__name__}: {error}"
    one_line = len(lines) == 1 and lines[0].startswith("error:") if case.expect != 0 else True
    traceback = "Traceback (most recent call last)" in run.stderr + run.stdout
    left = leftovers(root)
    says = case.says.format(fixtures=fixtures, scratch=scratch)
    message_ok = case.expect == 0 or says in run.stderr
    clean = run.code == case.expect and one_line and not traceback and not changed and not left and problem is None and message_ok
    for path in left:  # judged once; do not let one case's leftovers count against the next
        _remove(root / path)
    return {
        "number": number,
        "class": case.klass,
        "name": case.name,
        "argv": case.argv,
        "expected_exit": case.expect,
        "exit": run.code,
        "stderr_one_line": one_line if case.expect != 0 else len(lines) <= 1,
        "stderr": run.stderr.strip()[-600:],
        "traceback": traceback,
        "changed": changed[:10],
        "leftovers": left,
        "message_ok": message_ok,
        "problem": problem,
        "seconds": round(seconds, 1),
        "clean": clean,
    }


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def totals(results: list[dict]) -> dict:
    table = {}
    for klass, title in CLASSES.items():
        rows = [r for r in results if r["class"] == klass]
        table[klass] = {
            "class": title,
            "cases": len(rows),
            "clean": sum(r["clean"] for r in rows),
            "exit_as_expected": sum(r["exit"] == r["expected_exit"] for r in rows),
            "one_line": sum(r["stderr_one_line"] for r in rows),
            "traceback": sum(r["traceback"] for r in rows),
            "changed": sum(bool(r["changed"]) for r in rows),
            "leftovers": sum(bool(r["leftovers"]) for r in rows),
        }
    return table


def print_table(table: dict, results: list[dict]) -> None:
    columns = ("cases", "clean", "exit_as_expected", "one_line", "traceback", "changed", "leftovers")
    header = f"{'class':<38}" + "".join(f"{c.replace('_as_expected', ' ok'):>11}" for c in columns)
    print(header)
    print("-" * len(header))
    for klass, row in table.items():
        title = f"{klass}. {row['class']}"
        print(f"{title:<38}" + "".join(f"{row[c]:>11}" for c in columns))
    print("-" * len(header))
    print(f"{'total':<38}" + "".join(f"{sum(row[c] for row in table.values()):>11}" for c in columns))
    for result in results:
        if not result["clean"]:
            why = result["problem"] or (result["changed"] and f"changed {result['changed']}") or (result["leftovers"] and f"left {result['leftovers']}") or result["stderr"][-300:]
            print(f"NOT CLEAN #{result['number']} [{result['class']}] {result['name']}: exit {result['exit']} (wanted {result['expected_exit']}): {why}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json-out", type=Path, help="Also write the JSON summary here.")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary folder (its path is printed).")
    parser.add_argument("-k", dest="only", default="", help="Run only the cases whose name contains this.")
    arguments = parser.parse_args()
    if not EDGEGEN.exists():
        raise SystemExit(f"{EDGEGEN} not found: run `make .venv/.installed` first")
    root = Path(tempfile.mkdtemp(prefix="edgegen-audit-"))
    started = time.monotonic()
    try:
        build_fixtures(root / "fixtures")
        selected = [case for case in CASES if arguments.only in case.name]
        results = []
        for number, case in enumerate(selected, 1):
            result = run_case(number, case, root)
            results.append(result)
            print(f"{'ok ' if result['clean'] else 'BAD'} #{number:<3} [{case.klass}] {case.name} (exit {result['exit']}, {result['seconds']} s)", file=sys.stderr, flush=True)
        table = totals(results)
        summary = {"seconds": round(time.monotonic() - started), "cases": len(results), "clean": sum(r["clean"] for r in results), "totals": table, "results": results}
        print(json.dumps({k: v for k, v in summary.items() if k != "results"}, indent=2))
        if arguments.json_out:
            arguments.json_out.write_text(json.dumps(summary, indent=2) + "\n")
        print()
        print_table(table, results)
        print(f"\n{summary['clean']}/{len(results)} clean in {summary['seconds']} s")
    finally:
        if arguments.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
