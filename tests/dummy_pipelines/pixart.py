"""A tiny PixArt-alpha pipeline (diffusers' tests/pipelines/pixart_alpha/test_pixart.py get_dummy_components).

diffusers' test loads "hf-internal-testing/tiny-random-t5"; here the T5 encoder is built from a
config of that size and the tokenizer is the offline T5 tokenizer. ``build(folder, "PixArtSigmaPipeline")``
builds the same components as a PixArt-Sigma pipeline (its fast test uses identical ones).
"""

from __future__ import annotations

from pathlib import Path

FAMILY = "pixart"


def build(folder: Path, pipeline_class: str = "PixArtAlphaPipeline") -> Path:
    import diffusers
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    from tests.dummy_pipelines.tokenizers import t5_tokenizer, vocabulary_size

    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel(
        sample_size=8,
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=3,
        caption_channels=32,
        in_channels=4,
        cross_attention_dim=24,
        out_channels=8,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    torch.manual_seed(0)
    vae = AutoencoderKL()
    scheduler = DDIMScheduler()
    tokenizer = t5_tokenizer()
    torch.manual_seed(0)
    text_encoder = T5EncoderModel(
        T5Config(
            d_model=32,
            d_ff=37,
            d_kv=8,
            num_heads=4,
            num_layers=5,
            relative_attention_num_buckets=8,
            vocab_size=vocabulary_size(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    pipeline = getattr(diffusers, pipeline_class)(
        transformer=transformer.eval(), vae=vae.eval(), scheduler=scheduler, text_encoder=text_encoder.eval(), tokenizer=tokenizer
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder
