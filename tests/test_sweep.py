"""``edgegen sweep``: axes, summary-token variants, the Pareto front, and the command end to end."""

from __future__ import annotations

import json

import pytest


def _result(case_id, latency_ms, memory_mb, size, psnr, role="student", fid=None):
    from edgegen.measure.profiling import host_info
    from edgegen.schema.pipeline import ComponentTiming, DistillationGap, PipelineLatency, PipelineResult
    from edgegen.schema.results import Memory

    latency = None
    if latency_ms is not None:
        timing = ComponentTiming(component="denoiser", calls_per_image=1, p50_ms=latency_ms, p90_ms=latency_ms, mean_ms=latency_ms)
        latency = PipelineLatency(
            warmup_runs=1, timed_runs=1, steps=1, calls_per_step=1, per_component=[timing], per_step_p50_ms=latency_ms,
            host_overhead_p50_ms=0.0, total_p50_ms=latency_ms, total_p90_ms=latency_ms, cold_load_ms=1.0, warm_load_ms=1.0,
        )
    return PipelineResult(
        case_id=case_id, role=role, model_dir="m", model_sha256="0", pipeline_family="f", runtime="onnx",
        size_bytes=size, steps=1, guidance_scale=1.0, image_size=32, prompts=["p"], seeds=[0], host=host_info(1),
        latency=latency, memory=Memory(baseline_rss_mb=0, peak_rss_mb=memory_mb, added_mb=memory_mb),
        distillation_gap=None if role == "teacher" else DistillationGap(reference="t", image_psnr_db=psnr, image_ssim=0.5, fid=fid),
    )


def test_pareto_front_keeps_the_cases_nothing_beats_on_every_axis():
    from edgegen.report.pareto import pareto_of

    results = [
        _result("fast-rough", 2.0, 10, 100, 20.0, fid=9.0),
        _result("slow-fine", 8.0, 10, 100, 30.0, fid=1.0),
        _result("slow-rough", 9.0, 10, 100, 19.0, fid=10.0),  # beaten by both on latency and quality
        _result("small-rough", 9.0, 10, 50, 19.0, fid=10.0),  # the smallest: kept
        _result("untimed", None, 10, 10, 40.0),  # no latency: not considered
        _result("teacher", 50.0, 10, 1000, 99.0, role="teacher"),
    ]
    front = pareto_of(results, "psnr")
    assert front.front == ["fast-rough", "slow-fine", "small-rough"]
    assert front.considered == ["fast-rough", "slow-fine", "slow-rough", "small-rough"]
    assert front.quality_higher_is_better
    by_fid = pareto_of(results[:4], "fid")  # lower FID is better: the same front
    assert not by_fid.quality_higher_is_better and by_fid.front == ["fast-rough", "slow-fine", "small-rough"]


def test_sweep_axes_refuse_unknown_names():
    from edgegen.errors import EdgegenError
    from edgegen.report.sweep import SweepAxes, parse_list

    with pytest.raises(EdgegenError, match="nosuch"):
        SweepAxes(targets=["nosuch"]).check()
    with pytest.raises(EdgegenError, match="unknown precision 'int4'"):
        SweepAxes(targets=["onnx"], precisions=["int4"]).check()
    with pytest.raises(EdgegenError, match="at least 1"):
        SweepAxes(targets=["onnx"], steps=[0]).check()
    assert parse_list("1, 2,4", int, "--steps") == [1, 2, 4]
    with pytest.raises(EdgegenError, match="--steps takes"):
        parse_list("1,two", int, "--steps")


@pytest.fixture(scope="module")
def student_dir(pipeline_dir, tmp_path_factory):
    from edgegen.models.student import make_student

    return make_student(pipeline_dir, "tiny", tmp_path_factory.mktemp("sweep") / "student")


def test_summary_token_variants_only_where_the_student_allows(pipeline_dir, student_dir, tmp_path):
    from edgegen.models.checkpoint import read_student_manifest
    from edgegen.errors import EdgegenError
    from edgegen.schema.checkpoint import STUDENT_MANIFEST_FILENAME
    from edgegen.report.sweep import summary_token_variant

    own = read_student_manifest(student_dir).scman.summary_tokens
    assert summary_token_variant(student_dir, own, tmp_path) == student_dir  # its own budget: no copy
    variant = summary_token_variant(student_dir, 2, tmp_path)
    assert read_student_manifest(variant).scman.summary_tokens == 2
    assert (variant / "unet" / "config.json").read_bytes() == (student_dir / "unet" / "config.json").read_bytes()
    with pytest.raises(EdgegenError, match="divide"):
        summary_token_variant(student_dir, 3, tmp_path)  # 3 does not divide the 16-token context
    with pytest.raises(EdgegenError, match="no SCMAN"):
        summary_token_variant(pipeline_dir, 2, tmp_path)
    learned = tmp_path / "learned"
    import shutil

    shutil.copytree(student_dir, learned)
    manifest = json.loads((learned / STUDENT_MANIFEST_FILENAME).read_text())
    manifest["scman"]["summary"] = "learned"
    (learned / STUDENT_MANIFEST_FILENAME).write_text(json.dumps(manifest))
    with pytest.raises(EdgegenError, match="fixed"):
        summary_token_variant(learned, 2, tmp_path)


def _sweep(pipeline_dir, student_dir, prompts, output, *extra):
    from typer.testing import CliRunner

    from edgegen.cli import app

    arguments = ["sweep", "--teacher", str(pipeline_dir), "--student", str(student_dir), "--prompts", str(prompts),
                 "-o", str(output), "--targets", "onnx", "--precisions", "float", "--steps", "1,2", "--teacher-steps", "2",
                 "--runs", "1", *extra]
    return CliRunner().invoke(app, arguments)


def test_sweep_bad_inputs_exit_2_with_one_line(pipeline_dir, student_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle at the top left\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    for arguments, message in (
        ((prompts, tmp_path / "a.jsonl", "--targets", "nosuch"), "nosuch"),
        ((prompts, tmp_path / "b.jsonl", "--runs", "0"), "--runs must be at least 1"),
        ((empty, tmp_path / "c.jsonl"), "no prompts"),
        ((prompts, tmp_path / "d.jsonl", "--quality", "fid"), "--quality fid needs --feature-extractor"),
        ((prompts, tmp_path / "e.jsonl", "--summary-tokens", "3"), "divide"),
    ):
        result = _sweep(pipeline_dir, student_dir, *arguments)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output
        assert not arguments[1].exists()


@pytest.mark.slow  # exports the student to ONNX and profiles five cases in fresh processes
def test_sweep_writes_every_cell_and_the_front_and_resumes(pipeline_dir, student_dir, tmp_path):
    from edgegen.schema.pipeline import PipelineResult
    from edgegen.report.sweep import read_front

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle at the top left\na blue square at the bottom right\n")
    output = tmp_path / "sweep" / "results.jsonl"
    result = _sweep(pipeline_dir, student_dir, prompts, output)
    assert result.exit_code == 0, result.output
    results = [PipelineResult.model_validate_json(line) for line in output.read_text().splitlines()]
    assert sorted(r.case_id for r in results) == [
        "student/eager/1-steps", "student/eager/2-steps", "student/onnx/1-steps", "student/onnx/2-steps", "teacher/eager/2-steps",
    ]
    assert all(r.latency is not None and r.memory is not None for r in results)
    front = read_front(output.with_suffix(".pareto.json"))
    assert len(front.considered) == 4 and front.front and set(front.front) <= set(front.considered)
    before = output.read_text()
    again = _sweep(pipeline_dir, student_dir, prompts, output, "--json")
    assert again.exit_code == 0, again.output
    assert output.read_text() == before  # every cell already there: nothing re-run
    payload = json.loads(again.stdout)
    assert payload["pareto"]["front"] == front.front
