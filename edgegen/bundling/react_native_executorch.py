"""react-native-executorch's ``TextToImageModule``: the five files its ``useTextToImage`` hook loads.

Everything that module fixes is in ``CONTRACT`` (docs/consumers/react-native-executorch.md quotes
its source for each rule): a tokenizer.json that pads and truncates to 77 ids itself; a
scheduler_config.json of which it reads four numbers; and three ExecuTorch programs with method
``forward`` on static shapes. Its sampling loop is fixed too: PNDM (PLMS) on scaled-linear betas,
v-prediction, guidance 7.5 with the unconditional half first, and the literal ``<|startoftext|>``
as the unconditional prompt.

A model that differs from the contract is fitted to it inside its graphs (each call exactly; the
app's PLMS then combines v where diffusers combines epsilon), and the bundle manifest lists each fit; what cannot be fitted is refused in one line:
- text states narrower than 768 or shorter than 77 are zero-padded by the encoder and cut back by
  the UNet (wider ones, SD 2.x's 1024, are refused: the app sizes its buffer for 768);
- the encoder takes the ids both app versions send (v0.9's without start and end tokens, main's
  doubled start for the unconditional prompt) as the pipeline's tokenizer gives them;
- the UNet reads the app's integer timestep through a table of the model's own timesteps at the
  same noise level, so a model trained on another schedule (zero terminal SNR, linear betas) is
  run where it was trained; an epsilon model's output becomes v in the graph;
- the decoder takes the app's latents / 0.18215, applies the model's own scaling, and returns
  H x W x 3 RGB in 0..255; a VAE that upsamples less than 8x is repeated up to the app's image size.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.bundling.fitting import (
    clip_ids_as_the_pipeline_tokenizes,
    config,
    fit_schedule,
    program_component,
    scaled_linear_alphas_cumprod,
    special_ids,
    training_scheduler,
)
from edgegen.errors import EdgegenError


@dataclass(frozen=True)
class Contract:
    consumer: str
    tokens: int
    hidden: int
    latent_channels: int
    latent_downsample: int  # the app's image size / latent size
    image_multiple: int  # the app refuses other image sizes
    guidance_scale: float
    unconditional_prompt: str
    latents_scale: float  # the app divides the final latents by this before the decoder
    min_steps: int  # fewer reads past its timestep list
    scheduler_keys: tuple[str, ...]
    files: dict[str, str]  # role -> file name in the bundle


CONTRACT = Contract(
    consumer="software-mansion/react-native-executorch @ 81c22d5e (main, 2026-06-29): packages/react-native-executorch/common/rnexecutorch/models/text_to_image",
    tokens=77,
    hidden=768,
    latent_channels=4,
    latent_downsample=8,
    image_multiple=32,
    guidance_scale=7.5,
    unconditional_prompt="<|startoftext|>",
    latents_scale=0.18215,
    min_steps=2,
    scheduler_keys=("beta_start", "beta_end", "num_train_timesteps", "steps_offset"),
    files={
        "tokenizer": "tokenizer/tokenizer.json",
        "scheduler": "scheduler/scheduler_config.json",
        "encoder": "text_encoder.pte",
        "unet": "unet.pte",
        "decoder": "vae_decoder.pte",
    },
)

FAMILIES = ("stable-diffusion",)
MIN_PSNR_DB = 60.0  # each program against its eager graph, float32 XNNPACK
DEFAULT_STEPS = 20


# -- the app's scheduler, as its source computes it ---------------------------------------------


def app_alphas_cumprod(beta_start: float, beta_end: float, train_timesteps: int) -> np.ndarray:
    """Scheduler.cpp: scaled-linear betas in float32, whatever beta_schedule the JSON names."""
    return scaled_linear_alphas_cumprod(beta_start, beta_end, train_timesteps)


def app_timesteps(steps: int, train_timesteps: int, steps_offset: int) -> list[int]:
    """Scheduler::setTimesteps: round(i * T / n) + offset, the second-to-last repeated, descending."""
    if steps < CONTRACT.min_steps:
        raise EdgegenError(f"react-native-executorch runs at least {CONTRACT.min_steps} steps (1 reads past its timestep list)")
    ratio = np.float32(train_timesteps) / np.float32(steps)  # float32, rounded half away from zero (std::round)
    timesteps = [int(math.floor(float(np.float32(i) * ratio) + 0.5)) + steps_offset for i in range(steps)]
    timesteps.insert(len(timesteps) - 1, timesteps[steps - 2])
    return timesteps[::-1]


class AppPNDM:
    """Scheduler.cpp's PNDM (PLMS only, v-prediction), step by step; a port for the loop tests."""

    def __init__(self, config: dict[str, Any]):
        self.train_timesteps = int(config["num_train_timesteps"])
        self.steps_offset = int(config["steps_offset"])
        self.alphas = app_alphas_cumprod(float(config["beta_start"]), float(config["beta_end"]), self.train_timesteps)
        self.final_alpha = self.alphas[0]

    def set_timesteps(self, steps: int) -> list[int]:
        self.ratio = np.float32(self.train_timesteps / steps)
        self.ets: list[np.ndarray] = []
        self.first_sample: np.ndarray | None = None
        self.timesteps = app_timesteps(steps, self.train_timesteps, self.steps_offset)
        return self.timesteps

    def step(self, model_output: np.ndarray, timestep: int, sample: np.ndarray) -> np.ndarray:
        previous = int(timestep - self.ratio)  # passed to an int32 parameter: truncated
        if not self.ets:
            self.ets.append(model_output)
            self.first_sample = sample
            return self._previous_sample(sample, model_output, timestep, previous)
        if len(self.ets) == 1 and self.first_sample is not None:
            output = (model_output + self.ets[0]) / 2
            first, self.first_sample = self.first_sample, None
            return self._previous_sample(first, output, int(timestep + self.ratio), timestep)
        self.ets.append(model_output)
        e = self.ets[-4:]
        self.ets = e
        if len(e) == 2:
            output = (3 * e[1] - e[0]) / 2
        elif len(e) == 3:
            output = (23 * e[2] - 16 * e[1] + 5 * e[0]) / 12
        else:
            output = (55 * e[3] - 59 * e[2] + 37 * e[1] - 9 * e[0]) / 24
        return self._previous_sample(sample, output, timestep, previous)

    def _previous_sample(self, sample: np.ndarray, v: np.ndarray, timestep: int, previous: int) -> np.ndarray:
        alpha = self.alphas[timestep]
        alpha_prev = self.alphas[previous] if previous >= 0 else self.final_alpha
        beta, beta_prev = 1 - alpha, 1 - alpha_prev
        noise_coeff = (alpha_prev - alpha) / (alpha * math.sqrt(beta_prev) + math.sqrt(alpha * beta * alpha_prev))
        sample_coeff = math.sqrt(alpha_prev / alpha)
        noise_term = (v * math.sqrt(alpha) + sample * math.sqrt(beta)) * noise_coeff
        return (sample * sample_coeff - noise_term).astype(np.float32)


# -- fitting a model to the contract ---------------------------------------------------------------


@dataclass
class Fit:
    """How one model meets the contract: the numbers its adapter graphs bake in."""

    model_tokens: int
    model_hidden: int
    latent_size: int
    vae_downsample: int
    prediction: str
    timestep_table: np.ndarray  # app timestep -> model timestep
    app_alphas: np.ndarray
    scheduler_config: dict[str, Any]  # scheduler_config.json
    adaptations: list[str]

    @property
    def image_size(self) -> int:
        return self.latent_size * CONTRACT.latent_downsample


def fit(pipeline_dir: Path, family_name: str) -> Fit:
    """The fit of the pipeline in ``pipeline_dir`` to the contract, decided from its configs before
    any weights load, or one line naming the constraint it breaks."""
    from transformers import AutoTokenizer

    from edgegen.families.base import spatial_size

    if family_name not in FAMILIES:
        raise EdgegenError(
            f"react-native-executorch's text-to-image runs one CLIP text encoder, a UNet and a VAE (Stable Diffusion 1.x); "
            f"this is a {family_name} pipeline"
        )
    unet, vae, text = (config(pipeline_dir, name) for name in ("unet", "vae", "text_encoder"))
    tokenizer = AutoTokenizer.from_pretrained(str(Path(pipeline_dir) / "tokenizer"))
    tokens = int(min(tokenizer.model_max_length, text["max_position_embeddings"]))
    hidden = int(unet["cross_attention_dim"])
    if hidden > CONTRACT.hidden:
        raise EdgegenError(
            f"react-native-executorch fixes the text states at [2, {CONTRACT.tokens}, {CONTRACT.hidden}]; this UNet attends to {hidden}-wide states "
            "(SD 2.x's text encoder)"
        )
    if tokens > CONTRACT.tokens:
        raise EdgegenError(f"react-native-executorch tokenizes to {CONTRACT.tokens} ids; this text encoder reads {tokens}")
    if unet["in_channels"] != CONTRACT.latent_channels or vae["latent_channels"] != CONTRACT.latent_channels:
        raise EdgegenError(f"react-native-executorch draws {CONTRACT.latent_channels}-channel latents; this UNet takes {unet['in_channels']}")
    if tokenizer.bos_token != CONTRACT.unconditional_prompt:
        raise EdgegenError(
            f"react-native-executorch's unconditional prompt is the literal {CONTRACT.unconditional_prompt!r}, which this tokenizer "
            f"does not know as its start token ({tokenizer.bos_token!r})"
        )
    height, width = spatial_size(unet["sample_size"])
    if height != width:
        raise EdgegenError(f"react-native-executorch makes square images; this UNet's latents are {height}x{width}")
    vae_downsample = 2 ** (len(vae["block_out_channels"]) - 1)
    if CONTRACT.latent_downsample % vae_downsample:
        raise EdgegenError(f"react-native-executorch's images are 8x the latents; this VAE upsamples {vae_downsample}x")
    if (height * CONTRACT.latent_downsample) % CONTRACT.image_multiple:
        raise EdgegenError(
            f"react-native-executorch takes image sizes that are multiples of {CONTRACT.image_multiple}; "
            f"{height}x{height} latents make {height * CONTRACT.latent_downsample}"
        )
    scheduler = training_scheduler(pipeline_dir)
    app_config = scheduler_config(scheduler.config)
    app = app_alphas_cumprod(app_config["beta_start"], app_config["beta_end"], app_config["num_train_timesteps"])
    schedule = fit_schedule(scheduler, app, "react-native-executorch's scheduler", "reads v-prediction")
    prediction = schedule.prediction
    adaptations = []
    if tokens < CONTRACT.tokens or hidden < CONTRACT.hidden:
        adaptations.append(
            f"text states: the encoder reads the first {tokens} of the app's {CONTRACT.tokens} ids and zero-pads its [1, {tokens}, {hidden}] "
            f"states to [1, {CONTRACT.tokens}, {CONTRACT.hidden}]; the UNet reads back [:, :{tokens}, :{hidden}]"
        )
    adaptations += schedule.adaptations
    if prediction == "epsilon":
        adaptations.append("prediction: the app's scheduler reads v; the UNet converts the model's epsilon to v at the app's noise level")
    if vae_downsample != CONTRACT.latent_downsample:
        repeat = CONTRACT.latent_downsample // vae_downsample
        adaptations.append(f"image size: this VAE decodes {height * vae_downsample} px from {height} latents; each pixel is repeated {repeat}x{repeat} to the app's {height * 8} px")
    return Fit(tokens, hidden, height, vae_downsample, prediction, schedule.timestep_table, app, app_config, adaptations)


def app_modules(pipeline: Any, fit: Fit) -> dict[str, Any]:
    """The encoder, UNet and decoder as the app calls them, around the pipeline's own modules."""
    import torch

    ids_of_tokenizer = special_ids(pipeline.tokenizer)

    from edgegen.families.base import vae_decoder_module

    text_encoder, unet = pipeline.text_encoder, pipeline.unet
    decoder = vae_decoder_module(pipeline.vae)
    tokens, hidden = fit.model_tokens, fit.model_hidden

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.text_encoder = text_encoder

        def forward(self, input_ids, attention_mask):
            # CLIP in Stable Diffusion attends causally and ignores padding masks; the app's mask
            # (ids != 0) is accepted and unused, as the pipeline does.
            ids = clip_ids_as_the_pipeline_tokenizes(input_ids, tokens, *ids_of_tokenizer)
            states = self.text_encoder(ids, return_dict=False)[0]
            return torch.nn.functional.pad(states, (0, CONTRACT.hidden - hidden, 0, CONTRACT.tokens - tokens))

    class UNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unet = unet
            self.register_buffer("model_timestep", torch.from_numpy(fit.timestep_table))
            alphas = torch.from_numpy(fit.app_alphas.astype(np.float32))
            self.register_buffer("sqrt_alpha", alphas.sqrt())
            self.register_buffer("sqrt_one_minus_alpha", (1 - alphas).sqrt())

        def forward(self, latents, timestep, embeddings):
            index = timestep.clamp(0, self.model_timestep.shape[0] - 1)
            t = self.model_timestep.index_select(0, index).expand(latents.shape[0])
            output = self.unet(latents, t, encoder_hidden_states=embeddings[:, :tokens, :hidden], return_dict=False)[0]
            if fit.prediction == "epsilon":
                # v = (eps - sqrt(1 - a) x) / sqrt(a), at the noise level the app's scheduler assumes
                a = self.sqrt_alpha.index_select(0, index).reshape(1, 1, 1, 1)
                b = self.sqrt_one_minus_alpha.index_select(0, index).reshape(1, 1, 1, 1)
                output = (output - b * latents) / a
            return output

    repeat = CONTRACT.latent_downsample // fit.vae_downsample

    class Decoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.decoder = decoder

        def forward(self, latents):
            image = self.decoder(latents * CONTRACT.latents_scale)  # the app divided by it
            if repeat > 1:
                image = image.repeat_interleave(repeat, dim=2).repeat_interleave(repeat, dim=3)
            # The app casts to uint8, which truncates: half a level up makes that a rounding.
            image = ((image / 2 + 0.5).clamp(0, 1) * 255 + 0.5).permute(0, 2, 3, 1)
            return image

    return {"encoder": Encoder().eval(), "unet": UNet().eval(), "decoder": Decoder().eval()}


def app_example_inputs(fit: Fit, bos_id: int, pad_id: int, seed: int = 0) -> dict[str, tuple]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    ids = torch.full((1, CONTRACT.tokens), pad_id, dtype=torch.int64)
    ids[0, :3] = torch.tensor([bos_id, 5, pad_id])
    size = fit.latent_size
    return {
        "encoder": (ids, (ids != 0).to(torch.int64)),
        "unet": (
            torch.randn((2, CONTRACT.latent_channels, size, size), generator=generator),
            torch.tensor([501], dtype=torch.int64),
            torch.nn.functional.pad(torch.randn((2, fit.model_tokens, fit.model_hidden), generator=generator), (0, CONTRACT.hidden - fit.model_hidden, 0, CONTRACT.tokens - fit.model_tokens)),
        ),
        "decoder": (torch.randn((1, CONTRACT.latent_channels, size, size), generator=generator) / CONTRACT.latents_scale,),
    }


INPUT_NAMES = {"encoder": ["input_ids", "attention_mask"], "unet": ["latents", "timestep", "embeddings"], "decoder": ["latents"]}
OUTPUT_NAMES = {"encoder": ["embeddings"], "unet": ["v_prediction"], "decoder": ["image_hwc_0_255"]}


# -- the two JSON files ---------------------------------------------------------------------------


def scheduler_config(config: Any) -> dict[str, Any]:
    """The four numbers the app reads, from the model's scheduler config where it names them."""
    values = {
        "beta_start": float(config.get("beta_start", 0.00085)),
        "beta_end": float(config.get("beta_end", 0.012)),
        "num_train_timesteps": int(config.get("num_train_timesteps", 1000)),
        "steps_offset": int(config.get("steps_offset", 1)),
    }
    # What the app runs, written as diffusers would read it: a reader of this file sees the same.
    return {"_class_name": "PNDMScheduler", **values, "beta_schedule": "scaled_linear", "prediction_type": "v_prediction",
            "set_alpha_to_one": False, "skip_prk_steps": True, "timestep_spacing": "leading"}


def write_tokenizer_json(pipeline: Any, pipeline_dir: Path, tokens: int, destination: Path) -> int:
    """The pipeline's tokenizer as a tokenizers JSON that pads to 77 and truncates to the encoder's
    length itself, with a TemplateProcessing post-processor (the app's tokenizer library takes
    no other); returns the padding id."""
    from tokenizers.processors import TemplateProcessing
    from transformers import CLIPTokenizerFast

    tokenizer = pipeline.tokenizer
    if not getattr(tokenizer, "is_fast", False):
        tokenizer = CLIPTokenizerFast.from_pretrained(str(Path(pipeline_dir) / "tokenizer"))
    backend = tokenizer.backend_tokenizer.__class__.from_str(tokenizer.backend_tokenizer.to_str())
    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    pad = tokenizer.pad_token or eos
    pad_id = tokenizer.convert_tokens_to_ids(pad)
    backend.post_processor = TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} $B {eos}",
        special_tokens=[(bos, tokenizer.convert_tokens_to_ids(bos)), (eos, tokenizer.convert_tokens_to_ids(eos))],
    )
    backend.enable_truncation(max_length=tokens)
    backend.enable_padding(length=CONTRACT.tokens, pad_id=pad_id, pad_token=pad)
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_text(backend.to_str(pretty=True), encoding="utf-8")
    return int(pad_id)


# -- writing a bundle ----------------------------------------------------------------------------------


def export_program(name: str, module: Any, example: tuple, folder: Path) -> float:
    """``module`` as a float32 XNNPACK ``.pte`` with method ``forward``, through the ExecuTorch
    exporter (its delegation rewrites included), written under the contract's name in ``folder``;
    its PSNR against eager on ``example``, refused below ``MIN_PSNR_DB``."""
    import tempfile

    from edgegen.exporting.base import ExportOptions
    from edgegen.measure.metrics import psnr_db
    from edgegen.registry import EXPORTERS

    component = program_component(name, module, example, INPUT_NAMES[name], OUTPUT_NAMES[name][0])
    expected = component.run_eager()[OUTPUT_NAMES[name][0]]
    path = folder / CONTRACT.files[name]
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        # One file per program: the app loads each source as one .pte.
        exported = EXPORTERS.get("executorch").export(component, Path(scratch), ExportOptions(backend="xnnpack", separate_weights=False))
        (Path(scratch) / exported.model_file).rename(path)
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(path).load_method("forward")
    produced = method.execute(list(example))[0]
    psnr = psnr_db(expected.numpy(), produced.numpy())
    if not psnr >= MIN_PSNR_DB:
        raise EdgegenError(f"the bundle's {name} program is {psnr:.1f} dB from its eager graph (< {MIN_PSNR_DB:.0f}); nothing was written")
    return psnr


def write(pipeline_dir: Path, output: Path, force: bool = False) -> Path:
    """The five files in ``output``, all or nothing, with ``bundle.json`` beside them."""
    import datetime as dt

    from edgegen.artifact import sha256_file, staged_folder
    from edgegen.families import family_of
    from edgegen.families.loading import checkpoint_sha256, load_pipeline
    from edgegen.schema.base import write_json
    from edgegen.schema.bundle import BUNDLE_MANIFEST, BundleFile, BundleManifest
    from edgegen.versions import edgegen_version, versions_of

    family = family_of(pipeline_dir)
    fitted = fit(pipeline_dir, family.name)
    with staged_folder(Path(output), force=force) as staging:
        pipeline = load_pipeline(pipeline_dir)
        folder = staging.folder
        pad_id = write_tokenizer_json(pipeline, pipeline_dir, fitted.model_tokens, folder / CONTRACT.files["tokenizer"])
        scheduler_path = folder / CONTRACT.files["scheduler"]
        scheduler_path.parent.mkdir(parents=True, exist_ok=True)
        scheduler_path.write_text(json.dumps(fitted.scheduler_config, indent=2) + "\n", encoding="utf-8")
        modules, examples = app_modules(pipeline, fitted), app_example_inputs(fitted, pipeline.tokenizer.bos_token_id, pad_id)
        parity = {name: export_program(name, modules[name], examples[name], folder) for name in ("encoder", "unet", "decoder")}
        files = [
            BundleFile(role=role, path=relative, sha256=sha256_file(folder / relative), bytes=(folder / relative).stat().st_size, parity_psnr_db=parity.get(role))
            for role, relative in CONTRACT.files.items()
        ]
        manifest = BundleManifest(
            edgegen_version=edgegen_version(), created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            format="react-native-executorch", consumer=CONTRACT.consumer, source_dir=str(Path(pipeline_dir).resolve()), family=family.name,
            checkpoint_sha256=checkpoint_sha256(pipeline_dir, "unet"), image_size=fitted.image_size, steps_hint=DEFAULT_STEPS, files=files,
            adaptations=fitted.adaptations, toolchain=versions_of(("torch", "executorch", "tokenizers")),
            next_steps=next_steps(fitted),
        )
        write_json(folder / BUNDLE_MANIFEST, manifest)
        staging.commit()
    return Path(output)


def next_steps(fitted: Fit) -> list[str]:
    files = CONTRACT.files
    return [
        "Serve or ship these files with the app, then: "
        "const model = useTextToImage({ model: { modelName: 'edgegen', "
        f"tokenizerSource: TOKENIZER_URL /* {files['tokenizer']} */, schedulerSource: SCHEDULER_URL /* {files['scheduler']} */, "
        f"encoderSource: ENCODER_URL /* {files['encoder']} */, unetSource: UNET_URL /* {files['unet']} */, decoderSource: DECODER_URL /* {files['decoder']} */ }} }});",
        f"Generate at exactly this size: await model.generate(prompt, {fitted.image_size}, steps /* >= {CONTRACT.min_steps} */, seed); the programs have static shapes.",
        "The programs were written by this machine's ExecuTorch (see toolchain); the app's runtime must be at least as new "
        "(react-native-executorch v0.9.x bundles ExecuTorch 1.1, main 1.3).",
    ]



class ReactNativeExecutorchFormat:
    name = "react-native-executorch"
    contract = CONTRACT
    write = staticmethod(write)


FORMAT = ReactNativeExecutorchFormat()
