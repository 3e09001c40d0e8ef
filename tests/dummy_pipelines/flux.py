"""A tiny Flux pipeline (diffusers' tests/pipelines/flux/test_pipeline_flux.py get_dummy_components),
with the T5 encoder built from a config of hf-internal-testing/tiny-random-t5's size, offline."""

from __future__ import annotations

from pathlib import Path

FAMILY = "flux"


def build(folder: Path, guidance_embeds: bool = True) -> Path:
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from tests.dummy_pipelines.tokenizers import clip_tokenizer, t5_tokenizer, vocabulary_size

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=guidance_embeds,
    )
    tokenizer = clip_tokenizer()
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, hidden_size=32, intermediate_size=37,
            layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=5, pad_token_id=tokenizer.eos_token_id,
            vocab_size=1000, hidden_act="gelu", projection_dim=32,
        )
    )
    tokenizer_2 = t5_tokenizer(max_length=32)
    torch.manual_seed(0)
    text_encoder_2 = T5EncoderModel(
        T5Config(d_model=32, d_ff=37, d_kv=8, num_heads=4, num_layers=5, vocab_size=vocabulary_size(tokenizer_2), relative_attention_num_buckets=8)
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1, latent_channels=1,
        norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
    )
    pipeline = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer, vae=vae,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder
