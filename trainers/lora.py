"""LoRA-MMG: low-rank adapters (peft) on a teacher's attention, and optionally its convolutions.

Only the adapters train; the base weights stay frozen, so checkpoints hold the adapters alone.
The output is both forms: the adapter in diffusers' LoRA format (``OUTPUT/adapter/``, loadable
with ``pipeline.load_lora_weights``) and ``OUTPUT/pipeline/``, the teacher with that adapter
loaded through diffusers and fused into its weights, ready for ``edgegen export``.

    edgegen train lora teacher=path/to/pipeline output=out/lora steps=200 rank=8
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from edgegen.trainers.config import TrainConfig
from edgegen.trainers.loop import Context, Recipe, Trainee, make_optimizer, optimise, warmup_cosine

ATTENTION_PROJECTIONS = ["to_q", "to_k", "to_v", "to_out.0"]
CONVOLUTIONS = ["conv1", "conv2"]
ADAPTER_DIR = "adapter"


class LoraConfig(TrainConfig):
    teacher: Path
    learning_rate: float = Field(1e-3, gt=0)
    rank: int = Field(4, gt=0)
    alpha: float = Field(4.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_convs: bool = False


def target_modules(config: LoraConfig) -> list[str]:
    return ATTENTION_PROJECTIONS + (CONVOLUTIONS if config.target_convs else [])


def adapter_parameters(unet: Any) -> Any:
    """The LoRA layers as one module, so checkpoints and the optimizer see only them."""
    import torch

    layers = {name.replace(".", "/"): module for name, module in unet.named_modules() if name.endswith(("lora_A", "lora_B"))}
    return torch.nn.ModuleDict(layers)


def save_adapter(unet: Any, folder: Path) -> None:
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers, safe_serialization=True)


def merged_pipeline(teacher_dir: Path, adapter_dir: Path) -> Any:
    """The teacher with the saved adapter loaded through diffusers and fused into its weights."""
    from edgegen.families.loading import load_pipeline

    pipeline = load_pipeline(teacher_dir)
    pipeline.load_lora_weights(str(adapter_dir))
    pipeline.fuse_lora()
    pipeline.unload_lora_weights()
    return pipeline


def prepare(config: LoraConfig, context: Context) -> Trainee:
    from peft import LoraConfig as PeftLoraConfig

    from edgegen.families import networks_of
    from edgegen.families.loading import load_pipeline
    from edgegen.trainers.finetune import denoising_step
    from edgegen.trainers.outputs import save_trained_pipeline

    pipeline = load_pipeline(config.teacher)
    nets = networks_of(config.teacher, pipeline)
    unet = nets.denoiser
    for module in nets.all():
        module.requires_grad_(False).eval()
    unet.add_adapter(
        PeftLoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout, init_lora_weights="gaussian", target_modules=target_modules(config))
    )
    adapters = adapter_parameters(unet)
    adapters.requires_grad_(True)
    optimizer = make_optimizer(list(adapters.parameters()), config)
    schedule = warmup_cosine(optimizer, config)

    def step(batch: dict[str, Any], index: int, ctx: Context) -> dict[str, float]:
        unet.train()
        loss = denoising_step(pipeline, nets, batch, index, ctx, config.caption_dropout)
        optimise(optimizer, loss, [adapters], ctx)
        return {"loss": loss.item()}

    def save(folder: Path, summary: dict[str, Any]) -> None:
        from edgegen.artifact import atomic_folder

        unet.eval()
        adapter_dir = Path(config.output) / ADAPTER_DIR
        with atomic_folder(adapter_dir, force=True) as staging:
            save_adapter(unet, staging)
        details = {"adapter_dir": str(adapter_dir.resolve()), "targets": target_modules(config), "rank": config.rank, "alpha": config.alpha}
        save_trained_pipeline(merged_pipeline(config.teacher, adapter_dir), config.teacher, folder, summary, {**details, "merged": True})

    trainable = sum(p.numel() for p in adapters.parameters())
    base = sum(p.numel() for m in nets.all() for p in m.parameters()) - trainable
    unet_base = sum(p.numel() for p in unet.parameters()) - trainable
    return Trainee(
        modules={"adapters": adapters},
        optimizers={"adapters": optimizer},
        schedulers={"adapters": schedule},
        step=step,
        save=save,
        summary={"trainable_parameters": trainable, "total_parameters": base, "trainable_fraction": trainable / base, "trainable_fraction_of_unet": trainable / unet_base},
    )


RECIPE = Recipe("lora", LoraConfig, prepare, "LoRA-MMG: peft adapters on the attention (and optionally conv) projections")
