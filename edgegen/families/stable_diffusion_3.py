"""Stable Diffusion 3 / 3.5: two CLIP encoders and a T5, an SD3Transformer2DModel (MMDiT), flow matching.

Components: ``text_encoder`` and ``text_encoder_2`` (CLIPTextModelWithProjection: token ids ->
the penultimate hidden states and the pooled ``text_embeds``), ``text_encoder_3`` (T5 encoder:
token ids -> last hidden states, no attention mask, as the pipeline calls it), ``denoiser``
(latents, timestep, encoder_hidden_states, pooled_projections -> the flow prediction) and
``vae_decoder`` (raw latents -> image, scaling and shift folded in).

Prompt conditioning is put together here exactly as ``StableDiffusion3Pipeline.encode_prompt``
does: both CLIP states concatenated on the channel axis, padded (or cut) to the T5 width, followed
by the T5 states on the token axis; the pooled projection is both CLIP pooled outputs. A folder
saved without its T5 encoder (SD3 "without T5") has no ``text_encoder_3`` component: the T5
states are zeros of the pipeline's shape. The timestep is the scheduler's (0..1000), float32.
The joint attention (JointAttnProcessor2_0) is exported as it is.

Refused in one line: a folder missing the transformer, a CLIP encoder or the VAE.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import EdgegenError
from edgegen.families.base import (
    Component,
    ComponentSpec,
    ConditioningEncoder,
    component_spec,
    no_student,
    read_config,
    require,
    spatial_size,
    text_encoder_wrapper,
    tokenizer_digest,
    traced_component,
    use_plain_attention,
    vae_decoder_module,
)
from edgegen.families.base import tokenize as tokenize_prompts
from edgegen.families.prompts import CALIBRATION_PROMPTS, DEFAULT_PROMPT

PIPELINE_CLASSES = ("StableDiffusion3Pipeline",)
# StableDiffusion3Pipeline's max_sequence_length default: the T5 token count of every prompt.
T5_MAX_LENGTH = 256
CLIP_ENCODERS = (
    ConditioningEncoder("text_encoder", "tokenizer", hidden_layer=-2, pooled_output=True),
    ConditioningEncoder("text_encoder_2", "tokenizer_2", hidden_layer=-2, pooled_output=True),
)
T5_ENCODER = ConditioningEncoder("text_encoder_3", "tokenizer_3", max_length=T5_MAX_LENGTH)
ENCODERS_COMPONENTS = tuple(ComponentSpec(encoder.component, encoder.component, "encoder") for encoder in (*CLIP_ENCODERS, T5_ENCODER))
COMPONENTS = (
    *ENCODERS_COMPONENTS,
    ComponentSpec("denoiser", "transformer", "denoiser"),
    ComponentSpec("vae_decoder", "vae", "decoder"),
)
# Sub-models the pipeline cannot run without (text_encoder_3 may be left out).
_REQUIRED = ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")


def _denoiser_wrapper():
    import torch

    class Denoiser(torch.nn.Module):
        def __init__(self, transformer):
            super().__init__()
            self.transformer = transformer

        def forward(self, hidden_states, timestep, encoder_hidden_states, pooled_projections):
            return self.transformer(
                hidden_states=hidden_states,
                timestep=timestep,
                encoder_hidden_states=encoder_hidden_states,
                pooled_projections=pooled_projections,
                return_dict=False,
            )[0]

    return Denoiser


def join_conditioning(clip_states: list[np.ndarray], clip_pooled: list[np.ndarray], t5_states: np.ndarray) -> dict[str, np.ndarray]:
    """The denoiser's text inputs from the encoders' outputs, as ``encode_prompt`` joins them."""
    clip = np.concatenate(clip_states, axis=-1)
    width = t5_states.shape[-1]
    # torch.nn.functional.pad with (0, width - clip width): zeros on the right, or a cut when negative.
    clip = clip[..., :width] if clip.shape[-1] >= width else np.pad(clip, ((0, 0), (0, 0), (0, width - clip.shape[-1])))
    return {
        "encoder_hidden_states": np.concatenate([clip, t5_states], axis=-2).astype(np.float32),
        "pooled_projections": np.concatenate(clip_pooled, axis=-1).astype(np.float32),
    }


class StableDiffusion3Family:
    name = "stable-diffusion-3"
    description = "Stable Diffusion 3/3.5 (StableDiffusion3Pipeline: MMDiT transformer, two CLIP + T5 encoders, flow matching)"
    pipeline_classes = PIPELINE_CLASSES
    guidance_modes = ("classifier-free",)
    denoiser_output = "noise_pred"
    decoder_output = "image"

    def __init__(self, with_t5: bool = True, transformer_config: dict[str, Any] | None = None):
        self.with_t5 = with_t5
        self.transformer_config = transformer_config or {}
        self.encoders = (*CLIP_ENCODERS, T5_ENCODER) if with_t5 else CLIP_ENCODERS
        self.components = tuple(spec for spec in COMPONENTS if with_t5 or spec.name != T5_ENCODER.component)

    def claims(self, folder: Path, index: dict[str, Any]) -> bool:
        if index.get("_class_name") not in self.pipeline_classes:
            return False
        missing = [name for name in _REQUIRED if not (isinstance(index.get(name), list) and index[name][:1] != [None])]
        if missing:
            raise EdgegenError(f"{folder} ({index['_class_name']}) has no {', '.join(missing)}; a Stable Diffusion 3 pipeline needs them")
        return True

    def for_folder(self, folder: Path, index: dict[str, Any]) -> StableDiffusion3Family:
        """This family as ``folder`` has it: with or without the T5 encoder."""
        entry = index.get(T5_ENCODER.component)
        with_t5 = isinstance(entry, list) and entry[:1] != [None]
        return StableDiffusion3Family(with_t5, read_config(folder, "transformer"))

    # -- components ------------------------------------------------------------------------

    def build_component(
        self, pipeline: Any, name: str, batch_size: int = 1, prompt: str = DEFAULT_PROMPT, seed: int = 0, timestep: float | None = None
    ) -> Component:
        """Wrap one part of ``pipeline`` as a static-shape module with reference inputs."""
        import torch

        spec = component_spec(self, name)
        generator = torch.Generator().manual_seed(seed)
        rewrites: list[str] = []
        if spec.role == "encoder":
            encoder = next(e for e in self.encoders if e.component == name)
            source = require(pipeline, name, name)
            tokenizer = require(pipeline, encoder.tokenizer_subfolder, name)
            length = encoder.max_length or pipeline.tokenizer_max_length  # both CLIPs take the first's length
            module = text_encoder_wrapper(source, encoder)
            inputs = {"input_ids": tokenize_prompts(tokenizer, [prompt] * batch_size, length).input_ids}
            output_names = ["text_embeddings", "pooled_text_embeddings"] if encoder.pooled_output else ["text_embeddings"]
        elif name == "denoiser":
            source = require(pipeline, "transformer", "denoiser")
            config = source.config
            size = spatial_size(config.sample_size)
            hidden_states = torch.randn((batch_size, config.in_channels, *size), generator=generator)
            if timestep is None:
                timestep = pipeline.scheduler.config.num_train_timesteps // 2
            with torch.no_grad():
                # The pipeline's own conditioning, so the reference inputs are what it feeds the transformer.
                embeds, _, pooled, _ = pipeline.encode_prompt(
                    prompt, None, None, device=torch.device("cpu"), num_images_per_prompt=batch_size,
                    do_classifier_free_guidance=False, max_sequence_length=T5_MAX_LENGTH,
                )
            module, rewrites = _denoiser_wrapper()(source).eval(), use_plain_attention(source)
            inputs = {
                "hidden_states": hidden_states,
                "timestep": torch.full((batch_size,), float(timestep), dtype=torch.float32),
                "encoder_hidden_states": embeds.float(),
                "pooled_projections": pooled.float(),
            }
            output_names = [self.denoiser_output]
        else:
            source = require(pipeline, "vae", "vae_decoder")
            transformer = getattr(pipeline, "transformer", None)
            if transformer is not None:
                size, channels = spatial_size(transformer.config.sample_size), transformer.config.in_channels
            else:
                factor = 2 ** (len(source.config.block_out_channels) - 1)
                size, channels = (source.config.sample_size // factor,) * 2, source.config.latent_channels
            latents = torch.randn((batch_size, channels, *size), generator=generator)
            module, rewrites = vae_decoder_module(source), use_plain_attention(source)
            inputs = {"latents": latents}
            output_names = [self.decoder_output]

        return traced_component(name, module, inputs, output_names, spec, source, rewrites)

    def calibration_inputs(self, pipeline: Any, name: str, batch_size: int = 1, count: int = len(CALIBRATION_PROMPTS)) -> list[dict[str, Any]]:
        """``count`` input sets for ``name``: other prompts, seeds and timesteps than the reference."""
        steps = pipeline.scheduler.config.num_train_timesteps
        sets = []
        for index in range(count):
            prompt = CALIBRATION_PROMPTS[index % len(CALIBRATION_PROMPTS)]
            timestep = (index + 0.5) * steps / count
            part = self.build_component(pipeline, name, batch_size, prompt=prompt, seed=1000 + index, timestep=timestep)
            sets.append(part.reference_inputs)
        return sets

    # -- sampling --------------------------------------------------------------------------

    def latent_shape(self, folder: Path) -> tuple[int, ...]:
        transformer = read_config(folder, "transformer")
        return (1, transformer["in_channels"], *spatial_size(transformer["sample_size"]))

    def encode_prompt(self, tokenizers: dict[str, Any], run: Any, prompt: str) -> dict[str, np.ndarray]:
        clip_length = tokenizers[CLIP_ENCODERS[0].tokenizer_subfolder].model_max_length
        states, pooled = [], []
        for encoder in CLIP_ENCODERS:
            ids = tokenize_prompts(tokenizers[encoder.tokenizer_subfolder], [prompt], clip_length, tensors="np").input_ids
            outputs = run(encoder.component, {"input_ids": ids.astype(np.int64)})
            states.append(outputs["text_embeddings"])
            pooled.append(outputs["pooled_text_embeddings"])
        if self.with_t5:
            ids = tokenize_prompts(tokenizers[T5_ENCODER.tokenizer_subfolder], [prompt], T5_MAX_LENGTH, tensors="np").input_ids
            t5_states = run(T5_ENCODER.component, {"input_ids": ids.astype(np.int64)})["text_embeddings"]
        else:
            t5_states = np.zeros((1, T5_MAX_LENGTH, self._transformer("joint_attention_dim")), dtype=np.float32)
        return join_conditioning(states, pooled, t5_states)

    def prepare_timesteps(self, scheduler: Any, steps: int, latent_shape: tuple[int, ...]) -> None:
        options = {}
        if scheduler.config.get("use_dynamic_shifting", None):
            from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

            patch = self._transformer("patch_size")
            height, width = latent_shape[-2:]
            options["mu"] = calculate_shift(
                (height // patch) * (width // patch),
                scheduler.config.get("base_image_seq_len", 256),
                scheduler.config.get("max_image_seq_len", 4096),
                scheduler.config.get("base_shift", 0.5),
                scheduler.config.get("max_shift", 1.16),
            )
        scheduler.set_timesteps(steps, **options)

    def denoiser_inputs(self, latents: np.ndarray, timestep: float, conditioning: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {
            "hidden_states": latents.astype(np.float32),
            "timestep": np.full((latents.shape[0],), timestep, dtype=np.float32),
            "encoder_hidden_states": conditioning["encoder_hidden_states"],
            "pooled_projections": conditioning["pooled_projections"],
        }

    def decoder_inputs(self, latents: np.ndarray) -> dict[str, np.ndarray]:
        return {"latents": latents.astype(np.float32)}

    def _transformer(self, key: str) -> Any:
        if key not in self.transformer_config:
            raise EdgegenError(f"the {self.name} family needs the folder's transformer config ({key}); get it with family_of(folder)")
        return self.transformer_config[key]

    def fingerprint(self, folder: Path) -> str:
        variant = self.for_folder(folder, _model_index(folder))
        digest = hashlib.sha256()
        for encoder in variant.encoders:
            digest.update(tokenizer_digest(folder, encoder.tokenizer_subfolder).encode())
        transformer, vae = read_config(folder, "transformer"), read_config(folder, "vae")
        configs = {
            "with_t5": variant.with_t5,
            "transformer": {
                key: transformer.get(key)
                for key in ("in_channels", "sample_size", "patch_size", "joint_attention_dim", "pooled_projection_dim")
            },
            "vae": {key: vae.get(key) for key in ("latent_channels", "scaling_factor", "shift_factor")},
        }
        digest.update(json.dumps(configs, sort_keys=True).encode())
        return digest.hexdigest()[:16]

    def make_student(
        self, teacher_dir: Path, output_dir: Path, preset: str, force: bool = False, seed: int = 0, attention_heads: int | None = None
    ) -> Path:
        return no_student(self)


def _model_index(folder: Path) -> dict[str, Any]:
    from edgegen.families import read_model_index

    return read_model_index(folder)


FAMILY = StableDiffusion3Family()
