"""A tiny Stable Diffusion 3 pipeline (diffusers' test_pipeline_stable_diffusion_3.py get_dummy_components).

diffusers' test loads "hf-internal-testing/tiny-random-t5"; here a T5 encoder of that size is
built in code, with the offline tokenizers. ``with_t5=False`` leaves text_encoder_3 and
tokenizer_3 out, as SD3 folders without the T5 encoder do (the pipeline then feeds zeros);
``transformer_options`` change the transformer's config (SD3.5's ``qk_norm="rms_norm"`` and
``dual_attention_layers``).
"""

from __future__ import annotations

from pathlib import Path

FAMILY = "stable-diffusion-3"


def build(folder: Path, with_t5: bool = True, **transformer_options) -> Path:
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from tests.dummy_pipelines.tokenizers import clip_tokenizer, t5_tokenizer, vocabulary_size

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=32,
        patch_size=1,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=32,
        pooled_projection_dim=64,
        out_channels=4,
        **transformer_options,
    )
    tokenizer = clip_tokenizer()
    # diffusers' config with the token ids of the offline tokenizer (its vocabulary is byte-level).
    clip_config = CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        pad_token_id=tokenizer.pad_token_id,
        vocab_size=1000,
        hidden_act="gelu",
        projection_dim=32,
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModelWithProjection(clip_config)
    torch.manual_seed(0)
    text_encoder_2 = CLIPTextModelWithProjection(clip_config)
    text_encoder_3 = tokenizer_3 = None
    if with_t5:
        tokenizer_3 = t5_tokenizer()
        # The size of hf-internal-testing/tiny-random-t5.
        t5_config = T5Config(
            d_model=32, d_ff=37, d_kv=8, num_heads=4, num_layers=5, relative_attention_num_buckets=8,
            vocab_size=max(1000, vocabulary_size(tokenizer_3)), pad_token_id=tokenizer_3.pad_token_id,
            eos_token_id=tokenizer_3.eos_token_id, decoder_start_token_id=tokenizer_3.pad_token_id,
        )
        torch.manual_seed(0)
        text_encoder_3 = T5EncoderModel(t5_config)
    torch.manual_seed(0)
    vae = AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    pipeline = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=clip_tokenizer(),
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder
