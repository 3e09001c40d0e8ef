"""apple/ml-stable-diffusion's Swift ``StableDiffusionPipeline``: the resources folder it loads.

Everything that package fixes is in ``CONTRACT`` (docs/consumers/apple-ml-stable-diffusion.md
quotes its source for each rule): compiled Core ML models named ``TextEncoder``, ``Unet`` and
``VAEDecoder``, and the tokenizer's ``vocab.json`` and ``merges.txt``. Its loop is fixed too:
PNDM or DPM-Solver++ on scaled-linear betas (0.00085 to 0.012, 1000 steps, in code, not read from
the folder), epsilon prediction, guidance with the unconditional half first, and the decoder fed
``latents / 0.18215``.

A model that differs is fitted inside its graphs, each call exactly, and ``bundle.json`` lists each fit:
the text encoder takes the app's float32 ids and zero-pads shorter states to 77 tokens; the UNet
takes ``[B, D, 1, 77]`` states, runs each app timestep at the model timestep of the same noise
level, and turns a v-prediction into epsilon; the decoder applies the model's own latent scaling.
The app loads only compiled ``.mlmodelc``: on macOS the packages are compiled with ``xcrun
coremlcompiler``; elsewhere they are written as ``.mlpackage`` with the one command that compiles
them on a Mac. An SDXL or SD3 pipeline gets the folder of the package's XL or SD3 pipeline class
(``apple_swift_xl``, ``apple_swift_sd3``), written by the same ``write``.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
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
    latent_channels: int
    beta_start: float  # Scheduler.swift's defaults: the schedule is not read from the folder
    beta_end: float
    train_timesteps: int
    latents_scale: float  # PipelineConfiguration.decoderScaleFactor's default
    models: dict[str, str]  # role -> model name (a compiled <name>.mlmodelc)
    inputs: dict[str, list[str]]
    outputs: dict[str, str]
    tokenizer_files: tuple[str, ...]


CONTRACT = Contract(
    consumer="apple/ml-stable-diffusion @ e12202c1 (2025-07-03): swift/StableDiffusion/pipeline",
    tokens=77,
    latent_channels=4,
    beta_start=0.00085,
    beta_end=0.012,
    train_timesteps=1000,
    latents_scale=0.18215,
    models={"encoder": "TextEncoder", "unet": "Unet", "decoder": "VAEDecoder"},
    inputs={"encoder": ["input_ids"], "unet": ["sample", "timestep", "encoder_hidden_states"], "decoder": ["z"]},
    outputs={"encoder": "last_hidden_state", "unet": "noise_pred", "decoder": "image"},
    tokenizer_files=("vocab.json", "merges.txt"),
)

FAMILIES = ("stable-diffusion",)
# Each converted graph against its eager one, where Core ML runs (macOS): the packages compute in
# float16, as ml-stable-diffusion's converter writes them and the Neural Engine runs them.
MIN_PSNR_DB = 35.0
DEFAULT_STEPS = 20
# ml-stable-diffusion's README: the UNet must be split in two packages "each with less than 1GB of
# weights" for the Neural Engine on iOS and iPadOS; the Swift pipeline loads UnetChunk1/2 first.
ANE_PACKAGE_WEIGHT_BYTES = 10**9
UNET_CHUNKS = ("UnetChunk1", "UnetChunk2")


def swift_alphas_cumprod() -> np.ndarray:
    return scaled_linear_alphas_cumprod(CONTRACT.beta_start, CONTRACT.beta_end, CONTRACT.train_timesteps)


def swift_pndm_timesteps(steps: int) -> list[int]:
    """Scheduler.swift's PNDM: i * (1000 // n) + 1, the second-to-last repeated, descending."""
    ratio = CONTRACT.train_timesteps // steps
    forward = [i * ratio + 1 for i in range(steps)]
    return (forward[:-1] + [forward[-2], forward[-1]])[::-1]


class SwiftPNDM:
    """Scheduler.swift's PNDMScheduler (PLMS, epsilon), and the x0 it keeps for the decoder: the
    pipeline decodes the last step's predicted original sample, not the last sample."""

    def __init__(self, steps: int):
        self.alphas = swift_alphas_cumprod()
        self.ratio = CONTRACT.train_timesteps // steps
        self.timesteps = swift_pndm_timesteps(steps)
        self.ets: list[np.ndarray] = []
        self.counter = 0
        self.current_sample: np.ndarray | None = None
        self.denoised: np.ndarray | None = None

    def step(self, output: np.ndarray, timestep: int, sample: np.ndarray) -> np.ndarray:
        previous = timestep - self.ratio
        if self.counter != 1:
            self.ets = (self.ets + [output])[-4:]
        else:
            previous, timestep = timestep, timestep + self.ratio
        if len(self.ets) == 1 and self.counter == 0:
            combined, self.current_sample = output, sample
        elif len(self.ets) == 1 and self.counter == 1:
            combined = (output + self.ets[-1]) / 2
            sample, self.current_sample = self.current_sample, None
        elif len(self.ets) == 2:
            combined = (3 * self.ets[-1] - self.ets[-2]) / 2
        elif len(self.ets) == 3:
            combined = (23 * self.ets[-1] - 16 * self.ets[-2] + 5 * self.ets[-3]) / 12
        else:
            combined = (55 * self.ets[-1] - 59 * self.ets[-2] + 37 * self.ets[-3] - 9 * self.ets[-4]) / 24
        self.counter += 1
        # convertModelOutput on the combined output, at the step's (shifted) timestep and sample:
        # the pipeline decodes the last one.
        alpha = self.alphas[timestep]
        self.denoised = ((sample - np.sqrt(1 - alpha) * combined) / np.sqrt(alpha)).astype(np.float32)
        return self._previous_sample(sample, timestep, previous, combined)

    def _previous_sample(self, sample: np.ndarray, timestep: int, previous: int, output: np.ndarray) -> np.ndarray:
        alpha = self.alphas[timestep]
        alpha_prev = self.alphas[max(0, previous)]
        beta, beta_prev = 1 - alpha, 1 - alpha_prev
        sample_coeff = np.sqrt(alpha_prev / alpha)
        denominator = alpha * np.sqrt(beta_prev) + np.sqrt(alpha * beta * alpha_prev)
        return (sample_coeff * sample - (alpha_prev - alpha) * output / denominator).astype(np.float32)


def linspace32(start: float, end: float, count: int) -> np.ndarray:
    """Scheduler.swift's linspace, in float32: Float(i) * ((end - start) / Float(count - 1)) + start."""
    start, end = np.float32(start), np.float32(end)
    return (np.arange(count, dtype=np.float32) * ((end - start) / np.float32(count - 1)) + start).astype(np.float32)


def swift_dpm_timesteps(steps: int) -> list[int]:
    """DPMSolverMultistepScheduler.swift, .linspace (the pipeline's default spacing):
    linspace(0, 999, n + 1) without its first, descending, each rounded (Swift's round: halves away from zero)."""
    grid = linspace32(0, CONTRACT.train_timesteps - 1, steps + 1)[1:][::-1]
    return [int(np.floor(float(value) + 0.5)) for value in grid]


class SwiftDPMSolver:
    """DPMSolverMultistepScheduler.swift (DPM-Solver++, second order, midpoint, epsilon), step by
    step, with the x0 it keeps for the decoder (``modelOutputs.last``). Below 15 steps it takes
    first-order steps at the last two timesteps (diffusers only at the last)."""

    def __init__(self, steps: int):
        alphas = swift_alphas_cumprod()
        self.alpha_t = np.sqrt(alphas).astype(np.float32)
        self.sigma_t = np.sqrt(np.float32(1) - alphas).astype(np.float32)
        self.lambda_t = (np.log(self.alpha_t) - np.log(self.sigma_t)).astype(np.float32)
        self.timesteps = swift_dpm_timesteps(steps)
        self.model_outputs: list[np.ndarray] = []
        self.lower_order_stepped = 0
        self.denoised: np.ndarray | None = None

    def step(self, output: np.ndarray, timestep: int, sample: np.ndarray) -> np.ndarray:
        steps = self.timesteps
        index = steps.index(timestep) if timestep in steps else len(steps) - 1
        previous = 0 if index == len(steps) - 1 else steps[index + 1]
        lower_order_final = index == len(steps) - 1 and len(steps) < 15
        lower_order_second = index == len(steps) - 2 and len(steps) < 15
        lower_order = self.lower_order_stepped < 1 or lower_order_final or lower_order_second
        clean = ((sample - output * self.sigma_t[timestep]) / self.alpha_t[timestep]).astype(np.float32)  # convertModelOutput
        self.model_outputs = (self.model_outputs + [clean])[-2:]
        self.denoised = clean
        lambda_t, alpha_t, sigma_t = (float(v[previous]) for v in (self.lambda_t, self.alpha_t, self.sigma_t))
        if lower_order:
            h = lambda_t - float(self.lambda_t[timestep])
            result = (sigma_t / float(self.sigma_t[timestep])) * sample - alpha_t * (np.exp(-h) - 1) * clean
        else:
            s0, s1 = timestep, steps[index - 1]
            m0, m1 = self.model_outputs[-1], self.model_outputs[-2]
            h, h_0 = lambda_t - float(self.lambda_t[s0]), float(self.lambda_t[s0]) - float(self.lambda_t[s1])
            r0 = h_0 / h
            d1 = (1 / r0) * m0 - (1 / r0) * m1
            result = (sigma_t / float(self.sigma_t[s0])) * sample - alpha_t * (np.exp(-h) - 1) * m0 - 0.5 * alpha_t * (np.exp(-h) - 1) * d1
        if self.lower_order_stepped < 2:
            self.lower_order_stepped += 1
        return result.astype(np.float32)


SWIFT_SCHEDULERS = {"pndm": SwiftPNDM, "dpmpp": SwiftDPMSolver}  # the Swift CLI's --scheduler names


@dataclass
class Fit:
    model_tokens: int
    hidden: int
    latent_size: int
    prediction: str
    timestep_table: np.ndarray  # the app's timestep -> the model's
    adaptations: list[str]


def fit(pipeline_dir: Path, family_name: str) -> Fit:
    """The fit of the pipeline in ``pipeline_dir`` to the Swift package, from its configs, or one line."""
    from transformers import AutoTokenizer

    from edgegen.families.base import spatial_size

    if family_name not in FAMILIES:
        raise EdgegenError(f"the Swift package has pipelines for Stable Diffusion 1.x/2.x, SDXL and SD3; this is a {family_name} pipeline")
    unet, vae, text = (config(pipeline_dir, name) for name in ("unet", "vae", "text_encoder"))
    tokenizer = AutoTokenizer.from_pretrained(str(Path(pipeline_dir) / "tokenizer"))
    if tokenizer.bos_token != "<|startoftext|>" or tokenizer.eos_token != "<|endoftext|>":
        raise EdgegenError("the Swift BPETokenizer adds <|startoftext|> and <|endoftext|>; this tokenizer's start and end tokens differ")
    tokens = int(min(tokenizer.model_max_length, text["max_position_embeddings"]))
    if tokens > CONTRACT.tokens:
        raise EdgegenError(f"the Swift pipeline's text encoder input is {CONTRACT.tokens} ids; this one reads {tokens}")
    if unet["in_channels"] != CONTRACT.latent_channels:
        raise EdgegenError(f"the Swift pipeline draws {CONTRACT.latent_channels}-channel latents; this UNet takes {unet['in_channels']}")
    height, width = spatial_size(unet["sample_size"])
    schedule = fit_schedule(training_scheduler(pipeline_dir), swift_alphas_cumprod(), "the Swift schedulers", "read epsilon")
    prediction = schedule.prediction
    adaptations = []
    if tokens < CONTRACT.tokens:
        adaptations.append(f"text states: the encoder reads the first {tokens} of the app's {CONTRACT.tokens} ids and zero-pads to {CONTRACT.tokens} tokens; the UNet reads back the first {tokens}")
    adaptations += schedule.adaptations
    if prediction == "v_prediction":
        adaptations.append("prediction: the Swift schedulers read epsilon; the UNet converts the model's v to epsilon at the app's noise level")
    if float(vae.get("scaling_factor", CONTRACT.latents_scale)) != CONTRACT.latents_scale:
        adaptations.append(f"latent scale: the app divides by {CONTRACT.latents_scale}; the decoder multiplies it back and applies the VAE's own ({vae.get('scaling_factor')})")
    return Fit(tokens, int(unet["cross_attention_dim"]), height if height == width else -1, prediction, schedule.timestep_table, adaptations)


def app_modules(pipeline: Any, fitted: Fit) -> dict[str, Any]:
    """TextEncoder, Unet and VAEDecoder as the Swift package calls them, around the pipeline's modules."""
    import torch

    from edgegen.families.base import vae_decoder_module

    text_encoder, unet = pipeline.text_encoder, pipeline.unet
    decoder = vae_decoder_module(pipeline.vae)
    tokens = fitted.model_tokens
    # BPETokenizer pads with <|endoftext|> and drops the end token when it cuts a long prompt.
    ids_of_tokenizer = special_ids(pipeline.tokenizer)

    class TextEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.text_encoder = text_encoder

        def forward(self, input_ids):  # float32 ids: the Swift side sends Float32
            ids = clip_ids_as_the_pipeline_tokenizes(input_ids.to(torch.int32), tokens, *ids_of_tokenizer)
            states = self.text_encoder(ids, return_dict=False)[0]
            return torch.nn.functional.pad(states, (0, 0, 0, CONTRACT.tokens - tokens))

    class VAEDecoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.decoder = decoder

        def forward(self, z):
            return self.decoder(z * CONTRACT.latents_scale)  # the app divided by it; the module applies the VAE's own

    unet_module = swift_unet(unet, fitted.timestep_table, fitted.prediction, tokens)
    return {"encoder": TextEncoder().eval(), "unet": unet_module, "decoder": VAEDecoder().eval()}


def swift_unet(unet: Any, timestep_table: np.ndarray, prediction: str, tokens: int, added_conditioning: bool = False) -> Any:
    """The UNet as the Swift pipelines call it: ``[B, D, 1, 77]`` states read back to the model's
    ``tokens``, each app timestep run at the model timestep of the same noise level, and a
    v-prediction turned into the epsilon the Swift schedulers read. With ``added_conditioning``
    (SDXL) it also takes ``text_embeds`` and ``time_ids``."""
    import torch

    alphas = torch.from_numpy(swift_alphas_cumprod())

    class Unet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unet = unet
            self.register_buffer("model_timestep", torch.from_numpy(timestep_table))
            self.register_buffer("sqrt_alpha", alphas.sqrt())
            self.register_buffer("sqrt_one_minus_alpha", (1 - alphas).sqrt())

        def predict_epsilon(self, sample, timestep, encoder_hidden_states, **unet_inputs):
            index = timestep.to(torch.int32).clamp(0, self.model_timestep.shape[0] - 1)
            states = encoder_hidden_states.squeeze(2).transpose(1, 2)[:, :tokens]  # [B, D, 1, 77] -> [B, tokens, D]
            output = self.unet(sample, self.model_timestep.index_select(0, index), encoder_hidden_states=states, return_dict=False, **unet_inputs)[0]
            if prediction == "v_prediction":
                # epsilon = sqrt(a) v + sqrt(1 - a) x, at the noise level the Swift scheduler assumes
                a = self.sqrt_alpha.index_select(0, index).reshape(-1, 1, 1, 1)
                b = self.sqrt_one_minus_alpha.index_select(0, index).reshape(-1, 1, 1, 1)
                output = a * output + b * sample
            return output

        def forward(self, sample, timestep, encoder_hidden_states):
            return self.predict_epsilon(sample, timestep, encoder_hidden_states)

    class UnetXL(Unet):
        def forward(self, sample, timestep, encoder_hidden_states, text_embeds, time_ids):
            return self.predict_epsilon(sample, timestep, encoder_hidden_states, added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids})

    return (UnetXL if added_conditioning else Unet)().eval()


def app_example_inputs(fitted: Fit, bos_id: int, eos_id: int, seed: int = 0) -> dict[str, tuple]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    ids = torch.full((1, CONTRACT.tokens), float(eos_id))
    ids[0, 0] = float(bos_id)
    size = fitted.latent_size
    return {
        "encoder": (ids,),
        "unet": (
            torch.randn((2, CONTRACT.latent_channels, size, size), generator=generator),
            torch.tensor([501.0, 501.0]),
            torch.nn.functional.pad(torch.randn((2, fitted.hidden, 1, fitted.model_tokens), generator=generator), (0, CONTRACT.tokens - fitted.model_tokens)),
        ),
        "decoder": (torch.randn((1, CONTRACT.latent_channels, size, size), generator=generator) / CONTRACT.latents_scale,),
    }


def write_vocabulary(pipeline_dir: Path, folder: Path) -> tuple[int, int]:
    """``vocab.json`` and ``merges.txt`` as BPETokenizer reads them (a '#version' line, then one
    merge per line, each line ending in a newline); the start and end ids."""
    from transformers import CLIPTokenizerFast

    tokenizer = CLIPTokenizerFast.from_pretrained(str(Path(pipeline_dir) / "tokenizer"))
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in model["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{merge}\n" for merge in merges), encoding="utf-8")
    return tokenizer.bos_token_id, tokenizer.eos_token_id


def convert(model: str, module: Any, example: tuple, input_names: list[str], output_names: list[str], folder: Path, float16: bool = True) -> Path:
    """``module`` as ``<model>.mlpackage`` in ``folder`` through the Core ML exporter, computing in
    float16 as ml-stable-diffusion's converter writes it (or float32); its path."""
    import tempfile

    from edgegen.exporting.base import ExportOptions
    from edgegen.families.loading import LoadOptions
    from edgegen.registry import EXPORTERS

    component = program_component(model, module, example, input_names, output_names)
    package = folder / f"{model}.mlpackage"
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        # A float16 compute precision: the Core ML exporter's float16 load path, on the float32 graph.
        exported = EXPORTERS.get("coreml").export(component, Path(scratch), ExportOptions(load=LoadOptions(dtype="float16" if float16 else "float32")))
        (Path(scratch) / exported.model_file).rename(package)
    return package


def coreml_parity(package: Path, module: Any, example: tuple, input_names: list[str], output_names: list[str]) -> float | None:
    """The lowest PSNR of the package's outputs against eager where Core ML predicts (macOS); None elsewhere."""
    if platform.system() != "Darwin":
        return None
    import coremltools as ct
    import torch

    from edgegen.measure.metrics import psnr_db

    with torch.no_grad():
        expected = module(*example)
    expected = expected if isinstance(expected, tuple) else (expected,)
    model = ct.models.MLModel(str(package), compute_units=ct.ComputeUnit.CPU_ONLY)
    produced = model.predict({n: t.numpy() for n, t in zip(input_names, example, strict=True)})
    psnr = min(psnr_db(value.numpy(), produced[name]) for name, value in zip(output_names, expected, strict=True))
    if not psnr >= MIN_PSNR_DB:
        raise EdgegenError(f"the bundle's {package.stem} is {psnr:.1f} dB from its eager graph (< {MIN_PSNR_DB:.0f}); nothing was written")
    return psnr


def weight_bytes(package: Path) -> int:
    """The bytes of a package's weight files (what the Neural Engine's size limit counts)."""
    weights = package / "Data" / "com.apple.CoreML" / "weights"
    return sum(each.stat().st_size for each in weights.rglob("*") if each.is_file()) if weights.is_dir() else 0


def split_unet(folder: Path) -> list[str]:
    """Unet.mlpackage split by coremltools' ``bisect_model`` (the split ml-stable-diffusion's
    ``--chunk-unet`` makes) into UnetChunk1/2.mlpackage: two halves of about equal weights, chunk 1
    ending in the tensors chunk 2 reads, which the Swift pipeline passes by name; the chunks' names."""
    import tempfile

    from coremltools.models.utils import bisect_model

    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        bisect_model(str(folder / "Unet.mlpackage"), str(scratch), merge_chunks_to_pipeline=False, check_output_correctness=platform.system() == "Darwin")
        for index, name in enumerate(UNET_CHUNKS, start=1):
            (Path(scratch) / f"Unet_chunk{index}.mlpackage").rename(folder / f"{name}.mlpackage")
    shutil.rmtree(folder / "Unet.mlpackage")
    return list(UNET_CHUNKS)


def compile_command(models: list[str]) -> str:
    return " && ".join(f"xcrun coremlcompiler compile {model}.mlpackage ." for model in models)


def compile_packages(folder: Path, models: list[str]) -> bool:
    """Compile each package to ``.mlmodelc`` beside it (and remove the package) where Xcode's
    compiler is; False where it is not (Linux)."""
    if platform.system() != "Darwin" or shutil.which("xcrun") is None:
        return False
    for model in models:
        subprocess.run(["xcrun", "coremlcompiler", "compile", f"{model}.mlpackage", "."], cwd=folder, check=True, capture_output=True)
        shutil.rmtree(folder / f"{model}.mlpackage")
    return True


@dataclass
class SwiftGraphs:
    """What one Swift pipeline class loads from the folder, fitted: each model's graph, its example
    inputs and its input and output names, and what the manifest says of it."""

    swift_pipeline: str  # the Swift class that opens the folder
    models: dict[str, str]  # role -> model name
    inputs: dict[str, list[str]]
    outputs: dict[str, list[str]]  # the first is the one Swift reads where it reads one
    modules: dict[str, Any]
    examples: dict[str, tuple]
    latent_size: int
    image_size: int
    adaptations: list[str]
    app_settings: str  # what the app must set that the folder cannot carry
    extra_files: list[str] = field(default_factory=list)  # written beside vocab.json and merges.txt
    # Roles converted in float32, as Apple's converter does where float16 overflows (SDXL's VAE,
    # SD3's MMDiT); the Swift pipelines run these on CPU and GPU.
    float32_roles: tuple[str, ...] = ()
    # The app's encoderScaleFactor, where the optional VAEEncoder (image-to-image) is written: the
    # Swift Encoder assumes 4 latent channels (SD3's image-to-image is broken there: none).
    encoder_scale: float | None = None


def sd_graphs(pipeline: Any, pipeline_dir: Path, fitted: Fit, bos_id: int, eos_id: int, folder: Path) -> SwiftGraphs:
    if fitted.latent_size < 0:
        raise EdgegenError("the Swift pipeline makes square images from the UNet's sample shape; this UNet's latents are not square")
    return SwiftGraphs(
        swift_pipeline="StableDiffusionPipeline(resourcesAt: URL(fileURLWithPath: FOLDER), controlNet: [], configuration: MLModelConfiguration())",
        models=CONTRACT.models, inputs=CONTRACT.inputs, outputs={role: [name] for role, name in CONTRACT.outputs.items()},
        modules=app_modules(pipeline, fitted), examples=app_example_inputs(fitted, bos_id, eos_id),
        latent_size=fitted.latent_size, image_size=_image_size(pipeline, fitted), adaptations=list(fitted.adaptations),
        app_settings="the pipeline's defaults (encoderScaleFactor and decoderScaleFactor 0.18215); the SD 1.x pipeline runs from iOS 16.2",
        encoder_scale=CONTRACT.latents_scale,
    )


def add_image_encoder(graphs: SwiftGraphs, vae: Any) -> SwiftGraphs:
    """The optional VAEEncoder (image-to-image) added to ``graphs`` where the VAE has a Gaussian
    posterior: Encoder.swift reads the first output as [1, 8, h, w] (mean, then log-variance),
    samples it and multiplies by encoderScaleFactor, so the graph scales the mean and shifts the
    log-variance to make that the model's scaled latents, exactly. A note where it is left out."""
    import math

    import torch

    from diffusers import AutoencoderKL

    scaling = float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)
    # A decoder student's AutoencoderTiny encodes the latent itself (and its encoder is untrained).
    gaussian = isinstance(vae, AutoencoderKL) and bool(getattr(vae.config, "double_z", True))
    standardized = getattr(vae.config, "latents_mean", None) is not None
    if graphs.encoder_scale is None or not gaussian or standardized or getattr(vae.config, "shift_factor", None) or int(vae.config.latent_channels) != 4:
        graphs.adaptations.append(
            "no VAEEncoder (optional, image-to-image): the Swift Encoder takes a 4-channel Gaussian posterior scaled by one factor, "
            f"which this VAE ({type(vae).__name__}) does not give"
        )
        return graphs
    ratio = scaling / graphs.encoder_scale
    encoder, quant_conv = vae.encoder, getattr(vae, "quant_conv", None)

    class VAEEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.quant_conv = encoder, quant_conv

        def forward(self, x):  # [1, 3, H, W] in [-1, 1]
            moments = self.encoder(x)
            if self.quant_conv is not None:
                moments = self.quant_conv(moments)
            mean, logvar = moments.chunk(2, dim=1)
            return torch.cat([mean * ratio, logvar + 2 * math.log(ratio)], dim=1)

    size = graphs.image_size
    example = (torch.rand((1, 3, size, size), generator=torch.Generator().manual_seed(0)) * 2 - 1,)
    graphs.models = {**graphs.models, "image_encoder": "VAEEncoder"}
    graphs.inputs = {**graphs.inputs, "image_encoder": ["x"]}
    graphs.outputs = {**graphs.outputs, "image_encoder": ["latent"]}
    graphs.modules = {**graphs.modules, "image_encoder": VAEEncoder().eval()}
    graphs.examples = {**graphs.examples, "image_encoder": example}
    if ratio != 1.0:
        graphs.adaptations.append(f"image encoder: the app multiplies by {graphs.encoder_scale}; the VAEEncoder's posterior is scaled so that gives the VAE's own ({scaling})")
    return graphs


def write(pipeline_dir: Path, output: Path, force: bool = False, chunk_unet: bool | None = None) -> Path:
    """The resources folder in ``output``, all or nothing, with ``bundle.json`` beside it; the UNet
    in two chunks when ``chunk_unet`` (None: when its weights exceed the Neural Engine's size).
    An SDXL pipeline gets StableDiffusionXLPipeline's folder (``apple_swift_xl``)."""
    import datetime as dt

    from edgegen.artifact import sha256_file, staged_folder
    from edgegen.bundling import apple_swift_sd3, apple_swift_xl
    from edgegen.families import components_with_role, family_of
    from edgegen.families.loading import checkpoint_sha256, load_pipeline
    from edgegen.schema.base import write_json
    from edgegen.schema.bundle import BUNDLE_MANIFEST, BundleFile, BundleManifest
    from edgegen.versions import edgegen_version, versions_of

    family = family_of(pipeline_dir)
    # Each Swift pipeline class: its fit (from the configs, before anything loads) and its graphs.
    if family.name in apple_swift_xl.FAMILIES:
        fitted, make_graphs = apple_swift_xl.fit(pipeline_dir, family.name), apple_swift_xl.graphs
    elif family.name in apple_swift_sd3.FAMILIES:
        fitted, make_graphs = apple_swift_sd3.fit(pipeline_dir, family.name), apple_swift_sd3.graphs
        if chunk_unet:
            raise EdgegenError("--chunk-unet: the Swift SD3 pipeline loads its MultiModalDiffusionTransformer whole (it has no chunked form)")
    else:
        fitted, make_graphs = fit(pipeline_dir, family.name), sd_graphs
    with staged_folder(Path(output), force=force) as staging:
        pipeline = load_pipeline(pipeline_dir)
        folder = staging.folder
        bos_id, eos_id = write_vocabulary(pipeline_dir, folder)
        graphs = add_image_encoder(make_graphs(pipeline, pipeline_dir, fitted, bos_id, eos_id, folder), pipeline.vae)
        files, parity = [], {}
        for role, model in graphs.models.items():
            float16 = role not in graphs.float32_roles
            package = convert(model, graphs.modules[role], graphs.examples[role], graphs.inputs[role], graphs.outputs[role], folder, float16)
            parity[role] = coreml_parity(package, graphs.modules[role], graphs.examples[role], graphs.inputs[role], graphs.outputs[role])
        roles = {model: role for role, model in graphs.models.items()}
        unet_weights = weight_bytes(folder / "Unet.mlpackage")
        chunked = "unet" in graphs.models and (chunk_unet if chunk_unet is not None else unet_weights > ANE_PACKAGE_WEIGHT_BYTES)
        adaptations = list(graphs.adaptations)
        if chunked:
            roles = {**{m: r for m, r in roles.items() if r != "unet"}, **{name: f"unet-chunk{i}" for i, name in enumerate(split_unet(folder), start=1)}}
            sizes = [weight_bytes(folder / f"{name}.mlpackage") for name in UNET_CHUNKS]
            adaptations.append(
                f"unet: split into {' and '.join(UNET_CHUNKS)} ({', '.join(_in_bytes(size) for size in sizes)} of weights, "
                f"from {_in_bytes(unet_weights)}) for the Neural Engine on iOS and iPadOS; the Swift pipeline loads the chunks first"
            )
            if max(sizes) > ANE_PACKAGE_WEIGHT_BYTES:
                adaptations.append(f"unet: a chunk still holds more than {ANE_PACKAGE_WEIGHT_BYTES / 1e9:.0f} GB of weights; the Neural Engine on iOS needs weights quantized further")
        models = list(roles)
        compiled = compile_packages(folder, models)
        suffix = ".mlmodelc" if compiled else ".mlpackage"
        for model, role in roles.items():
            path = folder / f"{model}{suffix}"
            files.append(BundleFile(role=role, path=path.name, sha256=_tree_sha256(path), bytes=_tree_bytes(path), parity_psnr_db=parity.get(role.split("-chunk")[0])))
        for name in (*CONTRACT.tokenizer_files, *graphs.extra_files):
            files.append(BundleFile(role="tokenizer", path=name, sha256=sha256_file(folder / name), bytes=(folder / name).stat().st_size))
        steps = []
        if not compiled:
            steps.append(f"On a Mac, in this folder: {compile_command(models)} (the Swift package loads compiled .mlmodelc only; compiling needs Xcode)")
        steps.append(
            f"Then: let pipeline = try {graphs.swift_pipeline}; try pipeline.loadResources(); the images are {graphs.image_size} px "
            f"({graphs.latent_size} latents square, the denoiser's sample shape). Set {graphs.app_settings}. "
            "The packages are float16 ML programs for iOS 17 / macOS 14" + (f", but {', '.join(graphs.models[r] for r in graphs.float32_roles if r in graphs.models)} in float32" if graphs.float32_roles else "")
        )
        manifest = BundleManifest(
            edgegen_version=edgegen_version(), created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            format="apple-swift", consumer=CONTRACT.consumer, source_dir=str(Path(pipeline_dir).resolve()), family=family.name,
            checkpoint_sha256=checkpoint_sha256(pipeline_dir, components_with_role(family, "denoiser")[0].subfolder), image_size=graphs.image_size, steps_hint=DEFAULT_STEPS,
            files=files,
            adaptations=adaptations + ([] if compiled else ["not compiled: written as .mlpackage on a host without Xcode"]) + (
                [] if platform.system() == "Darwin" else ["not run: Core ML predicts on macOS only, so the packages' parity against their graphs was not measured here"]
            ),
            toolchain=versions_of(("torch", "coremltools", "tokenizers")), next_steps=steps,
        )
        write_json(folder / BUNDLE_MANIFEST, manifest)
        staging.commit()
    return Path(output)


def _in_bytes(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 10**8 else f"{size / 1e6:.1f} MB"


def _image_size(pipeline: Any, fitted: Fit) -> int:
    return fitted.latent_size * 2 ** (len(pipeline.vae.config.block_out_channels) - 1)


def _tree_files(path: Path) -> list[Path]:
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def _tree_sha256(path: Path) -> str:
    import hashlib

    from edgegen.artifact import sha256_file

    digest = hashlib.sha256()
    for each in _tree_files(path):
        digest.update(each.relative_to(path.parent).as_posix().encode())
        digest.update(sha256_file(each).encode())
    return digest.hexdigest()


def _tree_bytes(path: Path) -> int:
    return sum(each.stat().st_size for each in _tree_files(path))


class AppleSwiftFormat:
    name = "apple-swift"
    contract = CONTRACT
    write = staticmethod(write)
    options = ("chunk_unet",)


FORMAT = AppleSwiftFormat()
