"""apple/ml-stable-diffusion's Swift ``StableDiffusion3Pipeline``: the resources folder it loads.

What it fixes is in ``SD3_CONTRACT`` (docs/consumers/apple-ml-stable-diffusion.md, §SD3, quotes
``StableDiffusion3Pipeline.swift``, ``MultiModalDiffusionTransformer.swift``,
``DiscreteFlowScheduler.swift``, ``TextEncoderT5.swift`` and the CLI): ``TextEncoder`` and
``TextEncoder2`` give ``hidden_embeds`` (penultimate layer) and ``pooled_outputs``, which the app
concatenates with 2048 zero features into [1, 77, 4096] states, so their widths are 768 and 1280;
``TextEncoderT5`` (optional, with ``tokenizer.json`` and ``tokenizer_config.json``) gives
``encoder_hidden_states`` [1, 4096, 1, L], of which the app keeps 77 tokens (zeros without it);
the ``MultiModalDiffusionTransformer`` takes ``latent_image_embeddings`` [2, C, h, w],
``timestep`` [2] (the shifted sigma x 1000), ``token_level_text_embeddings`` [2, 4096, 1, 154]
(CLIP tokens then T5 tokens) and ``pooled_text_embeddings`` [2, 2048, 1, 1], the conditional row
first, and returns the flow velocity; the decoder is fed ``x / 1.5305 + 0.0609`` (the CLI's
factors). The loop is discrete-flow Euler at shift 3 with guidance 7.5, and the last x0 decoded.

Fitted inside the graphs, exactly: each encoder's states and pooled output zero-padded to the
app's widths, the transformer reading back the model's own parts (the CLIP states joined as
diffusers joins them), and the decoder undoing the app's factors before applying the VAE's own.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.bundling.apple_swift import CONTRACT, SwiftGraphs, linspace32
from edgegen.bundling.fitting import clip_ids_as_the_pipeline_tokenizes, config, config_file, config_index, special_ids
from edgegen.errors import EdgegenError


@dataclass(frozen=True)
class Sd3Contract:
    consumer: str
    models: dict[str, str]
    inputs: dict[str, list[str]]
    outputs: dict[str, list[str]]
    clip_widths: tuple[int, int]  # TextEncoder's and TextEncoder2's: the app pads their join with zeros to
    text_width: int  # 4096
    pooled_width: int  # 2048
    clip_tokens: int
    t5_tokens: int  # the app keeps this many of the T5 encoder's tokens
    shift: float  # DiscreteFlowScheduler's default timestep shift (and the CLI's for SD3)
    decoder_scale: float  # the CLI's decoderScaleFactor and decoderShiftFactor for SD3
    decoder_shift: float
    t5_tokenizer_files: tuple[str, ...]


SD3_CONTRACT = Sd3Contract(
    consumer=CONTRACT.consumer.replace("swift/StableDiffusion/pipeline", "swift/StableDiffusion/pipeline (StableDiffusion3Pipeline)"),
    models={"encoder": "TextEncoder", "encoder_2": "TextEncoder2", "encoder_3": "TextEncoderT5", "transformer": "MultiModalDiffusionTransformer", "decoder": "VAEDecoder"},
    inputs={
        "encoder": ["input_ids"], "encoder_2": ["input_ids"], "encoder_3": ["input_ids", "attention_mask"],
        "transformer": ["latent_image_embeddings", "timestep", "token_level_text_embeddings", "pooled_text_embeddings"], "decoder": ["z"],
    },
    outputs={
        "encoder": ["hidden_embeds", "pooled_outputs"], "encoder_2": ["hidden_embeds", "pooled_outputs"], "encoder_3": ["encoder_hidden_states"],
        "transformer": ["denoiser_output"], "decoder": ["image"],
    },
    clip_widths=(768, 1280),
    text_width=4096,
    pooled_width=2048,
    clip_tokens=77,
    t5_tokens=77,
    shift=3.0,
    decoder_scale=1.5305,
    decoder_shift=0.0609,
    t5_tokenizer_files=("tokenizer.json", "tokenizer_config.json"),
)

FAMILIES = ("stable-diffusion-3",)
CLIP = {"encoder": ("tokenizer", "text_encoder"), "encoder_2": ("tokenizer_2", "text_encoder_2")}


class SwiftDiscreteFlow:
    """DiscreteFlowScheduler.swift (flow matching, Euler), step by step, with the x0 the pipeline
    decodes (``modelOutputs.last``): ``timesteps`` are the model's (shifted sigma x 1000)."""

    def __init__(self, steps: int, shift: float = SD3_CONTRACT.shift):
        train = np.float32(1000)

        def sigma_of(timestep: np.ndarray) -> np.ndarray:
            t = (timestep / train).astype(np.float32)
            return t if shift == 1 else (np.float32(shift) * t / (np.float32(1) + np.float32(shift - 1) * t)).astype(np.float32)

        distribution = sigma_of(linspace32(1, 1000, 1000))
        spaced = linspace32(distribution[0], distribution[-1], steps)[::-1]
        self.sigmas = sigma_of((spaced * train).astype(np.float32))
        self.timesteps = [float(sigma * train) for sigma in self.sigmas]
        self.denoised: np.ndarray | None = None

    def step(self, output: np.ndarray, timestep: float, sample: np.ndarray) -> np.ndarray:
        index = self.timesteps.index(timestep)
        sigma = self.sigmas[index]
        self.denoised = (sample - output * sigma).astype(np.float32)
        # The last step's dt stays +sigma (the pipeline decodes x0, not this sample).
        dt = self.sigmas[index + 1] - sigma if index < len(self.sigmas) - 1 else sigma
        return (sample + ((sample - self.denoised) / sigma) * dt).astype(np.float32)


@dataclass
class Sd3Fit:
    clip_tokens: int
    clip_hidden: tuple[int, int]
    clip_pooled: tuple[int, int]
    joint_width: int  # the transformer's text width (T5's)
    t5: bool
    t5_hidden: int
    latent_size: int
    latent_channels: int
    shift: float  # the model's scheduler's
    adaptations: list[str]


def fit(pipeline_dir: Path, family_name: str) -> Sd3Fit:
    """The fit of the SD3 pipeline in ``pipeline_dir`` to the Swift SD3 pipeline, from its configs, or one line."""
    from transformers import AutoTokenizer

    from edgegen.families.base import spatial_size

    index = config_index(pipeline_dir)
    transformer, vae, scheduler = config(pipeline_dir, "transformer"), config(pipeline_dir, "vae"), config_file(pipeline_dir, "scheduler", "scheduler_config.json")
    tokens, hidden, pooled = [], [], []
    for (role, (tokenizer_folder, encoder_folder)), app_width in zip(CLIP.items(), SD3_CONTRACT.clip_widths, strict=True):
        tokenizer = AutoTokenizer.from_pretrained(str(Path(pipeline_dir) / tokenizer_folder))
        if tokenizer.bos_token != "<|startoftext|>" or tokenizer.eos_token != "<|endoftext|>":
            raise EdgegenError(f"the Swift BPETokenizer adds <|startoftext|> and <|endoftext|>; {tokenizer_folder}'s start and end tokens differ")
        encoder = config(pipeline_dir, encoder_folder)
        tokens.append(int(min(tokenizer.model_max_length, encoder["max_position_embeddings"])))
        hidden.append(int(encoder["hidden_size"]))
        pooled.append(int(encoder.get("projection_dim") or encoder["hidden_size"]))
        if hidden[-1] > app_width or pooled[-1] > app_width:
            raise EdgegenError(f"the Swift SD3 pipeline joins {SD3_CONTRACT.models[role]}'s states at {app_width} features; {encoder_folder}'s are {max(hidden[-1], pooled[-1])}")
    if len(set(tokens)) != 1 or tokens[0] > SD3_CONTRACT.clip_tokens:
        raise EdgegenError(f"the Swift SD3 pipeline sends both CLIP encoders {SD3_CONTRACT.clip_tokens} ids; these read {tokens[0]} and {tokens[1]}")
    joint = int(transformer["joint_attention_dim"])
    t5 = index.get("text_encoder_3") not in (None, [None, None])
    t5_hidden = int(config(pipeline_dir, "text_encoder_3")["d_model"]) if t5 else joint
    if joint > SD3_CONTRACT.text_width or t5_hidden > SD3_CONTRACT.text_width:
        raise EdgegenError(f"the Swift SD3 pipeline's text states are {SD3_CONTRACT.text_width} wide; this transformer reads {joint}")
    if int(transformer["pooled_projection_dim"]) != sum(pooled) or sum(pooled) > SD3_CONTRACT.pooled_width:
        raise EdgegenError(f"the Swift SD3 pipeline sends both CLIP pooled outputs ({' + '.join(map(str, pooled))}); this transformer takes {transformer['pooled_projection_dim']}")
    if scheduler.get("use_dynamic_shifting"):
        raise EdgegenError("the Swift DiscreteFlowScheduler shifts timesteps by a fixed factor; this scheduler shifts them by image size (use_dynamic_shifting)")
    height, width = spatial_size(transformer["sample_size"])
    if height != width:
        raise EdgegenError("the Swift pipeline makes square images from the transformer's latent shape; this one's latents are not square")
    adaptations = [
        f"text states: the encoders' states are zero-padded to the app's widths ({', '.join(map(str, SD3_CONTRACT.clip_widths))}, T5 {SD3_CONTRACT.text_width}) "
        "and the transformer reads back the model's own parts, joined as diffusers joins them",
        f"T5: the app keeps {SD3_CONTRACT.t5_tokens} T5 tokens (diffusers' default is 256); " + (
            "TextEncoderT5 reads that many ids" if t5 else "this pipeline has no T5 encoder: the app sends zeros in their place"
        ),
    ]
    if tokens[0] < SD3_CONTRACT.clip_tokens:
        adaptations.append(f"text states: the CLIP encoders read the first {tokens[0]} of the app's {SD3_CONTRACT.clip_tokens} ids and zero-pad to {SD3_CONTRACT.clip_tokens} tokens")
    scaling, shift = float(vae.get("scaling_factor", 1.0)), float(vae.get("shift_factor") or 0.0)
    if (scaling, shift) != (SD3_CONTRACT.decoder_scale, SD3_CONTRACT.decoder_shift):
        adaptations.append(
            f"latent scale: the app feeds x / {SD3_CONTRACT.decoder_scale} + {SD3_CONTRACT.decoder_shift}; the decoder undoes it and applies the VAE's own "
            f"(/ {scaling} + {shift})"
        )
    model_shift = float(scheduler.get("shift", 1.0))
    if model_shift != SD3_CONTRACT.shift:
        adaptations.append(f"schedule: the app samples at timestep shift {SD3_CONTRACT.shift} by default; this model's scheduler uses {model_shift}: set schedulerTimestepShift")
    return Sd3Fit(
        tokens[0], (hidden[0], hidden[1]), (pooled[0], pooled[1]), joint, t5, t5_hidden, height, int(transformer["in_channels"]), model_shift, adaptations
    )


def app_modules(pipeline: Any, fitted: Sd3Fit) -> dict[str, Any]:
    """The encoders, the MMDiT and the decoder as the Swift SD3 pipeline calls them."""
    import torch

    from edgegen.families.base import ConditioningEncoder, text_encoder_wrapper, vae_decoder_module

    def clip_encoder(role: str, width: int) -> Any:
        tokenizer_folder, encoder_folder = CLIP[role]
        spec = ConditioningEncoder(component=encoder_folder, tokenizer_subfolder=tokenizer_folder, hidden_layer=-2, pooled_output=True)
        wrapped = text_encoder_wrapper(getattr(pipeline, encoder_folder), spec)
        tokens, specials = fitted.clip_tokens, special_ids(getattr(pipeline, tokenizer_folder))

        class TextEncoderSD3(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.encoder = wrapped

            def forward(self, input_ids):  # float32 ids
                ids = clip_ids_as_the_pipeline_tokenizes(input_ids.to(torch.int32), tokens, *specials)
                hidden, pooled = self.encoder(ids)
                hidden = torch.nn.functional.pad(hidden, (0, width - hidden.shape[-1], 0, SD3_CONTRACT.clip_tokens - tokens))
                return hidden, torch.nn.functional.pad(pooled, (0, width - pooled.shape[-1]))

        return TextEncoderSD3().eval()

    modules = {role: clip_encoder(role, width) for role, width in zip(CLIP, SD3_CONTRACT.clip_widths, strict=True)}
    if fitted.t5:
        t5 = pipeline.text_encoder_3

        class TextEncoderT5(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.encoder = t5

            def forward(self, input_ids, attention_mask):
                # diffusers' SD3 runs T5 without a mask; the app's (inverted) mask is accepted and unused.
                states = self.encoder(input_ids.to(torch.int32), return_dict=False)[0]
                states = torch.nn.functional.pad(states, (0, SD3_CONTRACT.text_width - states.shape[-1]))
                return states.transpose(1, 2).unsqueeze(2)  # [1, L, 4096] -> [1, 4096, 1, L]

        modules["encoder_3"] = TextEncoderT5().eval()
    transformer = pipeline.transformer
    (width_1, width_2), (pooled_1, pooled_2) = fitted.clip_hidden, fitted.clip_pooled
    app_1 = SD3_CONTRACT.clip_widths[0]

    class MultiModalDiffusionTransformer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer = transformer

        def forward(self, latent_image_embeddings, timestep, token_level_text_embeddings, pooled_text_embeddings):
            states = token_level_text_embeddings.squeeze(2).transpose(1, 2)  # [B, 154, 4096]
            clip_states = states[:, : fitted.clip_tokens]
            clip_states = torch.cat([clip_states[..., :width_1], clip_states[..., app_1 : app_1 + width_2]], dim=-1)
            # encode_prompt pads the CLIP join to T5's width (a cut where it is wider).
            joint = fitted.joint_width
            clip_states = clip_states[..., :joint] if clip_states.shape[-1] >= joint else torch.nn.functional.pad(clip_states, (0, joint - clip_states.shape[-1]))
            t5_states = states[:, SD3_CONTRACT.clip_tokens :, :joint]
            pooled = pooled_text_embeddings.flatten(1)
            pooled = torch.cat([pooled[:, :pooled_1], pooled[:, app_1 : app_1 + pooled_2]], dim=-1)
            return self.transformer(
                hidden_states=latent_image_embeddings, timestep=timestep, encoder_hidden_states=torch.cat([clip_states, t5_states], dim=1),
                pooled_projections=pooled, return_dict=False,
            )[0]

    decoder = vae_decoder_module(pipeline.vae)

    class VAEDecoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.decoder = decoder

        def forward(self, z):
            # The app fed x / scale + shift with its own factors: undone, then the VAE's own applied.
            return self.decoder((z - SD3_CONTRACT.decoder_shift) * SD3_CONTRACT.decoder_scale)

    modules["transformer"] = MultiModalDiffusionTransformer().eval()
    modules["decoder"] = VAEDecoder().eval()
    return modules


def app_example_inputs(fitted: Sd3Fit, bos_id: int, eos_id: int, seed: int = 0) -> dict[str, tuple]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    ids = torch.full((1, SD3_CONTRACT.clip_tokens), float(eos_id))
    ids[0, 0] = float(bos_id)
    size, channels = fitted.latent_size, fitted.latent_channels
    text = torch.zeros((2, SD3_CONTRACT.text_width, 1, SD3_CONTRACT.clip_tokens + SD3_CONTRACT.t5_tokens))
    app_1 = SD3_CONTRACT.clip_widths[0]
    text[:, : fitted.clip_hidden[0], :, : fitted.clip_tokens] = torch.randn((2, fitted.clip_hidden[0], 1, fitted.clip_tokens), generator=generator)
    text[:, app_1 : app_1 + fitted.clip_hidden[1], :, : fitted.clip_tokens] = torch.randn((2, fitted.clip_hidden[1], 1, fitted.clip_tokens), generator=generator)
    text[:, : fitted.t5_hidden, :, SD3_CONTRACT.clip_tokens :] = torch.randn((2, fitted.t5_hidden, 1, SD3_CONTRACT.t5_tokens), generator=generator)
    pooled = torch.zeros((2, SD3_CONTRACT.pooled_width, 1, 1))
    pooled[:, : fitted.clip_pooled[0]] = torch.randn((2, fitted.clip_pooled[0], 1, 1), generator=generator)
    pooled[:, app_1 : app_1 + fitted.clip_pooled[1]] = torch.randn((2, fitted.clip_pooled[1], 1, 1), generator=generator)
    examples = {
        "encoder": (ids,),
        "encoder_2": (ids.clone(),),
        "transformer": (torch.randn((2, channels, size, size), generator=generator), torch.tensor([700.0, 700.0]), text, pooled),
        "decoder": (torch.randn((1, channels, size, size), generator=generator),),
    }
    if fitted.t5:
        t5_ids = torch.zeros((1, SD3_CONTRACT.t5_tokens))
        t5_ids[0, :3] = torch.tensor([5.0, 6.0, 1.0])
        examples["encoder_3"] = (t5_ids, (t5_ids == 0).float())
    return examples


def write_t5_tokenizer(pipeline_dir: Path, folder: Path) -> None:
    """tokenizer.json and tokenizer_config.json of the pipeline's T5 tokenizer (swift-transformers reads both)."""
    import tempfile

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(Path(pipeline_dir) / "tokenizer_3"), use_fast=True)
    if not getattr(tokenizer, "is_fast", False):
        raise EdgegenError("the Swift SD3 pipeline's T5 tokenizer reads tokenizer.json; this T5 tokenizer has no fast (tokenizers) form")
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        tokenizer.save_pretrained(scratch)
        for name in SD3_CONTRACT.t5_tokenizer_files:
            shutil.copyfile(Path(scratch) / name, folder / name)


def graphs(pipeline: Any, pipeline_dir: Path, fitted: Sd3Fit, bos_id: int, eos_id: int, folder: Path) -> SwiftGraphs:
    models = dict(SD3_CONTRACT.models)
    if fitted.t5:
        write_t5_tokenizer(pipeline_dir, folder)
    else:
        models.pop("encoder_3")
    downsample = 2 ** (len(pipeline.vae.config.block_out_channels) - 1)
    return SwiftGraphs(
        swift_pipeline="StableDiffusion3Pipeline(resourcesAt: URL(fileURLWithPath: FOLDER), configuration: MLModelConfiguration(), reduceMemory: false)",
        models=models, inputs=SD3_CONTRACT.inputs, outputs=SD3_CONTRACT.outputs,
        modules=app_modules(pipeline, fitted), examples=app_example_inputs(fitted, bos_id, eos_id),
        latent_size=fitted.latent_size, image_size=fitted.latent_size * downsample, adaptations=list(fitted.adaptations),
        app_settings=(
            f"schedulerType = .discreteFlowScheduler, schedulerTimestepShift = {fitted.shift} (the model's), decoderScaleFactor = {SD3_CONTRACT.decoder_scale} and "
            f"decoderShiftFactor = {SD3_CONTRACT.decoder_shift} (as the Swift CLI does with --sd3); the SD3 pipeline runs from iOS 17 / macOS 14"
        ),
        extra_files=list(SD3_CONTRACT.t5_tokenizer_files) if fitted.t5 else [],
        # T5 in float16 overflows (transformers keeps its feed-forward outputs in float32 for it).
        float32_roles=("transformer", "encoder_3"),
    )
