"""The HTML report: self-contained, the right numbers and images, Pareto fronts, one-line errors, Chromium render."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from edgegen.cli import app
from edgegen.report.pareto import pareto_front
from edgegen.schema.pipeline import ComponentTiming, DistillationGap, ExportFidelity, PipelineLatency, PipelineResult
from edgegen.schema.results import Host, Memory


def test_pareto_front_keeps_the_non_dominated():
    points = [
        {"ms": 10, "q": 0.5},  # fast, worse
        {"ms": 20, "q": 0.9},  # slower, better
        {"ms": 25, "q": 0.8},  # dominated by the second
        {"ms": 10, "q": 0.5},  # a tie with the first: both stay
        {"ms": None, "q": 1.0},  # not measured: left out
        {"ms": 5, "q": float("nan")},
    ]
    assert pareto_front(points, minimize=["ms"], maximize=["q"]) == [0, 1, 3]
    assert pareto_front([{"a": 1, "b": 2}, {"a": 2, "b": 1}], minimize=["a", "b"]) == [0, 1]
    with pytest.raises(ValueError):
        pareto_front(points)


def _result(case_id, role, runtime, total_ms, faithfulness, folder, images=True, not_run=None, family="f1"):
    host = Host(platform="Linux", machine="x86_64", python="3.11", cpu_count=2, threads=1)
    latency = None if not_run else PipelineLatency(
        warmup_runs=1, timed_runs=3, steps=4, calls_per_step=1,
        per_component=[ComponentTiming(component=c, calls_per_image=n, p50_ms=ms, p90_ms=ms, mean_ms=ms) for c, n, ms in (("text_encoder", 1, 1.0), ("denoiser", 4, total_ms / 5), ("vae_decoder", 1, 1.5))],
        per_step_p50_ms=total_ms / 5, host_overhead_p50_ms=0.5, total_p50_ms=total_ms, total_p90_ms=total_ms * 1.1, cold_load_ms=100, warm_load_ms=20,
    )
    images_dir = None
    if images and not not_run:
        from PIL import Image

        images_dir = f"images/{case_id.replace('/', '_')}"
        (folder / images_dir).mkdir(parents=True)
        for index in range(2):
            Image.fromarray(np.full((32, 32, 3), 40 * index + 20, np.uint8)).save(folder / images_dir / f"{index}.png")
    return PipelineResult(
        case_id=case_id, role=role, model_dir="/m", model_sha256="0" * 64, pipeline_family=family, runtime=runtime,
        target=None if runtime == "eager" else runtime, quantization="none", size_bytes=2048 * 1024, steps=4, guidance_scale=1.0,
        image_size=32, prompts=["a red circle at the top left", "a blue square at the bottom right"], seeds=[0, 1], images_dir=images_dir,
        host=host, latency=latency, memory=None if not_run else Memory(baseline_rss_mb=100, peak_rss_mb=150, added_mb=50),
        export_fidelity=ExportFidelity(reference="s", latent_psnr_db_per_step=[60, 55, 50, 48], image_psnr_db=47.25, image_ssim=0.998) if runtime not in ("eager",) and not not_run else None,
        distillation_gap=None if not_run else DistillationGap(reference="t", image_psnr_db=21.5, image_ssim=0.8, faithfulness=faithfulness),
        not_run_reason=not_run,
    )


@pytest.fixture()
def results_file(tmp_path):
    cases = [
        _result("teacher/eager/4-steps", "teacher", "eager", 80.0, 0.9, tmp_path),
        _result("student/eager/4-steps", "student", "eager", 40.0, 0.7, tmp_path),
        _result("student/onnx/4-steps", "student", "onnx", 9.5, 0.7, tmp_path),
        _result("student/coreml/4-steps", "student", "coreml", 0, None, tmp_path, not_run="Core ML prediction needs macOS"),
    ]
    path = tmp_path / "results.jsonl"
    path.write_text("".join(c.model_dump_json() + "\n" for c in cases))
    return path


def test_report_is_self_contained_with_the_numbers_and_the_grid(results_file, tmp_path):
    out = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", str(results_file), "-o", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert not re.search(r"(src|href)=['\"]https?:", page)
    assert "47.2" in page and "9.50" in page and "not run: Core ML prediction needs macOS" in page
    grid = page[page.index("<table class='grid'>"):]
    grid = grid[: grid.index("</table>")]
    assert grid.count("<tr>") == 3  # header + two prompts
    assert grid.count("<img") == 2 * 3  # teacher, float student, onnx student (Core ML did not run)
    assert page.count("data:image/png;base64,") >= 6 + 3  # the grid and the plots
    # The float and ONNX students match on size, memory and quality; ONNX is faster: it alone is on the front.
    front = page[page.index("<h2>Pareto front</h2>"):page.index("<h2>Trade-offs</h2>")]
    assert re.findall(r"<li>([^<]*)</li>", front) == ["student/onnx/4-steps"]
    assert "1 of 2 timed student cases are on the Pareto front" in front and "caption faithfulness" in front


def test_missing_image_is_a_visible_cell(results_file, tmp_path):
    (tmp_path / "images" / "student_onnx_4-steps" / "1.png").unlink()
    page = (CliRunner().invoke(app, ["report", str(results_file), "-o", str(tmp_path / "r.html")]), (tmp_path / "r.html").read_text())[1]
    assert "class='missing'>missing" in page


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "results file not found"),
        ("{not json\n", "is not JSON"),
        ('{"schema_version": 1, "kind": "pipeline"}\n', "is not a pipeline result"),
        ('{"schema_version": 99}\n', "newer than this edgegen reads"),
        ("", "no results in"),
    ],
)
def test_bad_results_fail_in_one_line(tmp_path, content, message):
    path = tmp_path / "results.jsonl"
    if content is not None:
        path.write_text(content)
    result = CliRunner().invoke(app, ["report", str(path), "-o", str(tmp_path / "r.html")])
    assert result.exit_code == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r.html").exists()


def test_mixed_pipeline_families_are_refused(results_file, tmp_path):
    other = tmp_path / "other.jsonl"
    other.write_text(_result("x/eager/4-steps", "student", "eager", 1, 0.1, tmp_path, images=False, family="f2").model_dump_json() + "\n")
    result = CliRunner().invoke(app, ["report", str(results_file), str(other), "-o", str(tmp_path / "r.html")])
    assert result.exit_code == 2 and "different pipelines mixed" in result.stderr


def test_report_renders_in_headless_chromium(results_file, tmp_path):
    from edgegen.report.render import find_chromium, screenshot
    from edgegen.report.html import write_report

    if find_chromium() is None:
        pytest.skip("no Chromium installed (apt-get install chromium); .ci/run installs it")
    from PIL import Image

    page = write_report([results_file], tmp_path / "report.html")
    png = screenshot(page, tmp_path / "report.png", width=1280, height=1600)
    image = np.asarray(Image.open(png).convert("RGB"), dtype=np.float32)
    assert image.shape == (1600, 1280, 3)
    assert image.std() > 10  # text, tables, images and plots, not a blank page
    assert (image.mean(axis=2) < 100).mean() > 0.01


def test_terminal_table_fits_120_columns_one_line_per_case(tmp_path):
    from rich.console import Console

    from edgegen.report.tables import pipeline_table
    from edgegen.schema.pipeline import BudgetCheck

    cases = [
        _result("teacher/eager/20-steps", "teacher", "eager", 80.0, 0.9, tmp_path, images=False),
        _result("student-s16/eager/4-steps", "student", "eager", 40.0, 0.7, tmp_path, images=False),
        _result("student-s16/executorch-xnnpack-int8/4-steps", "student", "executorch", 1234.5, 0.75, tmp_path, images=False),
        _result("student/coreml-int8-weights/4-steps", "student", "coreml", 0, None, tmp_path,
                not_run="ai-edge-litert is not installed (pip install 'edgegen[tflite]'); tflite-runtime is not trusted with quantized models"),
    ]
    gap = DistillationGap(reference="t", image_psnr_db=21.5, image_ssim=0.8, faithfulness=0.75, fid=123.456, kid=0.0123, clip_score=31.2)
    cases[2] = cases[2].model_copy(update={"distillation_gap": gap, "budgets": [BudgetCheck(name="min_psnr", limit=50, value=47.25, passed=False)]})
    console = Console(width=120, record=True)
    console.print(pipeline_table(cases, "sweep: 4 cases; Pareto front on latency, memory, size vs psnr"))
    lines = console.export_text().splitlines()
    assert "…" not in "".join(lines) and all(len(line) <= 120 for line in lines)
    header = next(line for line in lines if line.startswith("case"))
    for column in ("KiB", "image", "+MiB", "PSNR", "ful", "FID", "KID", "CLIP", "budget"):
        assert column in header
    for case in cases:
        rows = [line for line in lines if case.case_id in line and not line.startswith("not run here")]
        assert len(rows) == 1, case.case_id  # one line per case, never wrapped
    index = lines.index(rows[0])
    assert "not run" in rows[0] and lines[index + 1].startswith("not run here: student/coreml-int8-weights/4-steps: ai-edge-litert is not installed")
    assert "FAIL" in next(line for line in lines if line.startswith("student-s16/executorch"))


def test_tradeoff_labels_of_clustered_cases_do_not_overlap(tmp_path):
    from edgegen.measure.metric_registry import METRICS
    from edgegen.report.plots import tradeoff_figure

    # Twelve cases within a hair of each other, and two far away.
    cases = [_result(f"student/onnx-{i}/4-steps", "student", "onnx", 10.0 + 0.01 * i, 0.7 + 0.001 * (i % 3), tmp_path, images=False) for i in range(12)]
    cases += [_result("student/eager/4-steps", "student", "eager", 40.0, 0.9, tmp_path, images=False),
              _result("teacher/eager/4-steps", "teacher", "eager", 80.0, 0.95, tmp_path, images=False)]
    plt, figure, labels = tradeoff_figure(cases, METRICS["latency_p50_ms"])
    try:
        figure.canvas.draw()
        renderer = figure.canvas.get_renderer()
        boxes = [label.get_window_extent(renderer) for label in labels]
        assert sorted(int(label.get_text()) for label in labels) == list(range(1, 15))
        overlapping = [(a.get_text(), b.get_text()) for i, a in enumerate(labels) for b in labels[i + 1:] if boxes[labels.index(a)].overlaps(boxes[labels.index(b)])]
        assert not overlapping
    finally:
        plt.close(figure)


def test_report_names_whatever_components_the_family_has(tmp_path):
    from edgegen.report.html import build_report

    case = _result("student/onnx/4-steps", "student", "onnx", 9.5, 0.7, tmp_path, images=False)
    timings = [ComponentTiming(component=c, calls_per_image=n, p50_ms=1.25, p90_ms=1.5, mean_ms=1.3) for c, n in (("text_encoder", 1), ("text_encoder_2", 1), ("transformer", 4), ("vae_decoder", 1))]
    case = case.model_copy(update={"latency": case.latency.model_copy(update={"per_component": timings})})
    path = tmp_path / "results.jsonl"
    path.write_text(case.model_dump_json() + "\n")
    page = build_report([path])
    for name in ("text encoder ms/call", "text encoder 2 ms/call", "transformer ms/call", "vae decoder ms/call"):
        assert name in page
    assert page.count("1.25 x1") == 3 and "1.25 x4" in page


def test_a_bad_line_is_refused_by_compare_and_report_alike(results_file, tmp_path):
    from edgegen.errors import EdgegenError
    from edgegen.measure.pipeline_fidelity import read_results

    lines = results_file.read_text().splitlines()
    older = json.loads(lines[1])
    older["schema_version"] = 0
    results_file.write_text("\n".join([lines[0], json.dumps(older), *lines[2:]]) + "\n")
    with pytest.raises(EdgegenError, match=r"results.jsonl:2 has schema version 0, older than this edgegen reads"):
        read_results(results_file)
    report = CliRunner().invoke(app, ["report", str(results_file), "-o", str(tmp_path / "r.html")])
    assert report.exit_code == 2 and "results.jsonl:2 has schema version 0" in report.stderr
    assert read_results(tmp_path / "none.jsonl") == []
