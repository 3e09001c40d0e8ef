"""Compact UNet students made from a teacher's config, initialised from the teacher's weights.

Block removal follows BK-SDM: fewer resnet/attention layers per stage (the first ones kept, so
their teacher weights carry over by name) and, for the smallest presets, no mid-block; narrower
presets also scale the channel widths, and those tensors start from the leading slice of the
teacher's. Cross-attention is SCMAN (token reduction of the conditioning sequence) so its cost is
fixed by a budget, not the prompt length. Everything keeps static shapes.

A student is saved as a complete diffusers pipeline folder (the teacher's text encoder, VAE,
tokenizer and scheduler beside the student UNet), so every exporter and runtime takes it as
they take a teacher; ``edgegen_student.json`` records what diffusers' config cannot (SCMAN).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgegen.errors import EdgegenError


@dataclass(frozen=True)
class Preset:
    width: float  # channel multiplier on block_out_channels
    layers_per_block: int  # at most; never more than the teacher's
    keep_mid_block: bool
    summary_tokens: int  # SCMAN budget for the conditioning sequence


PRESETS = {
    "base": Preset(width=1.0, layers_per_block=1, keep_mid_block=False, summary_tokens=8),
    "small": Preset(width=0.75, layers_per_block=1, keep_mid_block=False, summary_tokens=4),
    "tiny": Preset(width=0.5, layers_per_block=1, keep_mid_block=False, summary_tokens=4),
}


def _round_channels(channels: float, multiple: int) -> int:
    return max(multiple, int(round(channels / multiple)) * multiple)


def student_unet_config(teacher_config: dict[str, Any], preset: Preset, attention_heads: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The student's UNet2DConditionModel config, and a summary of what changed. With
    ``attention_heads``, every attention layer has that many heads (the weights keep their
    shapes): one or two wide heads run faster than many narrow ones on mobile CPU kernels."""
    config = {k: v for k, v in teacher_config.items() if not k.startswith("_")}
    if config.get("addition_embed_type"):
        raise EdgegenError(f"students of UNets with added {config['addition_embed_type']} conditioning (SDXL-style) are not supported yet")
    if config.get("class_embed_type"):
        raise EdgegenError(f"students of UNets with {config['class_embed_type']} class embeddings (AudioLDM-style) are not supported yet")
    # diffusers' SD configs name the head count attention_head_dim (num_attention_heads unset).
    heads_key = "num_attention_heads" if config.get("num_attention_heads") else "attention_head_dim"
    teacher_heads = config.get(heads_key) or 8
    heads = attention_heads or (teacher_heads if isinstance(teacher_heads, int) else max(teacher_heads))
    if attention_heads is not None and attention_heads < 1:
        raise EdgegenError(f"--attention-heads must be at least 1, not {attention_heads}")
    groups = config.get("norm_num_groups") or 32
    multiple = math.lcm(groups, heads)
    teacher_channels = list(config["block_out_channels"])
    channels = [_round_channels(c * preset.width, multiple) for c in teacher_channels]
    teacher_layers = config["layers_per_block"]
    teacher_layers = teacher_layers if isinstance(teacher_layers, int) else max(teacher_layers)
    layers = max(1, min(preset.layers_per_block, teacher_layers))
    config.update(block_out_channels=channels, layers_per_block=layers)
    if not preset.keep_mid_block:
        config["mid_block_type"] = None
    changes = {
        "block_out_channels": [teacher_channels, channels],
        "layers_per_block": [teacher_layers, layers],
        "mid_block": [True, preset.keep_mid_block],
    }
    if attention_heads is not None:
        config[heads_key] = attention_heads
        changes["attention_heads"] = [teacher_heads, attention_heads]
    return config, changes


def initialise_from_teacher(student: Any, teacher: Any) -> dict[str, int]:
    """Copy every teacher tensor whose name matches: whole if shapes agree, else its leading slice."""
    import torch

    teacher_state = teacher.state_dict()
    counts = {"copied": 0, "sliced": 0, "random": 0}
    with torch.no_grad():
        for name, tensor in student.state_dict().items():
            source = teacher_state.get(name)
            if source is None or source.dim() != tensor.dim() or any(s < t for s, t in zip(source.shape, tensor.shape)):
                counts["random"] += 1
                continue
            if source.shape == tensor.shape:
                tensor.copy_(source)
                counts["copied"] += 1
            else:
                tensor.copy_(source[tuple(slice(0, size) for size in tensor.shape)])
                counts["sliced"] += 1
    return counts


def parameter_count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def make_student(teacher_dir: Path, preset_name: str, output_dir: Path, force: bool = False, seed: int = 0, attention_heads: int | None = None) -> Path:
    """Build a student of the teacher pipeline at ``teacher_dir`` and save it to ``output_dir``."""
    import torch
    from diffusers import UNet2DConditionModel

    from edgegen.artifact import atomic_folder
    from edgegen.models.checkpoint import write_student
    from edgegen.models.scman import SCMANConfig, install_scman
    from edgegen.schema.checkpoint import Initialisation, StudentManifest
    from edgegen.families.loading import checkpoint_sha256, load_pipeline
    from edgegen.versions import edgegen_version

    if preset_name not in PRESETS:
        raise EdgegenError(f"unknown preset '{preset_name}'; choose one of: {', '.join(PRESETS)}")
    preset = PRESETS[preset_name]
    pipeline = load_pipeline(teacher_dir)
    teacher_unet = getattr(pipeline, "unet", None)
    if not isinstance(teacher_unet, UNet2DConditionModel):
        raise EdgegenError(f"the teacher at {teacher_dir} has no UNet2DConditionModel denoiser to make a student of")
    config, changes = student_unet_config(dict(teacher_unet.config), preset, attention_heads)
    torch.manual_seed(seed)
    student_unet = UNet2DConditionModel.from_config(config).eval()
    teacher_parameters, student_parameters = parameter_count(teacher_unet), parameter_count(student_unet)
    if student_parameters > teacher_parameters:
        # Channels round up to multiples of the GroupNorm groups and heads: on a narrow teacher
        # that can outweigh the removed blocks.
        raise EdgegenError(
            f"preset '{preset_name}' would make a UNet of {student_parameters:,} parameters, more than the teacher's {teacher_parameters:,} "
            f"(channels {config['block_out_channels']} against {list(teacher_unet.config.block_out_channels)}); choose a smaller preset"
        )
    initialisation = initialise_from_teacher(student_unet, teacher_unet)
    context_length = pipeline.tokenizer.model_max_length
    summary_tokens = min(preset.summary_tokens, context_length)
    while context_length % summary_tokens:
        summary_tokens -= 1  # pooled summaries need a divisor of the prompt length
    scman = SCMANConfig(mode="sparse", summary_tokens=summary_tokens, context_length=context_length)
    install_scman(student_unet, scman)
    manifest = StudentManifest(
        edgegen_version=edgegen_version(),
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        preset=preset_name,
        teacher_dir=str(Path(teacher_dir).resolve()),
        teacher_unet_sha256=checkpoint_sha256(teacher_dir, "unet"),
        teacher_parameters=teacher_parameters,
        student_parameters=student_parameters,
        architecture=changes,
        scman=scman.to_dict(),
        initialisation=Initialisation(**initialisation),
    )
    pipeline.unet = student_unet
    pipeline.register_modules(unet=student_unet)
    with atomic_folder(Path(output_dir), force=force) as staging:
        write_student(pipeline, manifest, staging)
    return Path(output_dir)
