"""``edgegen report``: one self-contained HTML page from whole-pipeline results files.

Everything is inline (CSS, images as data URIs, plots as PNG data URIs), so the page can be
mailed, attached to CI or opened on a phone with no network. Sections: the key table, the image
grid (same prompts and seeds in every column), the latency breakdown, and plots of quality vs
latency and vs size with the Pareto front, per-step latent fidelity and where the time goes.
Cases that did not run (e.g. Core ML off macOS) show their reason, never zeros.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import os
from pathlib import Path

from pydantic import ValidationError

from edgegen.errors import EdgegenError
from edgegen.schema.pipeline import PIPELINE_RESULTS_SCHEMA_VERSION, PipelineResult


def read_results(paths: list[Path]) -> list[tuple[PipelineResult, Path]]:
    """Every case of every file (later files win on a repeated case id), with its folder."""
    if not paths:
        raise EdgegenError("give at least one results file")
    found: dict[str, tuple[PipelineResult, Path]] = {}
    for path in map(Path, paths):
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise EdgegenError(f"results file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as error:
            raise EdgegenError(f"cannot read results file {path}: {error}") from None
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                if isinstance(data, dict) and isinstance(data.get("schema_version"), int) and data["schema_version"] > PIPELINE_RESULTS_SCHEMA_VERSION:
                    raise EdgegenError(f"{path}:{number} has results schema {data['schema_version']}, newer than this edgegen reads; upgrade edgegen")
                result = PipelineResult.model_validate(data)
            except json.JSONDecodeError:
                raise EdgegenError(f"{path}:{number} is not JSON (a pipeline results file has one JSON object per line)") from None
            except ValidationError as error:
                problem = error.errors()[0]
                where = ".".join(map(str, problem["loc"])) or "(root)"
                raise EdgegenError(f"{path}:{number} is not a pipeline result: {where}: {problem['msg']}") from None
            found[result.case_id] = (result, path.parent)
    if not found:
        raise EdgegenError(f"no results in {', '.join(map(str, paths))}")
    families = {result.pipeline_family for result, _ in found.values()}
    if len(families) > 1:
        raise EdgegenError(f"results of different pipelines mixed ({', '.join(sorted(families))}); report one pipeline family at a time")
    order = {"teacher": 0, "student": 1}
    return sorted(found.values(), key=lambda pair: (order[pair[0].role], pair[0].runtime != "eager", pair[0].case_id))


def _data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _cell(value: object) -> str:
    return f"<td>{html.escape(str(value))}</td>"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _image_grid(cases: list[tuple[PipelineResult, Path]]) -> str:
    shown = [(r, folder) for r, folder in cases if r.images_dir]
    if not shown:
        return "<p>No images in these results.</p>"
    prompts = shown[0][0].prompts
    seeds = shown[0][0].seeds
    header = "<tr><th>prompt (seed)</th>" + "".join(f"<th>{html.escape(r.case_id)}</th>" for r, _ in shown) + "</tr>"
    rows = []
    for index, prompt in enumerate(prompts):
        cells = [f"<td class='prompt'>{html.escape(prompt)} ({seeds[index]})</td>"]
        for result, folder in shown:
            path = folder / result.images_dir / f"{index}.png"
            if path.is_file():
                cells.append(f"<td><img class='sample' alt='{html.escape(result.case_id)} {index}' src='{_data_uri(path.read_bytes())}'></td>")
            else:
                cells.append("<td class='missing'>missing</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table class='grid'>{header}{''.join(rows)}</table>"


def _latency_rows(cases: list[PipelineResult]) -> list[list[str]]:
    rows = []
    for r in cases:
        if r.not_run_reason or r.latency is None:
            rows.append([r.case_id, f"not run: {r.not_run_reason}" if r.not_run_reason else "not profiled"] + [""] * 9)
            continue
        lat, timing = r.latency, {t.component: t for t in r.latency.per_component}
        fmt = lambda t: f"{t.p50_ms:.2f} x{t.calls_per_image}" if t else "-"  # noqa: E731
        rows.append([
            r.case_id, fmt(timing.get("text_encoder")), fmt(timing.get("denoiser")), f"{lat.calls_per_step} x {lat.steps}",
            fmt(timing.get("vae_decoder")), f"{lat.per_step_p50_ms:.2f}", f"{lat.host_overhead_p50_ms:.2f}",
            f"{lat.total_p50_ms:.1f} / {lat.total_p90_ms:.1f}", f"{lat.cold_load_ms:.0f} / {lat.warm_load_ms:.0f}",
            f"{r.memory.added_mb:.1f}" if r.memory else "-", f"{r.size_bytes / 1024:.0f}",
        ])
    return rows


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#666;font-size:13px} table{border-collapse:collapse;font-size:12px;margin:8px 0}
th,td{border:1px solid #ddd;padding:4px 6px;text-align:right;vertical-align:middle} th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left} .grid td{text-align:center}
img.sample{width:96px;height:96px;image-rendering:pixelated;display:block;margin:auto}
td.prompt{text-align:left;max-width:220px} td.missing{color:#b00;font-style:italic}
.plots{display:flex;flex-wrap:wrap;gap:12px} .plots img{max-width:640px;border:1px solid #eee}
.fail{color:#b00;font-weight:bold} .note{font-size:12px;color:#555}
"""


def build_report(paths: list[Path], title: str = "edgegen report") -> str:
    from edgegen.report import plots
    from edgegen.report.tables import KEY_COLUMNS, key_row

    cases = read_results(paths)
    results = [r for r, _ in cases]
    first = results[0]
    host = first.host
    key_rows = [key_row(r) for r in results]
    figures = [
        ("quality vs latency", plots.tradeoff(results, "ms per image (p50)", lambda r: r.latency.total_p50_ms if r.latency else None)),
        ("quality vs size", plots.tradeoff(results, "model files (KiB)", lambda r: r.size_bytes / 1024 if not r.not_run_reason else None)),
        ("quality vs peak memory", plots.tradeoff(results, "peak memory added (MiB)", lambda r: r.memory.added_mb if r.memory else None)),
        ("latent fidelity per step", plots.latent_psnr_per_step(results)),
        ("where the time goes", plots.latency_breakdown(results)),
    ]
    plot_html = "".join(f"<figure><img alt='{html.escape(name)}' src='{_data_uri(data)}'><figcaption class='note'>{html.escape(name)}</figcaption></figure>" for name, data in figures if data)
    failed = [f"{r.case_id}: {b.name} {b.value} vs {b.limit}" for r in results for b in r.budgets if not b.passed]
    budget_html = (
        "<p class='fail'>Budgets failed: " + html.escape("; ".join(failed)) + "</p>" if failed
        else ("<p>All budgets passed.</p>" if any(r.budgets for r in results) else "")
    )
    generated = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    latency_header = ["case", "text encoder ms x calls", "denoiser ms/call x calls", "calls/step x steps", "decoder ms", "per step ms", "host overhead ms", "total p50 / p90 ms", "cold / warm load ms", "peak +MiB", "size KiB"]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="meta">{len(results)} cases, {len(first.prompts)} prompts, same seeds and initial latents in every case; host {html.escape(host.platform)} {html.escape(host.machine)}, {host.cpu_count} CPUs, {host.threads} thread(s); generated {generated}</p>
<p class="note">Export fidelity compares an exported student with the same student in eager float32; the distillation gap compares any case with the eager teacher. Faithfulness is the fraction of images whose colour, shape and position (read by the probe) match the caption.</p>
{budget_html}
<h2>Key results</h2>
{_table(list(KEY_COLUMNS), key_rows)}
<h2>Images</h2>
{_image_grid(cases)}
<h2>Latency and memory</h2>
{_table(latency_header, _latency_rows(results))}
<p class="note">Per-call p50 over timed images after warm-up; peak memory of a fresh process holding every component while generating.</p>
<h2>Trade-offs</h2>
<div class="plots">{plot_html or '<p>No timed cases to plot.</p>'}</div>
</body></html>
"""


def write_report(paths: list[Path], output: Path, title: str = "edgegen report") -> Path:
    """Write the report atomically: a temporary file renamed over ``output`` when complete."""
    page = build_report(paths, title)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    staging.write_text(page, encoding="utf-8")
    staging.replace(output)
    return output
