"""Tiny pipelines of every family, built in code from diffusers' own fast-test configurations.

One builder per registered family (the conformance suite fails for a family without one). The
configurations follow ``get_dummy_components`` in diffusers' ``tests/pipelines/<family>/``; the
tokenizers are built in code (edgegen's byte-level CLIP vocabulary), so nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path


def stable_diffusion(folder: Path) -> Path:
    """diffusers ``tests/pipelines/stable_diffusion/test_stable_diffusion.py`` get_dummy_components."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from edgegen.embedded.builders import byte_level_vocab

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=32,
        time_cond_proj_dim=None,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=2,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1
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
    vocab = byte_level_vocab()
    start, end = len(vocab) - 2, len(vocab) - 1
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
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77, pad_token="<|endoftext|>")
    pipeline = StableDiffusionPipeline(
        unet=unet,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


# family registry name -> builder of a tiny pipeline folder of that family
DUMMY_PIPELINES = {
    "stable-diffusion": stable_diffusion,
}
