"""Issue 13: nothing lost, nothing half-written, nothing outside its folder; the loaders fuzzed."""

from __future__ import annotations

import errno
import hashlib
import importlib
import json
import os
import random
import shutil
import subprocess
import sys
import threading

import pytest
from typer.testing import CliRunner

from edgegen.artifact import load_artifact, staged_folder
from edgegen.cli import app
from edgegen.errors import EdgegenError


@pytest.fixture
def artifact_copy(exported, tmp_path):
    copy = tmp_path / "artifact"
    shutil.copytree(exported("text_encoder", "onnx").folder, copy)
    return copy


def _edit_manifest(folder, edit):
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _entry(path, name):
    data = path.read_bytes()
    return {"path": name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# -- class 1: data lost --------------------------------------------------------------------------


def test_a_second_writer_of_one_destination_is_refused_and_the_first_kept(tmp_path):
    destination = tmp_path / "denoiser-onnx"
    staged, release = threading.Event(), threading.Event()

    def first():
        with staged_folder(destination) as staging:
            (staging.folder / "first").write_text("first")
            staged.set()
            release.wait(10)
            staging.commit()

    writer = threading.Thread(target=first)
    writer.start()
    try:
        assert staged.wait(10)
        with pytest.raises(EdgegenError, match="being written by another export"):
            with staged_folder(destination) as staging:
                (staging.folder / "second").write_text("second")
                staging.commit()
    finally:
        release.set()
        writer.join()
    with pytest.raises(EdgegenError, match="already exists"):
        with staged_folder(destination) as staging:
            staging.commit()
    assert [p.name for p in destination.iterdir()] == ["first"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["denoiser-onnx"]


def test_commit_refuses_a_destination_that_appeared_meanwhile(tmp_path):
    destination = tmp_path / "denoiser-onnx"
    with pytest.raises(EdgegenError, match="already exists"):
        with staged_folder(destination) as staging:
            (staging.folder / "mine").write_text("mine")
            destination.mkdir()  # someone else's folder, written without the lock
            (destination / "theirs").write_text("theirs")
            staging.commit()
    assert [p.name for p in destination.iterdir()] == ["theirs"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["denoiser-onnx"]


def test_force_onto_a_symlink_replaces_the_link_not_its_target(tmp_path):
    elsewhere = tmp_path / "elsewhere" / "real-folder"
    elsewhere.mkdir(parents=True)
    (elsewhere / "marker").write_text("keep me")
    output = tmp_path / "out"
    output.mkdir()
    destination = output / "denoiser-onnx"
    destination.symlink_to(elsewhere, target_is_directory=True)
    with staged_folder(destination, force=True) as staging:
        (staging.folder / "new").write_text("new")
        staging.commit()
    assert (elsewhere / "marker").read_text() == "keep me"
    assert not destination.is_symlink() and [p.name for p in destination.iterdir()] == ["new"]
    assert sorted(p.name for p in output.iterdir()) == ["denoiser-onnx"]


# -- class 2: half-written leftovers ----------------------------------------------------------------


def test_leftovers_of_a_killed_writer_are_removed_never_a_live_ones(tmp_path):
    destination = tmp_path / "denoiser-onnx"
    dead, alive = _dead_pid(), os.getpid()
    for name in (f".denoiser-onnx.partial-{dead}-abc", f".denoiser-onnx.partial-{alive}-abc", f".other.partial-{dead}-abc"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "half.bin").write_bytes(b"x")
    with staged_folder(destination) as staging:
        (staging.folder / "new").write_text("new")
        staging.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["denoiser-onnx", f".denoiser-onnx.partial-{alive}-abc", f".other.partial-{dead}-abc"]
    )


def test_an_old_artifact_retired_by_a_killed_forced_write_is_put_back(tmp_path):
    destination = tmp_path / "denoiser-onnx"
    retired = tmp_path / f".denoiser-onnx.replaced-{_dead_pid()}-abcd"
    retired.mkdir()
    (retired / "old").write_text("old")
    with pytest.raises(EdgegenError, match="already exists"):
        with staged_folder(destination):
            pass
    assert [p.name for p in destination.iterdir()] == ["old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["denoiser-onnx"]


def _results_line(tmp_path, images_dir):
    from tests.test_report import _result

    case = _result("student/onnx/4-steps", "student", "onnx", 9.5, 0.7, tmp_path)
    path = tmp_path / "results.jsonl"
    path.write_text(case.model_copy(update={"images_dir": images_dir}).model_dump_json() + "\n")
    return path


def test_report_onto_a_directory_is_refused_and_leaves_nothing(tmp_path):
    results = _results_line(tmp_path, None)
    target = tmp_path / "images"
    result = CliRunner().invoke(app, ["report", str(results), "-o", str(target)])
    assert result.exit_code == 2 and "is a directory" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("images_dir", ["../../etc", "/etc", "images/../../x"])
def test_report_refuses_images_outside_the_results_folder(tmp_path, images_dir):
    folder = tmp_path / "run"
    folder.mkdir()
    results = _results_line(folder, images_dir)
    result = CliRunner().invoke(app, ["report", str(results), "-o", str(tmp_path / "r.html")])
    assert result.exit_code == 2, result.output
    assert "outside the results file's folder" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r.html").exists()


def test_report_refuses_an_image_linked_outside(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    results = _results_line(folder, "images/student_onnx_4-steps")
    secret = tmp_path / "secret.png"
    shutil.copy(folder / "images/student_onnx_4-steps/0.png", secret)
    (folder / "images/student_onnx_4-steps/0.png").unlink()
    (folder / "images/student_onnx_4-steps/0.png").symlink_to(secret)
    result = CliRunner().invoke(app, ["report", str(results), "-o", str(tmp_path / "r.html")])
    assert result.exit_code == 2 and "links outside" in result.stderr


# -- class 3: paths outside the artifact ----------------------------------------------------------


def _absolute_model_file(folder, data):
    data["model_file"] = str((folder / "model.onnx").resolve())


def _outside_file_listed(folder, data):
    outside = folder.parent / "x"
    outside.write_bytes(b"outside")
    data["files"].append(_entry(outside, "../x"))


def _climbing_file_listed(folder, data):
    (folder.parent / "x").write_bytes(b"outside")
    data["files"].append(_entry(folder.parent / "x", "a/../../x"))


def _symlink_outside(folder, data):
    outside = folder.parent / "reference-elsewhere.safetensors"
    shutil.move(folder / "reference.safetensors", outside)
    (folder / "reference.safetensors").symlink_to(outside)


def _model_not_listed(folder, data):
    data["files"] = [e for e in data["files"] if e["path"] != "model.onnx"]


def _reference_outside(folder, data):
    outside = folder.parent / "reference.safetensors"
    shutil.copy(folder / "reference.safetensors", outside)
    data["reference_file"] = "../reference.safetensors"
    data["files"].append(_entry(outside, "../reference.safetensors"))


def _package_file_unlisted(folder, data):
    package = folder / "model.mlpackage"
    package.mkdir()
    (package / "listed.bin").write_bytes(b"a")
    (package / "unlisted.bin").write_bytes(b"b")
    data["model_file"] = "model.mlpackage"
    data["files"].append(_entry(package / "listed.bin", "model.mlpackage/listed.bin"))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (_absolute_model_file, "model_file: '/"),
        (_outside_file_listed, "'../x' must be a normalised relative path"),
        (_climbing_file_listed, "'a/../../x' must be a normalised relative path"),
        (_symlink_outside, "reference.safetensors leads outside the artifact folder"),
        (lambda folder, data: data.update(files=[]), "files is empty"),
        (_model_not_listed, "model_file 'model.onnx' is not listed in files"),
        (_reference_outside, "'../reference.safetensors' must be a normalised relative path"),
        (_package_file_unlisted, "model.mlpackage/unlisted.bin is in the model package but not listed"),
        (lambda folder, data: data["files"].append(dict(data["files"][0])), "files lists a path twice"),
    ],
    ids=["absolute", "dotdot", "a-dotdot-dotdot", "symlink-outside", "files-empty", "model-unlisted", "reference-outside", "package-unlisted", "duplicate"],
)
def test_every_path_an_artifact_names_stays_inside_and_is_listed(artifact_copy, mutate, message):
    _edit_manifest(artifact_copy, lambda data: mutate(artifact_copy, data))
    with pytest.raises(EdgegenError) as caught:
        load_artifact(artifact_copy)
    text = str(caught.value)
    assert message in text and "\n" not in text, text


def test_a_truncated_model_with_no_files_listed_fails_inspect(artifact_copy):
    model = artifact_copy / "model.onnx"
    model.write_bytes(model.read_bytes()[:100])
    _edit_manifest(artifact_copy, lambda data: data.update(files=[]))
    result = CliRunner().invoke(app, ["inspect", str(artifact_copy)])
    assert result.exit_code == 2 and "files is empty" in result.stderr and len(result.stderr.strip().splitlines()) == 1


# -- Also: the manifest and results loaders fuzzed -----------------------------------------------

GARBAGE = [None, True, -1, 0, 2**70, -(2**70), 1e308, float("nan"), float("inf"), "", "x" * 5000, "é\u202e\U0001f600\x00", [], {}, [1, "a"], {"a": {"b": None}}, "../../etc/passwd", "/etc/passwd"]


def _paths(value):
    """Every (container, key) in a JSON value, so a mutation can reach any depth."""
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            found.append((value, key))
            found.extend(_paths(item))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.append((value, index))
            found.extend(_paths(item))
    return found


def _mutate(data, rng):
    """One random mutation of a parsed JSON document, returned as text (sometimes not JSON at all)."""
    kind = rng.choice(["delete", "retype", "garbage-key", "swap", "truncate", "bytes", "several"])
    spots = _paths(data)
    if kind == "truncate":
        text = json.dumps(data)
        return text[: rng.randrange(len(text))]
    if kind == "bytes":
        text = bytearray(json.dumps(data).encode())
        for _ in range(rng.randint(1, 5)):
            text[rng.randrange(len(text))] = rng.randrange(256)
        return bytes(text)
    rounds = rng.randint(2, 6) if kind == "several" else 1
    for _ in range(rounds):
        container, key = rng.choice(spots)
        action = kind if kind != "several" else rng.choice(["delete", "retype", "garbage-key", "swap"])
        if action == "delete":
            del container[key]
        elif action == "retype":
            container[key] = rng.choice(GARBAGE)
        elif action == "garbage-key" and isinstance(container, dict):
            container[rng.choice(["", "zz", "\u00e9", "schema_version "])] = rng.choice(GARBAGE)
        elif action == "swap":
            other_container, other_key = rng.choice(spots)
            try:
                container[key], other_container[other_key] = other_container[other_key], container[key]
            except (KeyError, IndexError):
                pass
        spots = _paths(data)
        if not spots:
            break
    return json.dumps(data)


def _write(path, text):
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")


def test_fuzzed_manifests_load_or_fail_in_one_line(artifact_copy):
    original = json.loads((artifact_copy / "manifest.json").read_text())
    rng = random.Random(13)
    outcomes = {"loaded": 0, "refused": 0}
    for _ in range(200):
        _write(artifact_copy / "manifest.json", _mutate(json.loads(json.dumps(original)), rng))
        try:
            load_artifact(artifact_copy)
            outcomes["loaded"] += 1
        except EdgegenError as error:
            assert "\n" not in str(error)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 100


def test_fuzzed_results_lines_load_or_fail_in_one_line(tmp_path):
    from edgegen.schema.pipeline import read_results_file

    results = _results_line(tmp_path, None)
    original = json.loads(results.read_text())
    rng = random.Random(13)
    refused = 0
    for _ in range(150):
        _write(results, _mutate(json.loads(json.dumps(original)), rng))
        try:
            read_results_file(results)
        except EdgegenError as error:
            assert "\n" not in str(error)
            refused += 1
    assert refused > 50


def test_compare_output_onto_a_file_that_is_not_results_loses_nothing(tmp_path, pipeline_dir):
    from typer.testing import CliRunner

    from edgegen.cli import app

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle at the top left\n")
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\nthe last line has no newline")
    before = notes.read_bytes()
    result = CliRunner().invoke(
        app, ["compare", "--prompts", str(prompts), "--teacher", str(pipeline_dir), "--student", str(pipeline_dir), "-o", str(notes), "--runs", "0"]
    )
    assert result.exit_code == 2, result.output
    assert "notes.txt:1 is not JSON" in result.stderr
    assert notes.read_bytes() == before  # not cut, not appended to


def test_only_a_results_file_own_cut_short_line_is_dropped(tmp_path):
    from tests.test_report import _result

    from edgegen.errors import EdgegenError
    from edgegen.measure.pipeline_fidelity import drop_partial_last_line, existing_case_ids

    good = _result("teacher/eager/20-steps", "teacher", "eager", 80.0, 0.9, tmp_path, images=False).model_dump_json()
    results = tmp_path / "results.jsonl"
    results.write_text(good + "\n" + good[:40])  # an interrupted append
    drop_partial_last_line(results)
    assert results.read_text() == good + "\n"
    results.write_text(good + "\n" + "garbage that is not a result")
    with pytest.raises(EdgegenError, match="not a results file"):
        drop_partial_last_line(results)
    assert results.read_text().endswith("garbage that is not a result")
    results.write_text('{"case_id": "teacher/eager/20-steps"}\n')  # carries a case id, is not a result
    with pytest.raises(EdgegenError, match="results.jsonl:1 has no integer schema_version"):
        existing_case_ids(results)


# -- I/O faults: a full or read-only disk names the file and leaves nothing (class 5) ---------------


def _half_written_then_full(path):
    """A write that gets some bytes out and then finds the disk full: Python's OSError names no file."""
    with open(path, "wb") as handle:
        handle.write(b"half")
    raise OSError(errno.ENOSPC, "No space left on device")


def _full_safetensors(tensors, filename, metadata=None):
    _half_written_then_full(filename)


def _full_safetensors_rust(tensors, filename, metadata=None):
    from safetensors import SafetensorError

    with open(filename, "wb") as handle:
        handle.write(b"half")
    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


def _full_json(path, model):
    _half_written_then_full(path)


def _export(pipeline_dir, out, *more):
    return CliRunner().invoke(app, ["export", str(pipeline_dir), "-o", str(out), "--component", "text_encoder", *more])


@pytest.mark.parametrize(
    ("module", "name", "fault", "file"),
    [
        ("safetensors.numpy", "save_file", _full_safetensors, "reference.safetensors"),
        ("safetensors.numpy", "save_file", _full_safetensors_rust, "reference.safetensors"),
        ("edgegen.artifact", "write_json", _full_json, "manifest.json"),
    ],
    ids=["reference-oserror", "reference-safetensors-error", "manifest"],
)
def test_a_full_disk_while_writing_an_artifact_names_the_file_and_leaves_nothing(pipeline_dir, tmp_path, monkeypatch, module, name, fault, file):
    monkeypatch.setattr(importlib.import_module(module), name, fault)
    out = tmp_path / "out"
    result = _export(pipeline_dir, out)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == f"error: cannot write {out.resolve()}/text_encoder-onnx/{file}: No space left on device; nothing was written"
    assert not out.exists()  # no staging folder, no lock, no half artifact, not even the -o folder it made


def test_a_read_only_output_folder_names_the_artifact(pipeline_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    if os.geteuid() != 0:
        out.chmod(0o555)
    else:  # root writes through any mode bits: the lock file's creation fails as a read-only mount would
        real_open = os.open

        def read_only(path, *args, **kwargs):
            if str(path).startswith(str(out)):
                raise OSError(errno.EROFS, "Read-only file system", str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", read_only)
    try:
        result = _export(pipeline_dir, out)
    finally:
        out.chmod(0o755)
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert f"cannot write {out.resolve()}/text_encoder-onnx: " in result.stderr
    assert list(out.iterdir()) == []  # the folder was the user's: it stays, empty


def _limited(limit):
    """Run a child with files capped at ``limit`` bytes: a real write failure (EFBIG; Python ignores SIGXFSZ)."""
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_real_write_failure_during_export_names_the_model_file(pipeline_dir, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "edgegen.cli", "export", str(pipeline_dir), "-o", str(out), "--component", "text_encoder"],
        capture_output=True, text=True, timeout=300, preexec_fn=_limited(100_000), env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"error: cannot write {out.resolve()}/text_encoder-onnx/model.onnx: File too large; nothing was written"
    assert not out.exists()


CHECKPOINT_WRITE = """
import sys, torch
from pathlib import Path
from edgegen.artifact import atomic_folder
from edgegen.errors import EdgegenError
try:
    with atomic_folder(Path(sys.argv[1])) as staging:
        (staging / "config.yaml").write_text("steps: 1\\n")
        torch.save({"weights": torch.zeros(100_000)}, staging / "state.pt")
except EdgegenError as error:
    print(error)
"""


def test_a_checkpoint_that_does_not_fit_names_its_file_and_leaves_nothing(tmp_path):
    folder = tmp_path / "checkpoints" / "step-000001"
    result = subprocess.run([sys.executable, "-c", CHECKPOINT_WRITE, str(folder)], capture_output=True, text=True, timeout=120, preexec_fn=_limited(50_000))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"cannot write {folder.resolve()}/state.pt: the write failed"), result.stdout
    assert not folder.parent.exists()


RESULTS_APPEND = """
import sys
from pathlib import Path
from pydantic import BaseModel
from edgegen.errors import EdgegenError
from edgegen.measure.pipeline_fidelity import append_result
class Line(BaseModel):
    text: str
try:
    append_result(Path(sys.argv[1]), Line(text="x" * 5000))
except EdgegenError as error:
    print(error)
"""


def test_a_results_file_on_a_full_disk_is_named(tmp_path):
    results = tmp_path / "results.jsonl"
    results.write_text("{}\n")
    result = subprocess.run([sys.executable, "-c", RESULTS_APPEND, str(results)], capture_output=True, text=True, timeout=120, preexec_fn=_limited(1000))
    assert result.stdout.strip() == f"cannot write {results}: File too large", result.stdout + result.stderr


# -- two exports into one folder at once; the lock is taken before the pipeline loads -------------


def test_the_destination_is_locked_before_the_pipeline_loads(pipeline_dir, tmp_path, monkeypatch):
    from edgegen.exporting import orchestration

    loaded = []
    monkeypatch.setattr(orchestration, "load_pipeline", lambda *args, **kwargs: loaded.append(args))
    with staged_folder(tmp_path / "text_encoder-onnx"):  # another export holds it
        with pytest.raises(EdgegenError, match="being written by another export"):
            orchestration.export_pipeline(pipeline_dir, "onnx", tmp_path, ["text_encoder"])
    assert loaded == []


def test_two_exports_into_one_folder_at_once_one_wins_whole(pipeline_dir, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "edgegen.cli", "export", str(pipeline_dir), "-o", str(out), "--component", "text_encoder"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    children = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outcomes = sorted((child.wait(timeout=300), child.stderr.read()) for child in children)
    for child in children:
        child.stdout.close()
        child.stderr.close()
    (winner, _), (loser, message) = outcomes
    assert (winner, loser) == (0, 2), outcomes
    assert len(message.strip().splitlines()) == 1 and ("being written by another export" in message or "already exists" in message), message
    assert [p.name for p in out.iterdir()] == ["text_encoder-onnx"]
    load_artifact(out / "text_encoder-onnx")
    assert CliRunner().invoke(app, ["inspect", str(out / "text_encoder-onnx")]).exit_code == 0


def test_a_cleaning_report_on_a_full_disk_is_named_and_not_left_half_written(tmp_path):
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "edgegen.cli", "data", "clean", "builtin:shapes?count=8", "--report", str(report)],
        capture_output=True, text=True, timeout=120, preexec_fn=_limited(100),
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"error: cannot write {report}: File too large"
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_no_empty_output_folder_and_a_written_one_is_not_private(tmp_path):
    import stat

    from edgegen.artifact import atomic_folder
    from edgegen.errors import EdgegenError

    out = tmp_path / "new" / "deeper"
    with pytest.raises(EdgegenError, match="simulated"):
        with atomic_folder(out / "denoiser-onnx") as staging:
            (staging / "model.onnx").write_bytes(b"half")
            raise EdgegenError("simulated converter failure")
    assert not (tmp_path / "new").exists()  # the folders this write created are gone with it

    with atomic_folder(out / "denoiser-onnx") as staging:
        (staging / "model.onnx").write_bytes(b"whole")
    mode = stat.S_IMODE((out / "denoiser-onnx").stat().st_mode)
    assert mode == 0o777 & ~_current_umask(), oct(mode)  # not mkdtemp's private 0700


def _current_umask() -> int:
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    return mask
