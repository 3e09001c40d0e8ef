"""A tiny SDXL pipeline (diffusers' test_stable_diffusion_xl.py get_dummy_components).

The two CLIP text encoders share diffusers' tiny config built in code; both tokenizers are the
offline byte-level CLIP tokenizer, and the config's special-token ids are that tokenizer's. The
UNet has one resnet and one transformer layer per block where diffusers has two (and (1, 2)):
the same SDXL conditioning and op types, at less than half the export time on every target.
"""

from __future__ import annotations

from pathlib import Path


FAMILY = "stable-diffusion-xl"


def build(folder: Path) -> Path:
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from tests.dummy_pipelines.tokenizers import clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(2, 4),
        layers_per_block=1,
        time_cond_proj_dim=None,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=80,  # 6 time ids x 8 + the pooled projection's 32
        cross_attention_dim=64,  # the two encoders' 32 + 32 features
        norm_num_groups=1,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, steps_offset=1, beta_schedule="scaled_linear", timestep_spacing="leading"
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=128,
    )
    tokenizer, tokenizer_2 = clip_tokenizer(), clip_tokenizer()
    start, end = tokenizer.bos_token_id, tokenizer.eos_token_id
    torch.manual_seed(0)
    text_encoder_config = CLIPTextConfig(
        bos_token_id=start,
        eos_token_id=end,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        pad_token_id=end,
        vocab_size=1000,
        hidden_act="gelu",
        projection_dim=32,
    )
    text_encoder = CLIPTextModel(text_encoder_config)
    text_encoder_2 = CLIPTextModelWithProjection(text_encoder_config)
    pipeline = StableDiffusionXLPipeline(
        unet=unet,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        image_encoder=None,
        feature_extractor=None,
        add_watermarker=False,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder
