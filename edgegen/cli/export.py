"""``edgegen export``: pipeline components -> artifact folders for one target."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgegen.cli.bounds import MAX_BATCH_SIZE, finite
from edgegen.terminal import console, fmt_db, fmt_kb, print_json, quiet


def export_command(
    pipeline_dir: Annotated[Path, typer.Argument(help="A diffusers pipeline folder (model_index.json inside).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder that receives one artifact folder per component.")],
    target: Annotated[str, typer.Option(help="Export target; `edgegen targets` lists them.")] = "onnx",
    component: Annotated[list[str] | None, typer.Option(help="Component to export (repeatable); default: all. 'pipeline': a few-step student's whole pipeline as one program (token ids and noise in, image out).")] = None,
    backend: Annotated[str | None, typer.Option(help="Delegate backend of the target, e.g. xnnpack.")] = None,
    quantize: Annotated[str, typer.Option(help="Quantization scheme; the target lists what it supports. auto (executorch, tflite): int8 with the layers a sensitivity analysis picks kept float, to meet --min-psnr.")] = "none",
    min_psnr: Annotated[float | None, typer.Option(help="Parity gate in dB (default: the target's, by precision).", callback=finite)] = None,
    batch_size: Annotated[int, typer.Option(help=f"Static batch size of the exported components (1..{MAX_BATCH_SIZE}: shapes are static and memory grows with the batch).", min=1, max=MAX_BATCH_SIZE)] = 1,
    lora: Annotated[list[Path] | None, typer.Option(help="A LoRA adapter (.safetensors) to fuse before export (repeatable).")] = None,
    lora_scale: Annotated[list[float] | None, typer.Option(help="Scale of each --lora, in order (default 1.0 each).")] = None,
    variant: Annotated[str | None, typer.Option(help="Weight variant to load, e.g. fp16 (diffusion_pytorch_model.fp16.safetensors).")] = None,
    dtype: Annotated[str, typer.Option(help="Load the weights as float32 or float16 (diffusers' torch_dtype); float16 halves the weights' memory while converting and the artifact computes in float16.")] = "float32",
    separate_weights: Annotated[bool | None, typer.Option("--separate-weights/--embedded-weights", help="Weights in a file beside the model (ExecuTorch .ptd, ONNX external data); default: only above 1 GiB of weights.", show_default=False)] = None,
    memory_check: Annotated[bool, typer.Option("--memory-check/--no-memory-check", help="Refuse an export whose estimated peak memory exceeds what is available.")] = True,
    steps: Annotated[int | None, typer.Option(help="--component pipeline: unroll the first STEPS timesteps of the student's schedule (default: all).", min=1)] = None,
    guidance_scale: Annotated[float, typer.Option(help="--component pipeline: classifier-free guidance inside the program; 1 turns it off.", min=0, callback=finite)] = 1.0,
    min_faithfulness: Annotated[float | None, typer.Option(help="--quantize auto: also keep this share (0-1] of the float pipeline's caption faithfulness, measured with --probe on its captions.", callback=finite, show_default=False)] = None,
    probe: Annotated[Path | None, typer.Option(help="--min-faithfulness: the caption probe folder (`edgegen probe`).", show_default=False)] = None,
    force: Annotated[bool, typer.Option(help="Replace existing artifact folders.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the manifests as JSON.")] = False,
) -> None:
    """Export pipeline components to TARGET, check parity against eager, write artifact folders."""
    quiet()
    from edgegen.exporting.orchestration import ExportOptions, export_pipeline
    from edgegen.families.adapters import lora_requests
    from edgegen.families.loading import LoadOptions

    load = LoadOptions(variant=variant, loras=lora_requests(lora, lora_scale), dtype=dtype)
    budget = None
    if min_faithfulness is not None or probe is not None:
        from edgegen.errors import EdgegenError
        from edgegen.measure.faithfulness_budget import FaithfulnessBudget

        if min_faithfulness is None or probe is None:
            raise EdgegenError("a faithfulness budget takes both --min-faithfulness SHARE and --probe DIR")
        budget = FaithfulnessBudget(probe_dir=probe, min_share=min_faithfulness)
    options = ExportOptions(
        backend=backend, quantize=quantize, min_psnr_db=min_psnr, batch_size=batch_size, load=load, check_memory=memory_check,
        separate_weights=separate_weights, pipeline_steps=steps, guidance_scale=guidance_scale, faithfulness=budget,
    )
    with console.status(f"exporting to {target}..."):
        artifacts = export_pipeline(pipeline_dir, target, output, component, options, force)
    if json_output:
        print_json([a.manifest.model_dump(mode="json") for a in artifacts])
        return
    for artifact in artifacts:
        parity = artifact.manifest.parity
        gate = f"PSNR {fmt_db(parity.psnr_db)} dB" if parity.measured else parity.reason
        console.print(f"wrote {artifact.folder} ({fmt_kb(artifact.size_bytes)} KiB, {gate})")
