"""Real-size denoisers with random weights: export time, peak RAM, size, latency vs eager, delegation.

    python benchmarks/scale.py [--model sd15-unet ...] [--target onnx ...] [--precision float|float16|int8] [--work DIR] [--runs 3]
                               [--no-memory-check] [--no-latency]

Users' models are 0.6-12 B parameters; the hub is not reachable here, so each model is its real
configuration with random weights, saved once as a diffusers pipeline folder under --work. Only
the denoiser is measured (the text encoders in these folders are one-layer stand-ins of the
real widths, there to give the denoiser its conditioning shapes). Each export runs as
`edgegen export --component denoiser` in its own process, whose peak resident memory (with its
children) is sampled every 0.2 s. Latency is the artifact's median per call against the eager
denoiser in the same process, interleaved (one thread each); artifacts this host cannot run
(Core ML off macOS) get size and delegation only. Prints a table, then the JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _common import emit, fmt  # the benchmarks' shared helper, beside this script

ROOT = Path(__file__).resolve().parents[1]


def _clip(hidden: int, projection: int | None = None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from tests.dummy_pipelines.tokenizers import clip_tokenizer

    tokenizer = clip_tokenizer()
    config = CLIPTextConfig(
        hidden_size=hidden, intermediate_size=hidden, num_attention_heads=max(1, hidden // 64), num_hidden_layers=1,
        vocab_size=1000, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id, projection_dim=projection or hidden,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config), tokenizer


def _t5(width: int, max_length: int):
    from transformers import T5Config, T5EncoderModel

    from tests.dummy_pipelines.tokenizers import t5_tokenizer, vocabulary_size

    tokenizer = t5_tokenizer(max_length=max_length)
    config = T5Config(d_model=width, d_ff=width, d_kv=64, num_heads=width // 64, num_layers=1, vocab_size=vocabulary_size(tokenizer))
    return T5EncoderModel(config), tokenizer


def _vae(latent_channels: int, shift: float | None = None):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[8, 8], latent_channels=latent_channels, norm_num_groups=2, sample_size=64,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        shift_factor=shift, scaling_factor=0.18215,
    )


def sd15_unet():
    """Stable Diffusion 1.5's UNet (860 M)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
        cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",), up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    encoder, tokenizer = _clip(768)
    return StableDiffusionPipeline(
        unet=unet, vae=_vae(4), text_encoder=encoder, tokenizer=tokenizer, scheduler=DDIMScheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def pixart_sigma():
    """PixArt-Sigma's transformer (600 M), 1024 px."""
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    transformer = PixArtTransformer2DModel(
        sample_size=128, patch_size=2, in_channels=4, out_channels=8, num_layers=28, num_attention_heads=16,
        attention_head_dim=72, cross_attention_dim=1152, caption_channels=4096, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, use_additional_conditions=False, interpolation_scale=2,
    )
    encoder, tokenizer = _t5(4096, 300)
    return PixArtSigmaPipeline(tokenizer=tokenizer, text_encoder=encoder, vae=_vae(4), transformer=transformer, scheduler=DPMSolverMultistepScheduler())


def sdxl_unet():
    """SDXL's UNet (2.6 B)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
        addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
        use_linear_projection=True,
    )
    encoder, tokenizer = _clip(768)
    encoder_2, tokenizer_2 = _clip(1280, projection=1280)
    return StableDiffusionXLPipeline(
        unet=unet, vae=_vae(4), text_encoder=encoder, tokenizer=tokenizer, text_encoder_2=encoder_2, tokenizer_2=tokenizer_2,
        scheduler=EulerDiscreteScheduler(),
    )


def sd3_medium():
    """Stable Diffusion 3 medium's MMDiT (2 B)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    transformer = SD3Transformer2DModel(
        sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
        joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192,
    )
    encoder, tokenizer = _clip(768, projection=768)
    encoder_2, tokenizer_2 = _clip(1280, projection=1280)
    encoder_3, tokenizer_3 = _t5(4096, 256)
    return StableDiffusion3Pipeline(
        transformer=transformer, vae=_vae(16, shift=0.0609), scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        text_encoder=encoder, tokenizer=tokenizer, text_encoder_2=encoder_2, tokenizer_2=tokenizer_2,
        text_encoder_3=encoder_3, tokenizer_3=tokenizer_3,
    )


MODELS = {"sd15-unet": sd15_unet, "pixart-sigma": pixart_sigma, "sdxl-unet": sdxl_unet, "sd3-medium": sd3_medium}


def pipeline_folder(model: str, work: Path) -> Path:
    import torch

    folder = work / model
    if not (folder / "model_index.json").is_file():
        torch.manual_seed(0)
        MODELS[model]().save_pretrained(folder, safe_serialization=True)
    return folder


def export_measured(folder: Path, target: str, precision: str, out: Path, scheme: str | None, memory_check: bool = True) -> dict:
    """`edgegen export` of the denoiser in its own process: wall time, peak RSS (with children), outcome."""
    import psutil

    command = [sys.executable, "-m", "edgegen.cli", "export", str(folder), "-o", str(out), "--target", target,
               "--component", "denoiser", "--force"] + (["--quantize", scheme] if precision == "int8" and scheme else [])
    if precision == "float16":
        command += ["--dtype", "float16"]
    if not memory_check:
        command.append("--no-memory-check")
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    watched, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        try:
            peak = max(peak, sum(p.memory_info().rss for p in [watched, *watched.children(recursive=True)]))
        except psutil.Error:
            pass
        time.sleep(0.2)
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - start
    message = (stderr.strip().splitlines() or stdout.strip().splitlines() or [""])[-1]
    return {"export_s": round(seconds, 1), "peak_ram_gib": round(peak / 2**30, 2), "ok": process.returncode == 0, "message": message[:300]}


def latency_vs_eager(folder: Path, artifact_dir: Path, runs: int, dtype: str) -> dict:
    import torch

    from edgegen.artifact import load_artifact
    from edgegen.families import family_of
    from edgegen.families.loading import LoadOptions, load_pipeline
    from edgegen.measure.profiling import interleaved_medians
    from edgegen.session import open_artifact

    torch.set_num_threads(1)
    artifact = load_artifact(artifact_dir)
    session = open_artifact(artifact, threads=1)
    # Eager in the dtype the artifact was loaded in: the float16 model against its own artifact.
    component = family_of(folder).build_component(load_pipeline(folder, LoadOptions(dtype=dtype)), "denoiser")
    inputs = {name: tensor.numpy() for name, tensor in component.reference_inputs.items()}
    medians = interleaved_medians({"artifact": lambda: session.run(inputs), "eager": component.run_eager}, runs=runs, warmup=1, rounds=runs)
    return {"artifact_ms": round(medians["artifact"], 1), "eager_ms": round(medians["eager"], 1), "ratio": round(medians["artifact"] / medians["eager"], 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", choices=list(MODELS), help="repeatable; default: all")
    parser.add_argument("--target", action="append", help="repeatable; default: every exportable target")
    parser.add_argument("--precision", action="append", choices=["float", "float16", "int8"], help="repeatable; default: float")
    parser.add_argument("--work", type=Path, default=Path("out/scale"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-memory-check", action="store_true", help="try exports the memory check would refuse (to measure them)")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency step (it holds the eager model beside the session)")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))  # tests.dummy_pipelines.tokenizers: the offline tokenizers
    from edgegen.artifact import load_artifact
    from edgegen.exporting.targets import exportable_targets, int8_scheme
    from edgegen.session import runtime_for
    from edgegen.terminal import quiet

    quiet()
    rows, results = [], []
    for model in args.model or list(MODELS):
        folder = pipeline_folder(model, args.work / "pipelines")
        parameters = sum(p.stat().st_size for p in (folder / _denoiser_subfolder(folder)).glob("*.safetensors")) / 4
        for target in args.target or exportable_targets():
            for precision in args.precision or ["float"]:
                out = args.work / "artifacts" / model / f"{target}-{precision}"
                result = {"model": model, "parameters_b": round(parameters / 1e9, 2), "target": target, "precision": precision}
                scheme = int8_scheme(target)
                if precision == "int8" and scheme is None:
                    continue
                result.update(export_measured(folder, target, precision, out, scheme, not args.no_memory_check))
                if result["ok"]:
                    artifact_dir = next(p for p in out.iterdir() if (p / "manifest.json").is_file())
                    manifest = load_artifact(artifact_dir).manifest
                    result["size_gib"] = round(sum(f.bytes for f in manifest.files) / 2**30, 2)
                    result["delegated"] = manifest.delegation.delegated_fraction if manifest.delegation else None
                    result["fallback_ops"] = manifest.delegation.fallback_ops if manifest.delegation else {}
                    if not args.no_latency and runtime_for(manifest).unavailable_reason(manifest) is None:
                        result.update(latency_vs_eager(folder, artifact_dir, args.runs, manifest.source.dtype))
                results.append(result)
                with (args.work / "scale.jsonl").open("a") as log:  # each row as it lands: a crash loses none
                    log.write(json.dumps(result) + "\n")
                rows.append([
                    model, f"{result['parameters_b']:.2f}", target, precision, "yes" if result["ok"] else result["message"][:60],
                    fmt(result.get("export_s"), "{:.0f}"), fmt(result.get("peak_ram_gib"), "{:.1f}"), fmt(result.get("size_gib"), "{:.2f}"),
                    fmt(result.get("artifact_ms"), "{:.0f}"), fmt(result.get("eager_ms"), "{:.0f}"), fmt(result.get("ratio"), "{:.2f}"),
                    fmt(result.get("delegated"), "{:.0%}"),
                ])
    header = ["model", "B params", "target", "precision", "exported", "export s", "peak GiB", "size GiB", "artifact ms", "eager ms", "ratio", "delegated"]
    emit("Real-size denoisers, random weights (one thread)", header, rows, results, args.work / "scale.json")
    return 0 if all(result["ok"] for result in results) else 1


def _denoiser_subfolder(folder: Path) -> str:
    index = json.loads((folder / "model_index.json").read_text())
    return "unet" if "unet" in index else "transformer"


if __name__ == "__main__":
    sys.exit(main())
