"""PixArt-alpha and PixArt-Sigma: a T5 encoder, a PixArtTransformer2DModel denoiser, an AutoencoderKL.

Components: ``text_encoder`` ((token ids, attention mask) -> T5's last hidden state, as the
pipeline's ``encode_prompt`` gives it), ``denoiser`` ((latents, timestep, embeddings, their
attention mask) -> noise prediction) and ``vae_decoder`` (latents -> image).

The token length is the pipeline's default ``max_sequence_length`` (alpha 120, Sigma 300), capped
by the tokenizer's ``model_max_length`` when that is shorter: T5's relative positions and the
padding mask make the embeddings of the real tokens, and so the image, independent of how far the
prompt is padded; only the truncation point changes. The prompt is lowercased and stripped as the
pipeline does with ``clean_caption=False`` (its caption cleaning needs bs4 and ftfy; without them
the pipeline falls back to the same). ``family_of(folder)`` gives the folder's own instance
(``for_folder``), which knows the pipeline class and so the token length the loop encodes with.
The text encoder takes the mask as T5's own additive bias and its relative position bias as a
constant of the static length (see ``TextEncoder`` and ``constant_position_bias``).

The denoiser takes the attention mask as float32 (0 or 1; the transformer turns it into the same
-10000 bias from either dtype). With learned sigma (``out_channels == 2 * in_channels``) it
returns only the noise half, as the pipeline splits it off before the scheduler step. PixArt-alpha
at ``sample_size == 128`` also conditions on the image resolution and aspect ratio; with static
shapes they are constants of the latent size (what the pipeline passes at its default height and
width), so the wrapper carries them as buffers.

Refused, before anything is written: a transformer that asks for resolution conditioning its
pipeline never passes (Sigma, or alpha with ``sample_size != 128``): diffusers itself fails on it.
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
    tokenizer_digest,
    traced_component,
    use_plain_attention,
    vae_decoder_module,
)
from edgegen.families.loading import parse_model_index
from edgegen.families.prompts import CALIBRATION_PROMPTS, DEFAULT_PROMPT

COMPONENTS = (
    ComponentSpec("text_encoder", "text_encoder", "encoder"),
    ComponentSpec("denoiser", "transformer", "denoiser"),
    ComponentSpec("vae_decoder", "vae", "decoder"),
)
ENCODER = ConditioningEncoder(component="text_encoder", tokenizer_subfolder="tokenizer", attention_mask=True)
# The pipelines' default max_sequence_length (diffusers 0.42).
SEQUENCE_LENGTHS = {"PixArtAlphaPipeline": 120, "PixArtSigmaPipeline": 300}
PIPELINE_CLASSES = tuple(SEQUENCE_LENGTHS)
# Only PixArt-alpha passes added conditioning, and only for this transformer sample size.
_RESOLUTION_SAMPLE_SIZE = 128


def constant_position_bias(encoder: Any, length: int) -> list[str]:
    """T5's relative position bias for ``length`` tokens, computed once and kept as a constant.

    The bias depends only on the token count and the bias table; computed in the graph, its
    int64 bucket arithmetic falls outside XNNPACK and breaks XNNPACK's int8 quantizer (which
    turns an int64 scalar into a float constant). Other lengths are still computed.
    """
    import types

    import torch

    attention = encoder.encoder.block[0].layer[0].SelfAttention
    if not attention.has_relative_attention_bias:
        return []
    with torch.no_grad():
        bias = type(attention).compute_bias(attention, length, length)
    attention.register_buffer("constant_position_bias", bias, persistent=False)

    def compute_bias(self, query_length, key_length, device=None, past_seen_tokens=0):
        if (query_length, key_length) == tuple(self.constant_position_bias.shape[-2:]) and isinstance(past_seen_tokens, int) and not past_seen_tokens:
            return self.constant_position_bias
        return type(self).compute_bias(self, query_length, key_length, device=device, past_seen_tokens=past_seen_tokens)

    attention.compute_bias = types.MethodType(compute_bias, attention)
    return [f"{type(encoder).__name__}: relative position bias -> constant for {length} tokens"]


def _wrappers():
    import torch

    class TextEncoder(torch.nn.Module):
        """T5's last hidden state with the padding mask handed over as T5's own additive 4-D bias.

        transformers builds that bias from the 2-D mask with boolean index and ``new_ones`` ops
        Core ML cannot convert; ``0`` where kept and the float32 minimum where padded is what its
        SDPA path adds to the position bias, so the embeddings are the same.
        """

        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask):
            padded = 1.0 - attention_mask[:, None, None, :].to(torch.float32)
            bias = padded * torch.finfo(torch.float32).min
            return self.encoder(input_ids, attention_mask=bias, return_dict=False)[0]

    class Denoiser(torch.nn.Module):
        """The transformer as the pipeline calls it, with the learned-sigma half dropped."""

        def __init__(self, transformer, resolution, aspect_ratio):
            super().__init__()
            self.transformer = transformer
            self.latent_channels = transformer.config.in_channels
            self.learned_sigma = (transformer.config.out_channels or self.latent_channels) // 2 == self.latent_channels
            self.added_conditions = resolution is not None
            if self.added_conditions:
                self.register_buffer("resolution", resolution, persistent=False)
                self.register_buffer("aspect_ratio", aspect_ratio, persistent=False)

        def forward(self, sample, timestep, encoder_hidden_states, encoder_attention_mask):
            batch = sample.shape[0]
            added = {"resolution": None, "aspect_ratio": None}
            if self.added_conditions:
                added = {"resolution": self.resolution.expand(batch, 2), "aspect_ratio": self.aspect_ratio.expand(batch, 1)}
            prediction = self.transformer(
                sample,
                encoder_hidden_states=encoder_hidden_states,
                encoder_attention_mask=encoder_attention_mask,
                timestep=timestep,
                added_cond_kwargs=added,
                return_dict=False,
            )[0]
            return prediction[:, : self.latent_channels] if self.learned_sigma else prediction

    return TextEncoder, Denoiser


def sequence_length(pipeline_class: str, tokenizer: Any) -> int:
    return min(SEQUENCE_LENGTHS[pipeline_class], int(tokenizer.model_max_length))


def tokenize(tokenizer: Any, prompts: list[str], length: int, tensors: str = "pt") -> Any:
    """Token ids and mask as the pipeline's encode_prompt makes them (lowercased, stripped, padded)."""
    return tokenizer(
        [prompt.lower().strip() for prompt in prompts],
        padding="max_length",
        max_length=length,
        truncation=True,
        add_special_tokens=True,
        return_tensors=tensors,
    )


def _passes_resolution(pipeline_class: str, sample_size: int) -> bool:
    return pipeline_class == "PixArtAlphaPipeline" and sample_size == _RESOLUTION_SAMPLE_SIZE


def _check_transformer(pipeline_class: str, config: dict[str, Any], where: str) -> None:
    sample_size = config.get("sample_size", 128)
    wanted = config.get("use_additional_conditions")
    wanted = sample_size == _RESOLUTION_SAMPLE_SIZE if wanted is None else wanted
    if wanted and not _passes_resolution(pipeline_class, sample_size):
        raise EdgegenError(
            f"{where}: its transformer takes resolution and aspect-ratio conditioning (use_additional_conditions) "
            f"that {pipeline_class} never passes at sample_size {sample_size}; diffusers cannot run it either"
        )


def _added_conditions(pipeline: Any, latent_size: tuple[int, int]) -> tuple[Any, Any]:
    """Resolution and aspect ratio as the pipeline passes them at its default height and width."""
    import torch

    if not _passes_resolution(type(pipeline).__name__, pipeline.transformer.config.sample_size):
        return None, None
    height, width = (size * pipeline.vae_scale_factor for size in latent_size)
    return torch.tensor([[float(height), float(width)]]), torch.tensor([[float(height / width)]])


def build_component(
    pipeline: Any,
    name: str,
    batch_size: int = 1,
    prompt: str = DEFAULT_PROMPT,
    seed: int = 0,
    timestep: float | None = None,
) -> Component:
    """Wrap one part of ``pipeline`` as a static-shape module with reference inputs."""
    import torch

    spec = component_spec(FAMILY, name)
    TextEncoder, Denoiser = _wrappers()
    generator = torch.Generator().manual_seed(seed)
    text_model = require(pipeline, "text_encoder", "text_encoder")
    tokenizer = require(pipeline, "tokenizer", "text_encoder")
    tokens = tokenize(tokenizer, [prompt] * batch_size, sequence_length(type(pipeline).__name__, tokenizer))
    text_encoder = TextEncoder(text_model).eval()
    encoder_rewrites = constant_position_bias(text_model, tokens.input_ids.shape[1])

    if name == "text_encoder":
        module, rewrites, source = text_encoder, encoder_rewrites, text_model
        inputs = {"input_ids": tokens.input_ids, "attention_mask": tokens.attention_mask}
        output_names = ["text_embeddings"]
    elif name == "denoiser":
        transformer = require(pipeline, "transformer", "denoiser")
        _check_transformer(type(pipeline).__name__, dict(transformer.config), type(pipeline).__name__)
        with torch.no_grad():
            embeddings = text_encoder(tokens.input_ids, tokens.attention_mask)
        size = spatial_size(transformer.config.sample_size)
        sample = torch.randn((batch_size, transformer.config.in_channels, *size), generator=generator)
        if timestep is None:
            timestep = pipeline.scheduler.config.num_train_timesteps // 2
        timesteps = torch.full((batch_size,), float(timestep), dtype=torch.float32)
        module = Denoiser(transformer, *_added_conditions(pipeline, size)).eval()
        rewrites, source = use_plain_attention(transformer), transformer
        inputs = {
            "sample": sample,
            "timestep": timesteps,
            "encoder_hidden_states": embeddings,
            "encoder_attention_mask": tokens.attention_mask.to(torch.float32),
        }
        output_names = ["noise_pred"]
    else:
        vae = require(pipeline, "vae", "vae_decoder")
        size = spatial_size(require(pipeline, "transformer", "vae_decoder").config.sample_size)
        latents = torch.randn((batch_size, vae.config.latent_channels, *size), generator=generator)
        module = vae_decoder_module(vae)
        rewrites, source = use_plain_attention(vae), vae
        inputs = {"latents": latents}
        output_names = ["image"]

    return traced_component(name, module, inputs, output_names, spec, source, rewrites)


def calibration_inputs(pipeline: Any, name: str, batch_size: int = 1, count: int = len(CALIBRATION_PROMPTS)) -> list[dict[str, Any]]:
    """``count`` input sets for ``name``: other prompts, seeds and timesteps than the reference."""
    steps = pipeline.scheduler.config.num_train_timesteps
    sets = []
    for index in range(count):
        prompt = CALIBRATION_PROMPTS[index % len(CALIBRATION_PROMPTS)]
        timestep = (index + 0.5) * steps / count
        part = build_component(pipeline, name, batch_size, prompt=prompt, seed=1000 + index, timestep=timestep)
        sets.append(part.reference_inputs)
    return sets


class PixArtFamily:
    name = "pixart"
    description = "PixArt-alpha/Sigma (PixArtAlphaPipeline, PixArtSigmaPipeline: PixArt transformer, T5 text encoder, AutoencoderKL)"
    pipeline_classes = PIPELINE_CLASSES
    components = COMPONENTS
    encoders = (ENCODER,)
    guidance_modes = ("classifier-free",)
    denoiser_output = "noise_pred"
    decoder_output = "image"

    def __init__(self, pipeline_class: str | None = None):
        self.pipeline_class = pipeline_class  # None: the registry's instance, which only judges folders

    def claims(self, folder: Path, index: dict[str, Any]) -> bool:
        if index.get("_class_name") not in self.pipeline_classes:
            return False
        if (Path(folder) / "transformer" / "config.json").is_file():
            _check_transformer(index["_class_name"], read_config(folder, "transformer"), f"{folder} ({index['_class_name']})")
        return True

    def for_folder(self, folder: Path, index: dict[str, Any]) -> PixArtFamily:
        """This family as ``folder`` has it: alpha and Sigma pad prompts to different lengths."""
        return PixArtFamily(index["_class_name"])

    build_component = staticmethod(build_component)
    calibration_inputs = staticmethod(calibration_inputs)

    def latent_shape(self, folder: Path) -> tuple[int, ...]:
        transformer = read_config(folder, "transformer")
        return (1, transformer.get("in_channels", 4), *spatial_size(transformer.get("sample_size", 128)))

    def encode_prompt(self, tokenizers: dict[str, Any], run: Any, prompt: str) -> dict[str, np.ndarray]:
        tokenizer = tokenizers[ENCODER.tokenizer_subfolder]
        if self.pipeline_class is None:
            raise EdgegenError("PixArt prompts are encoded by the family of a pipeline folder (family_of(folder))")
        length = sequence_length(self.pipeline_class, tokenizer)
        tokens = tokenize(tokenizer, [prompt], length, tensors="np")
        ids, mask = tokens.input_ids.astype(np.int64), tokens.attention_mask.astype(np.int64)
        embeddings = run(ENCODER.component, {"input_ids": ids, "attention_mask": mask})["text_embeddings"]
        return {"encoder_hidden_states": embeddings, "encoder_attention_mask": mask.astype(np.float32)}

    def prepare_timesteps(self, scheduler: Any, steps: int, latent_shape: tuple[int, ...]) -> None:
        scheduler.set_timesteps(steps)

    def denoiser_inputs(self, latents: np.ndarray, timestep: float, conditioning: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t = np.full((latents.shape[0],), timestep, dtype=np.float32)
        return {
            "sample": latents,
            "timestep": t,
            "encoder_hidden_states": conditioning["encoder_hidden_states"],
            "encoder_attention_mask": conditioning["encoder_attention_mask"],
        }

    def decoder_inputs(self, latents: np.ndarray) -> dict[str, np.ndarray]:
        return {"latents": latents.astype(np.float32)}

    def fingerprint(self, folder: Path) -> str:
        digest = hashlib.sha256(tokenizer_digest(folder, ENCODER.tokenizer_subfolder).encode())
        transformer, vae = read_config(folder, "transformer"), read_config(folder, "vae")
        index = parse_model_index(Path(folder) / "model_index.json")
        configs = {
            "pipeline": index.get("_class_name"),
            "transformer": {key: transformer.get(key) for key in ("in_channels", "out_channels", "sample_size", "patch_size", "caption_channels")},
            "vae": {key: vae.get(key) for key in ("latent_channels", "scaling_factor", "shift_factor")},
        }
        digest.update(json.dumps(configs, sort_keys=True).encode())
        return digest.hexdigest()[:16]

    def make_student(
        self, teacher_dir: Path, output_dir: Path, preset: str, force: bool = False, seed: int = 0, attention_heads: int | None = None
    ) -> Path:
        return no_student(self)


FAMILY = PixArtFamily()
