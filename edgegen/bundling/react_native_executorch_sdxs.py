"""react-native-executorch's SDXS text-to-image (its rewrite, PR #1307): ONE ``.pte`` whose methods
``encode``, ``denoise`` and ``decode`` a TypeScript loop calls once each, and a tokenizer.json.

Everything that loop fixes is in ``CONTRACT`` (docs/consumers/react-native-executorch.md §8 quotes
``sdxsTextToImage.ts``): static method schemas checked at load (``encode`` int64 [1, 77] ->
[1, 77, 768]; ``denoise`` ([1, 4, 64, 64], int64 [1], [1, 77, 768]) -> [1, 4, 64, 64];
``decode`` [1, 4, 64, 64] -> [1, 3, 512, 512] in [0, 1]); ids padded with 49407 to 77; standard
normal noise; ONE ``denoise`` call at timestep 999 followed by the fixed update
``latents = 14.642591 * latents - 14.579279 * output``; no guidance; the image scaled by 255.

It is the one-call pipeline of a few-step student (``edgegen.exporting.one_call``) cut into
methods, and fitted to the loop inside the graphs, exactly; ``bundle.json`` lists each fit:
- ``denoise`` runs the student's whole few-step schedule and returns the output that the app's
  fixed update turns into the student's clean latents, which ``decode`` decodes; the app's
  timestep is not read;
- latents smaller than 64 x 64 (s x s) are drawn from the app's noise as r x r block means times
  r (r = 64 / s): standard normal again, so the student samples from its own prior; the clean
  latents are repeated back to 64 x 64 and ``decode`` takes the block means;
- text states narrower than 768 or shorter than 77 are zero-padded by ``encode`` and cut back by
  ``denoise``; ids the app pads with (49407) that a smaller vocabulary lacks become its end token;
- an image smaller than 512 px has each pixel repeated to the app's 512.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgegen.bundling.fitting import clip_ids_as_the_pipeline_tokenizes, config, config_file, special_ids
from edgegen.errors import EdgegenError


@dataclass(frozen=True)
class Contract:
    consumer: str
    tokens: int
    hidden: int
    pad_id: int  # the loop pads the tokenizer's ids with this, whatever the vocabulary
    latent_channels: int
    latent_size: int
    image_size: int
    timestep: int  # the one timestep the loop sends
    sample_coeff: float  # latents = sample_coeff * latents + noise_coeff * denoise(...)
    noise_coeff: float
    files: dict[str, str]  # role -> file name in the bundle
    methods: tuple[str, ...]


CONTRACT = Contract(
    consumer="software-mansion/react-native-executorch PR #1307 (rne-rewrite, merged 2026-07-14): src/extensions/cv/tasks/sdxsTextToImage.ts",
    tokens=77,
    hidden=768,
    pad_id=49407,
    latent_channels=4,
    latent_size=64,
    image_size=512,
    timestep=999,
    sample_coeff=14.642591,
    noise_coeff=-14.579279,
    files={"tokenizer": "tokenizer.json", "model": "model.pte"},
    methods=("encode", "denoise", "decode"),
)

FAMILIES = ("stable-diffusion",)
MIN_PSNR_DB = 60.0  # each method against its eager graph, float32 XNNPACK
INPUT_NAMES = {"encode": ["input_ids"], "denoise": ["latents", "timestep", "embeddings"], "decode": ["latents"]}
OUTPUT_NAMES = {"encode": "embeddings", "denoise": "update_output", "decode": "image_nchw_0_1"}


@dataclass
class Fit:
    """How one few-step student meets the contract: the numbers its method graphs bake in."""

    model_tokens: int
    model_hidden: int
    model_latent_size: int
    timesteps: tuple[int, ...]
    adaptations: list[str]

    @property
    def noise_block(self) -> int:
        return CONTRACT.latent_size // self.model_latent_size


def fit(pipeline_dir: Path, family_name: str) -> Fit:
    """The fit of the student in ``pipeline_dir`` to the contract, decided from its configs and
    student manifest before any weights load, or one line naming the constraint it breaks."""
    from transformers import AutoTokenizer

    from edgegen.families.base import spatial_size
    from edgegen.models.checkpoint import read_student_manifest

    if family_name not in FAMILIES:
        raise EdgegenError(
            f"react-native-executorch's SDXS pipeline runs one CLIP text encoder, a UNet and a VAE (Stable Diffusion 1.x); this is a {family_name} pipeline"
        )
    manifest = read_student_manifest(pipeline_dir)
    if manifest is None or not manifest.sampling:
        what = "a student without a few-step schedule" if manifest else "not a student"
        raise EdgegenError(
            f"react-native-executorch's SDXS pipeline calls denoise once; {pipeline_dir} is {what} "
            "(train one with `edgegen train adversarial`, or bundle this one with --format react-native-executorch)"
        )
    timesteps = tuple(int(t) for t in manifest.sampling.timesteps)
    prediction = str(config_file(pipeline_dir, "scheduler", "scheduler_config.json").get("prediction_type", "epsilon"))
    if prediction not in ("epsilon", "v_prediction", "sample"):
        raise EdgegenError(f"the student's scheduler predicts '{prediction}'; the SDXS bundle's denoise takes epsilon, v_prediction or sample")
    unet, text = config(pipeline_dir, "unet"), config(pipeline_dir, "text_encoder")
    tokenizer = AutoTokenizer.from_pretrained(str(Path(pipeline_dir) / "tokenizer"))
    tokens = int(min(tokenizer.model_max_length, text["max_position_embeddings"]))
    hidden = int(unet["cross_attention_dim"])
    if hidden > CONTRACT.hidden:
        raise EdgegenError(f"react-native-executorch's SDXS pipeline fixes the text states at [1, {CONTRACT.tokens}, {CONTRACT.hidden}]; this UNet attends to {hidden}-wide states")
    if tokens > CONTRACT.tokens:
        raise EdgegenError(f"react-native-executorch's SDXS pipeline sends {CONTRACT.tokens} ids; this text encoder reads {tokens}")
    if unet["in_channels"] != CONTRACT.latent_channels:
        raise EdgegenError(f"react-native-executorch's SDXS pipeline draws {CONTRACT.latent_channels}-channel latents; this UNet takes {unet['in_channels']}")
    height, width = spatial_size(unet["sample_size"])
    if height != width or CONTRACT.latent_size % height:
        raise EdgegenError(
            f"react-native-executorch's SDXS pipeline draws {CONTRACT.latent_size}x{CONTRACT.latent_size} latents; this UNet's are {height}x{width}, "
            f"which do not divide them"
        )
    adaptations = [
        f"steps: denoise runs the student's {len(timesteps)} step(s) on timesteps {list(timesteps)} in the app's one call; the app's timestep "
        f"({CONTRACT.timestep}) is not read",
        f"update: denoise returns (x0 - {CONTRACT.sample_coeff} * latents) / ({CONTRACT.noise_coeff}), so the app's fixed update leaves the "
        "student's clean latents x0, which decode decodes with the VAE's own scaling",
    ]
    if height < CONTRACT.latent_size:
        block = CONTRACT.latent_size // height
        adaptations.append(
            f"latents: the student's are {height}x{height}; denoise draws them from the app's {CONTRACT.latent_size}x{CONTRACT.latent_size} noise as "
            f"{block}x{block} block means times {block} (standard normal again), repeats x0 back to {CONTRACT.latent_size}x{CONTRACT.latent_size}, "
            "and decode takes the block means"
        )
    if tokens < CONTRACT.tokens or hidden < CONTRACT.hidden:
        adaptations.append(
            f"text states: encode reads the first {tokens} of the app's {CONTRACT.tokens} ids and zero-pads its [1, {tokens}, {hidden}] states to "
            f"[1, {CONTRACT.tokens}, {CONTRACT.hidden}]; denoise reads back [:, :{tokens}, :{hidden}]"
        )
    if len(tokenizer) <= CONTRACT.pad_id:
        adaptations.append(
            f"ids: this vocabulary has {len(tokenizer)} tokens; encode reads the app's padding id {CONTRACT.pad_id} (and any id past the vocabulary) "
            f"as the end token {tokenizer.eos_token!r}"
        )
    return Fit(tokens, hidden, height, timesteps, adaptations)


def app_modules(pipeline: Any, pipeline_dir: Path, fit: Fit) -> dict[str, Any]:
    """``encode``, ``denoise`` and ``decode`` as the app calls them, around the student's own
    component modules and its few-step loop (the one-call pipeline's)."""
    import torch

    from edgegen.exporting.one_call import few_step_loop
    from edgegen.families import components_with_role, family_of

    family = family_of(pipeline_dir)
    built = {role: family.build_component(pipeline, components_with_role(family, role)[0].name).module for role in ("encoder", "denoiser", "decoder")}
    scheduler = pipeline.scheduler
    loop = few_step_loop(built["denoiser"], [float(scheduler.alphas_cumprod[t]) for t in fit.timesteps], fit.timesteps, scheduler.config.prediction_type, None)
    bos, eos, pad = special_ids(pipeline.tokenizer)
    vocabulary = len(pipeline.tokenizer)
    tokens, hidden, block = fit.model_tokens, fit.model_hidden, fit.noise_block
    text_encoder, decoder = built["encoder"], built["decoder"]

    def constant(value: float) -> Any:
        return torch.full((1, 1, 1, 1), value)

    class Encode(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.text_encoder = text_encoder

        def forward(self, input_ids):
            ids = input_ids
            if vocabulary <= CONTRACT.pad_id:  # an embedding lookup past the table reads other memory on device
                ids = torch.where(ids >= vocabulary, torch.full_like(ids, eos), ids)
            states = self.text_encoder(clip_ids_as_the_pipeline_tokenizes(ids, tokens, bos, eos, pad))
            return torch.nn.functional.pad(states, (0, CONTRACT.hidden - hidden, 0, CONTRACT.tokens - tokens))

    class Denoise(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.loop = loop
            self.register_buffer("sample_coeff", constant(CONTRACT.sample_coeff), persistent=False)
            self.register_buffer("inverse_noise_coeff", constant(1.0 / CONTRACT.noise_coeff), persistent=False)

        def forward(self, latents, timestep, embeddings):
            noise = latents
            if block > 1:  # the mean of block**2 standard normals, times block: standard normal
                noise = torch.nn.functional.avg_pool2d(latents, block) * float(block)
            clean = self.loop(noise, embeddings[:, :tokens, :hidden])
            if block > 1:
                clean = clean.repeat_interleave(block, dim=2).repeat_interleave(block, dim=3)
            return (clean - self.sample_coeff * latents) * self.inverse_noise_coeff

    class Decode(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.decoder = decoder

        def forward(self, latents):
            clean = torch.nn.functional.avg_pool2d(latents, block) if block > 1 else latents
            image = self.decoder(clean)
            repeat = CONTRACT.image_size // image.shape[-1]
            if repeat > 1:
                image = image.repeat_interleave(repeat, dim=2).repeat_interleave(repeat, dim=3)
            return (image / 2 + 0.5).clamp(0, 1)

    return {"encode": Encode().eval(), "denoise": Denoise().eval(), "decode": Decode().eval()}


def app_example_inputs(fit: Fit, bos_id: int, seed: int = 0) -> dict[str, tuple]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    ids = torch.full((1, CONTRACT.tokens), CONTRACT.pad_id, dtype=torch.int64)
    ids[0, :2] = torch.tensor([bos_id, 5])
    size = CONTRACT.latent_size
    noise = torch.randn((1, CONTRACT.latent_channels, size, size), generator=generator)
    states = torch.nn.functional.pad(torch.randn((1, fit.model_tokens, fit.model_hidden), generator=generator), (0, CONTRACT.hidden - fit.model_hidden, 0, CONTRACT.tokens - fit.model_tokens))
    clean = torch.randn((1, CONTRACT.latent_channels, fit.model_latent_size, fit.model_latent_size), generator=generator)
    clean = clean.repeat_interleave(fit.noise_block, dim=2).repeat_interleave(fit.noise_block, dim=3)
    return {"encode": (ids,), "denoise": (noise, torch.tensor([CONTRACT.timestep], dtype=torch.int64), states), "decode": (clean,)}


def write(pipeline_dir: Path, output: Path, force: bool = False) -> Path:
    """tokenizer.json and model.pte in ``output``, all or nothing, with ``bundle.json`` beside them."""
    import datetime as dt
    import tempfile

    import torch

    from edgegen.artifact import sha256_file, staged_folder
    from edgegen.bundling.react_native_executorch import write_tokenizer_json
    from edgegen.families import family_of
    from edgegen.families.loading import checkpoint_sha256, load_pipeline
    from edgegen.registry import EXPORTERS
    from edgegen.schema.base import write_json
    from edgegen.schema.bundle import BUNDLE_MANIFEST, BundleFile, BundleManifest
    from edgegen.versions import edgegen_version, versions_of

    family = family_of(pipeline_dir)
    fitted = fit(pipeline_dir, family.name)
    pipeline = load_pipeline(pipeline_dir)
    modules = app_modules(pipeline, pipeline_dir, fitted)
    examples = app_example_inputs(fitted, pipeline.tokenizer.bos_token_id)
    with torch.no_grad():
        block = fitted.noise_block
        decoded = int(modules["decode"].decoder(examples["decode"][0][:, :, ::block, ::block]).shape[-1])
        if CONTRACT.image_size % decoded:
            raise EdgegenError(f"react-native-executorch's SDXS pipeline makes {CONTRACT.image_size} px images; this decoder makes {decoded} px, which does not divide them")
        expected = {name: modules[name](*examples[name]) for name in CONTRACT.methods}
    adaptations = list(fitted.adaptations)
    if decoded < CONTRACT.image_size:
        repeat = CONTRACT.image_size // decoded
        adaptations.append(f"image size: the decoder makes {decoded} px; decode repeats each pixel {repeat}x{repeat} to the app's {CONTRACT.image_size} px")
    with staged_folder(Path(output), force=force) as staging:
        folder = staging.folder
        write_tokenizer_json(pipeline, pipeline_dir, fitted.model_tokens, folder / CONTRACT.files["tokenizer"])
        path = folder / CONTRACT.files["model"]
        with tempfile.TemporaryDirectory(dir=folder) as scratch:
            # The ExecuTorch exporter plug-in, through the registry: the core never imports a plug-in.
            EXPORTERS.get("executorch").write_methods({name: (modules[name], examples[name]) for name in CONTRACT.methods}, Path(scratch) / "model.pte")
            (Path(scratch) / "model.pte").rename(path)
        parity = method_parity(path, examples, expected)
        files = [
            BundleFile(role=role, path=relative, sha256=sha256_file(folder / relative), bytes=(folder / relative).stat().st_size,
                       parity_psnr_db=min(parity.values()) if role == "model" else None)
            for role, relative in CONTRACT.files.items()
        ]
        manifest = BundleManifest(
            edgegen_version=edgegen_version(), created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            format="react-native-executorch-sdxs", consumer=CONTRACT.consumer, source_dir=str(Path(pipeline_dir).resolve()), family=family.name,
            checkpoint_sha256=checkpoint_sha256(pipeline_dir, "unet"), image_size=CONTRACT.image_size, steps_hint=len(fitted.timesteps), files=files,
            adaptations=adaptations,
            toolchain=versions_of(("torch", "executorch", "tokenizers")), next_steps=next_steps(),
        )
        write_json(folder / BUNDLE_MANIFEST, manifest)
        staging.commit()
    return Path(output)


def method_parity(path: Path, examples: dict[str, tuple], expected: dict[str, Any]) -> dict[str, float]:
    """Each method of the written program against its eager graph; refused below ``MIN_PSNR_DB``."""
    from executorch.runtime import Runtime

    from edgegen.measure.metrics import psnr_db

    program = Runtime.get().load_program(path)
    parity = {}
    for name in CONTRACT.methods:
        produced = program.load_method(name).execute(list(examples[name]))[0]
        parity[name] = psnr_db(expected[name].numpy(), produced.numpy())
        if not parity[name] >= MIN_PSNR_DB:
            raise EdgegenError(f"the bundle's {name} method is {parity[name]:.1f} dB from its eager graph (< {MIN_PSNR_DB:.0f}); nothing was written")
    return parity


def next_steps() -> list[str]:
    files = CONTRACT.files
    return [
        "Serve or ship the two files with the app, then (react-native-executorch's rewrite): "
        f"useTextToImage({{ model: {{ modelPath: MODEL_URL /* {files['model']} */, tokenizerPath: TOKENIZER_URL /* {files['tokenizer']} */ }} }}); "
        f"it makes {CONTRACT.image_size} px images in one denoise call.",
        "The program was written by this machine's ExecuTorch (see toolchain); the app's runtime must be at least as new.",
    ]


class ReactNativeExecutorchSdxsFormat:
    name = "react-native-executorch-sdxs"
    contract = CONTRACT
    write = staticmethod(write)


FORMAT = ReactNativeExecutorchSdxsFormat()
