"""``edgegen inspect``: what an artifact is, where it came from, and what its delegate took."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgegen.terminal import console, fmt_db, fmt_kb, print_json


def inspect_command(
    artifact_dir: Annotated[Path, typer.Argument(help="An artifact folder written by `edgegen export`.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Show ARTIFACT_DIR's manifest: I/O specs, quantization, parity and the delegation report."""
    from edgegen.artifact import load_artifact

    artifact = load_artifact(artifact_dir)
    manifest = artifact.manifest
    if json_output:
        print_json(manifest.model_dump(mode="json"))
        return
    backend = f" ({manifest.backend})" if manifest.backend else ""
    console.print(f"[bold]{manifest.component}[/] for {manifest.target}{backend}, {fmt_kb(artifact.size_bytes)} KiB, quantization {manifest.quantization.scheme}")
    if manifest.source.dtype != "float32":
        console.print(f"loaded and computed in {manifest.source.dtype}")
    if manifest.weight_files:
        console.print(f"weights beside the model in {', '.join(manifest.weight_files)}")
    io = Table("", "name", "shape", "dtype", "eager dtype", title="inputs and outputs as converted")
    eager = {s.name: s.dtype for s in manifest.eager_inputs + manifest.eager_outputs}
    for kind, specs in (("in", manifest.inputs), ("out", manifest.outputs)):
        for spec in specs:
            io.add_row(kind, spec.name, str(tuple(spec.shape)), spec.dtype, eager.get(spec.name, "?"))
    console.print(io)
    parity = manifest.parity
    if parity.measured:
        console.print(f"parity vs eager on {parity.runtime}: PSNR {fmt_db(parity.psnr_db)} dB (gate {parity.min_psnr_db:.0f}), max abs error {parity.max_abs_error:.3g}")
        if parity.vs_fake_quant is not None:
            trained_as = parity.vs_fake_quant
            console.print(f"parity vs the QAT fake-quant model: PSNR {fmt_db(trained_as.psnr_db)} dB, max abs error {trained_as.max_abs_error:.3g}")
    else:
        console.print(f"parity vs eager: {parity.reason}")
    delegation = manifest.delegation
    if delegation:
        console.print(
            f"delegation ({delegation.backend}): {delegation.delegated_nodes}/{delegation.total_nodes} nodes "
            f"({delegation.delegated_fraction:.0%}) in {delegation.delegate_subgraphs} delegate subgraph(s)"
        )
        if delegation.fallback_ops:
            fallback = Table("op left outside the delegate", "nodes", "why (the partitioner's words)")
            for op, count in delegation.fallback_ops.items():
                fallback.add_row(op, str(count), delegation.fallback_reasons.get(op, "not recorded"))
            console.print(fallback)
