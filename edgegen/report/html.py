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
import os
from pathlib import Path

from edgegen.errors import EdgegenError
from edgegen.schema.pipeline import PipelineResult, read_results_file


def read_results(paths: list[Path]) -> list[tuple[PipelineResult, Path]]:
    """Every case of every file (later files win on a repeated case id), with its folder."""
    if not paths:
        raise EdgegenError("give at least one results file")
    found: dict[str, tuple[PipelineResult, Path]] = {}
    for path in map(Path, paths):
        for result in read_results_file(path):
            _check_images_dir(result, path)
            found[result.case_id] = (result, path.parent)
    if not found:
        raise EdgegenError(f"no results in {', '.join(map(str, paths))}")
    families = {result.pipeline_family for result, _ in found.values()}
    if len(families) > 1:
        raise EdgegenError(f"results of different pipelines mixed ({', '.join(sorted(families))}); report one pipeline family at a time")
    order = {"teacher": 0, "student": 1}
    return sorted(found.values(), key=lambda pair: (order[pair[0].role], pair[0].runtime != "eager", pair[0].case_id))


def _check_images_dir(result: PipelineResult, path: Path) -> None:
    """A results file's images live beside it: an ``images_dir`` leading elsewhere is refused, not embedded."""
    if result.images_dir is None:
        return
    folder = path.parent.resolve()
    if "\x00" in result.images_dir or not (folder / result.images_dir).resolve().is_relative_to(folder):
        raise EdgegenError(f"{path}: case {result.case_id} names images_dir {result.images_dir!r} outside the results file's folder")


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
            if path.is_file() and not path.resolve().is_relative_to(folder.resolve()):
                raise EdgegenError(f"{path} links outside the results file's folder; refusing to embed it")
            if path.is_file():
                cells.append(f"<td><img class='sample' alt='{html.escape(result.case_id)} {index}' src='{_data_uri(path.read_bytes())}'></td>")
            else:
                cells.append("<td class='missing'>missing</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table class='grid'>{header}{''.join(rows)}</table>"


def _latency_table(cases: list[PipelineResult]) -> str:
    """Per-component time per image, for whichever components the cases' family has."""
    components = list(dict.fromkeys(t.component for r in cases if r.latency for t in r.latency.per_component))
    header = ["case", *(f"{name.replace('_', ' ')} ms/call x calls" for name in components), "calls/step x steps", "per step ms",
              "host overhead ms", "total p50 / p90 ms", "cold / warm load ms", "peak +MiB", "size KiB"]
    rows = []
    for r in cases:
        if r.not_run_reason or r.latency is None:
            rows.append([r.case_id, f"not run: {r.not_run_reason}" if r.not_run_reason else "not profiled"] + [""] * (len(header) - 2))
            continue
        lat, timing = r.latency, {t.component: t for t in r.latency.per_component}
        rows.append([
            r.case_id, *(f"{timing[name].p50_ms:.2f} x{timing[name].calls_per_image}" if name in timing else "-" for name in components),
            f"{lat.calls_per_step} x {lat.steps}", f"{lat.per_step_p50_ms:.2f}", f"{lat.host_overhead_p50_ms:.2f}",
            f"{lat.total_p50_ms:.1f} / {lat.total_p90_ms:.1f}", f"{lat.cold_load_ms:.0f} / {lat.warm_load_ms:.0f}",
            f"{r.memory.added_mb:.1f}" if r.memory else "-", f"{r.size_bytes / 1024:.0f}",
        ])
    return _table(header, rows)


def _pareto_section(results: list[PipelineResult]) -> str:
    """The student cases no other beats on latency, memory, size and the plotted quality at once."""
    from edgegen.measure.metric_registry import COSTS, plotted_quality
    from edgegen.report.pareto import pareto_of

    quality = plotted_quality(results)
    front = pareto_of(results, quality.quality)
    if not front.considered:
        return "<p>No timed student cases: no Pareto front.</p>"
    costs = ", ".join(cost.label for cost in COSTS)
    items = "".join(f"<li>{html.escape(case)}</li>" for case in front.front)
    return (
        f"<p>{len(front.front)} of {len(front.considered)} timed student cases are on the Pareto front of {html.escape(costs)} "
        f"against {html.escape(quality.label)}: no other case is at least as good on every axis and better on one.</p>"
        f"<ul class='pareto'>{items}</ul>"
    )


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


def _shipped_section(results: list[PipelineResult]) -> str:
    from edgegen.report.shipped import shipped_configuration, shipped_row, shipped_summary

    shipped = shipped_configuration(results)
    if shipped is None:
        return ""
    row = shipped_row(shipped)
    return f"<h2>Shipped configuration</h2>\n<p>{html.escape(shipped_summary(shipped))}</p>\n{_table(list(row), [list(row.values())])}"


def build_report(paths: list[Path], title: str = "edgegen report") -> str:
    from edgegen.measure.metric_registry import METRICS
    from edgegen.report import plots
    from edgegen.report.tables import key_header, key_metrics, key_row

    cases = read_results(paths)
    results = [r for r, _ in cases]
    first = results[0]
    host = first.host
    metrics = key_metrics(results)
    shipped_html = _shipped_section(results)
    figures = [
        ("quality vs latency", plots.tradeoff(results, METRICS["latency_p50_ms"])),
        ("quality vs size", plots.tradeoff(results, METRICS["size_bytes"])),
        ("quality vs peak memory", plots.tradeoff(results, METRICS["peak_added_mb"])),
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
    numbers = " &nbsp; ".join(f"<b>{index}</b> {html.escape(r.case_id)}" for index, r in enumerate(results, 1))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="meta">{len(results)} cases, {len(first.prompts)} prompts, same seeds and initial latents in every case; host {html.escape(host.platform)} {html.escape(host.machine)}, {host.cpu_count} CPUs, {host.threads} thread(s); generated {generated}</p>
<p class="note">Export fidelity compares an exported student with the same student in eager float32; the distillation gap compares any case with the eager teacher. Faithfulness is the fraction of images whose colour, shape and position (read by the probe) match the caption.</p>
{budget_html}
{shipped_html}
<h2>Key results</h2>
{_table(key_header(metrics), [key_row(r, metrics) for r in results])}
<h2>Images</h2>
{_image_grid(cases)}
<h2>Latency and memory</h2>
{_latency_table(results)}
<p class="note">Per-call p50 over timed images after warm-up; peak memory of a fresh process holding every component while generating.</p>
<h2>Pareto front</h2>
{_pareto_section(results)}
<h2>Trade-offs</h2>
<p class="note">Points are numbered by case: {numbers}. Red points and the step line: the Pareto front of that plot's two axes.</p>
<div class="plots">{plot_html or '<p>No timed cases to plot.</p>'}</div>
</body></html>
"""


def write_report(paths: list[Path], output: Path, title: str = "edgegen report") -> Path:
    """Write the report atomically: a temporary file renamed over ``output`` when complete."""
    output = Path(output)
    if output.is_dir():
        raise EdgegenError(f"{output} is a directory; give the report's file name, e.g. {output / 'report.html'}")
    page = build_report(paths, title)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        staging.write_text(page, encoding="utf-8")
        staging.replace(output)
    except OSError as error:
        raise EdgegenError(f"cannot write the report {output}: {error.strerror or error}") from None
    finally:
        staging.unlink(missing_ok=True)
    return output
