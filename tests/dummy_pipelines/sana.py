"""A tiny Sana pipeline (diffusers' tests/pipelines/sana/test_sana.py get_dummy_components), with a
Gemma tokenizer built offline whose words include the pipeline's complex human instruction."""

from __future__ import annotations

from pathlib import Path

FAMILY = "sana"


def build(folder: Path) -> Path:
    import torch
    from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaPipeline, SanaTransformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    from edgegen.families.prompts import CALIBRATION_PROMPTS, DEFAULT_PROMPT
    from edgegen.families.sana import pipeline_defaults
    from tests.dummy_pipelines.tokenizers import gemma_tokenizer, vocabulary_size

    torch.manual_seed(0)
    transformer = SanaTransformer2DModel(
        patch_size=1, in_channels=4, out_channels=4, num_layers=1, num_attention_heads=2, attention_head_dim=4,
        num_cross_attention_heads=2, cross_attention_head_dim=4, cross_attention_dim=8, caption_channels=8, sample_size=32,
    )
    torch.manual_seed(0)
    vae = AutoencoderDC(
        in_channels=3, latent_channels=4, attention_head_dim=2,
        encoder_block_types=("ResBlock", "EfficientViTBlock"), decoder_block_types=("ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
        encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
        encoder_layers_per_block=(1, 1), decoder_layers_per_block=[1, 1],
        downsample_block_type="conv", upsample_block_type="interpolate", decoder_norm_types="rms_norm", decoder_act_fns="silu",
        scaling_factor=0.41407,
    )
    _, instruction = pipeline_defaults()
    tokenizer = gemma_tokenizer((instruction, DEFAULT_PROMPT, *CALIBRATION_PROMPTS))
    torch.manual_seed(0)
    text_encoder = Gemma2Model(
        Gemma2Config(
            head_dim=16, hidden_size=8, initializer_range=0.02, intermediate_size=64, max_position_embeddings=8192,
            model_type="gemma2", num_attention_heads=2, num_hidden_layers=1, num_key_value_heads=2,
            vocab_size=vocabulary_size(tokenizer), attn_implementation="eager",
        )
    )
    pipeline = SanaPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder
