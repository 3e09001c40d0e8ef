"""Unbounded or unchecked values, and folders that should be refused (issue 13, classes 6 and 7).

Every bad value is refused before any work starts: exit code 2, the option named, nothing written.
"""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from edgegen.cli import app
from edgegen.errors import EdgegenError

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


# (arguments after the command's required ones, the option the refusal names)
BAD_VALUES = [
    (["export", "p", "-o", "{out}", "--batch-size", "100000"], "--batch-size"),
    (["export", "p", "-o", "{out}", "--batch-size", "0"], "--batch-size"),
    (["export", "p", "-o", "{out}", "--min-psnr", "nan"], "--min-psnr"),
    (["export", "p", "-o", "{out}", "--min-psnr", "inf"], "--min-psnr"),
    (["export", "p", "-o", "{out}", "--threads", "0"], "--threads"),  # export has no --threads
    (["profile", "{out}", "--threads", "0"], "--threads"),
    (["profile", "{out}", "--threads", "-2"], "--threads"),
    (["profile", "{out}", "--runs", "-1"], "--runs"),
    (["profile", "{out}", "--runs", "0"], "--runs"),
    (["profile", "{out}", "--warmup", "-1"], "--warmup"),
    (["compare", "--teacher", "t", "--prompts", "p", "--student", "s", "-o", "{out}", "--steps", "0"], "--steps"),
    (["compare", "--teacher", "t", "--prompts", "p", "--student", "s", "-o", "{out}", "--guidance-scale", "nan"], "--guidance-scale"),
    (["compare", "--teacher", "t", "--prompts", "p", "--student", "s", "-o", "{out}", "--guidance-scale", "inf"], "--guidance-scale"),
    (["compare", "--teacher", "t", "--prompts", "p", "--student", "s", "-o", "{out}", "--guidance-scale", "-1"], "--guidance-scale"),
    (["compare", "--teacher", "t", "--prompts", "p", "--student", "s", "-o", "{out}", "--runs", "-1"], "--runs"),
    (["compare", "--teacher", "t", "--prompts", "p", "--student", "s", "-o", "{out}", "--threads", "0"], "--threads"),
    (["compare", "--teacher", "t", "--prompts", "p", "--student", "s", "-o", "{out}", "--min-psnr", "nan"], "--min-psnr"),
    (["compare", "--teacher", "t", "--prompts", "p", "--student", "s", "-o", "{out}", "--min-ssim", "-inf"], "--min-ssim"),
    (["sweep", "--teacher", "t", "--student", "s", "--prompts", "p", "-o", "{out}", "--teacher-steps", "0"], "--teacher-steps"),
    (["sweep", "--teacher", "t", "--student", "s", "--prompts", "p", "-o", "{out}", "--guidance-scale", "nan"], "--guidance-scale"),
    (["sweep", "--teacher", "t", "--student", "s", "--prompts", "p", "-o", "{out}", "--threads", "0"], "--threads"),
    (["sweep", "--teacher", "t", "--student", "s", "--prompts", "p", "-o", "{out}", "--runs", "-1"], "--runs"),
    (["demo", "-o", "{out}", "--runs", "0"], "--runs"),
    (["probe", "train", "-o", "{out}", "--steps", "0"], "--steps"),
    (["data", "shapes", "-o", "{out}", "--count", "0"], "--count"),
    (["data", "clean", "{out}", "--image-size", "0"], "--image-size"),
]


@pytest.mark.parametrize(("arguments", "option"), BAD_VALUES, ids=[" ".join(a[0][-3:]) for a in BAD_VALUES])
def test_a_bad_value_is_refused_before_any_work(tmp_path, arguments, option):
    out = tmp_path / "out"
    result = invoke(*[a.replace("{out}", str(out)) for a in arguments])
    assert result.exit_code == 2, result.output
    assert option in result.stderr and "Traceback" not in result.output
    assert not out.exists()


def test_the_bounds_themselves_are_accepted(tmp_path):
    # 64 and compare's --runs 0 (skip profiling) pass the option check and fail later, on the folder.
    result = invoke("export", tmp_path / "absent", "-o", tmp_path / "out", "--batch-size", "64")
    assert result.exit_code == 2 and "not found" in result.stderr
    result = invoke("compare", "--teacher", tmp_path / "t", "--prompts", tmp_path / "p", "--student", tmp_path / "s",
                    "-o", tmp_path / "r.jsonl", "--runs", "0", "--guidance-scale", "0")
    assert result.exit_code == 2 and "--runs" not in result.stderr and "--guidance" not in result.stderr


def test_a_prompt_line_beyond_the_limit_is_refused_with_its_number(tmp_path):
    from edgegen.measure.pipeline_fidelity import MAX_PROMPT_CHARS, read_prompts

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n" + "x" * (1 << 20) + "\n")
    with pytest.raises(EdgegenError, match=r"prompts.txt:2: prompt of 1048576 characters; the limit is 2000") as error:
        read_prompts(prompts)
    assert "\n" not in str(error.value)
    prompts.write_text("a red circle\n" + "x" * MAX_PROMPT_CHARS + "\n")
    assert len(read_prompts(prompts)) == 2


def _copy(pipeline_dir, tmp_path):
    folder = tmp_path / "pipeline"
    shutil.copytree(pipeline_dir, folder)
    return folder


def test_pickle_weights_are_refused_unless_trusted(pipeline_dir, tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file

    from edgegen.families.loading import load_pipeline

    folder = _copy(pipeline_dir, tmp_path)
    vae = folder / "vae"
    torch.save(load_file(vae / "diffusion_pytorch_model.safetensors"), vae / "diffusion_pytorch_model.bin")
    (vae / "diffusion_pytorch_model.safetensors").unlink()
    monkeypatch.delenv("EDGEGEN_ALLOW_PICKLE", raising=False)
    with pytest.raises(EdgegenError, match=r"holds pickle weights \(vae/diffusion_pytorch_model.bin\); edgegen loads safetensors only") as error:
        load_pipeline(folder)
    assert "EDGEGEN_ALLOW_PICKLE=1" in str(error.value) and "\n" not in str(error.value)
    result = invoke("export", folder, "-o", tmp_path / "out", "--component", "vae_decoder")
    assert result.exit_code == 2 and "pickle weights" in result.stderr and not (tmp_path / "out").exists()
    monkeypatch.setenv("EDGEGEN_ALLOW_PICKLE", "1")
    assert load_pipeline(folder).vae is not None


def test_a_component_class_that_does_not_exist_is_refused_before_loading(pipeline_dir, tmp_path):
    folder = _copy(pipeline_dir, tmp_path)
    index = json.loads((folder / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "NoSuchScheduler"]
    (folder / "model_index.json").write_text(json.dumps(index))
    out = tmp_path / "out"
    result = invoke("export", folder, "-o", out)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "component 'scheduler' names diffusers.NoSuchScheduler, which diffusers does not have" in lines[0]
    assert not out.exists()
    index["scheduler"] = ["my_code", "MyScheduler"]  # a module beside the weights is code: refused too
    (folder / "model_index.json").write_text(json.dumps(index))
    result = invoke("export", folder, "-o", out)
    assert result.exit_code == 2 and "edgegen loads classes of diffusers or transformers only" in result.stderr
