"""A tiny Stable Diffusion 1.x/2.x pipeline (diffusers' test_stable_diffusion.py get_dummy_components)."""

from __future__ import annotations

from pathlib import Path

FAMILY = "stable-diffusion"


def build(folder: Path) -> Path:
    from diffusers import StableDiffusionPipeline

    StableDiffusionPipeline(**components()).save_pretrained(folder, safe_serialization=True)
    return folder


def components(time_cond_proj_dim: int | None = None, scheduler_class: str = "DDIMScheduler") -> dict:
    """The fast-test components (an LCM UNet with ``time_cond_proj_dim``, as diffusers' LCM tests)."""
    import diffusers
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from tests.dummy_pipelines.tokenizers import clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=32,
        time_cond_proj_dim=time_cond_proj_dim,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=2,
    )
    options = {"steps_offset": 1} if scheduler_class == "DDIMScheduler" else {}
    scheduler = getattr(diffusers, scheduler_class)(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, **options
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=2,
    )
    tokenizer = clip_tokenizer()
    start, end = tokenizer.bos_token_id, tokenizer.eos_token_id
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=start,
            eos_token_id=end,
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=5,
            pad_token_id=end,
            vocab_size=1000,
        )
    )
    return {
        "unet": unet,
        "scheduler": scheduler,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
        "requires_safety_checker": False,
    }
