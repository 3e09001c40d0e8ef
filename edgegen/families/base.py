"""What every model family provides, and the pieces families share.

A model family is what diffusers calls a pipeline class (Stable Diffusion 1.x/2.x, SDXL, PixArt,
an audio pipeline, ...). Its file knows the pipeline's sub-model names (``unet``, ``transformer``,
``text_encoder_2``, ``vae``); everything else in edgegen iterates over ``family.components`` and
asks the family for the family-specific pieces: how a component is wrapped with static shapes,
how a prompt becomes conditioning, the latent shape, the VAE factors, how the sampling loop calls
the denoiser, and which subfolders fingerprint a checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from edgegen.errors import EdgegenError
from edgegen.schema.manifest import TensorSpec

if TYPE_CHECKING:
    from edgegen.exporting.quantize import LearnedScales

Role = Literal["encoder", "denoiser", "decoder"]
# classifier-free: two denoiser calls per step (with and without the prompt); embedded: the scale is
# a denoiser input (LCM's guidance embedding, Flux-dev's guidance), one call per step.
Guidance = Literal["classifier-free", "embedded"]


@dataclass(frozen=True)
class ComponentSpec:
    """One exportable part of a pipeline: its artifact name and where its weights live."""

    name: str  # the artifact's component name: text_encoder, denoiser, vae_decoder, ...
    subfolder: str  # the pipeline subfolder holding its config and weights (fingerprinted)
    role: Role


@dataclass(frozen=True)
class ConditioningEncoder:
    """A prompt encoder: its component, its tokenizer, and what the denoiser takes from it."""

    component: str
    tokenizer_subfolder: str
    max_length: int | None = None  # None: the tokenizer's model_max_length
    attention_mask: bool = False  # T5-style encoders need the padding mask
    pooled_output: bool = False  # SDXL/SD3 also condition on a pooled embedding
    hidden_layer: int = -1  # -1: the last hidden state; -2: the penultimate (SDXL, SD3)


@dataclass
class Component:
    """A static-shape module with declared inputs and outputs and realistic reference inputs."""

    name: str
    module: Any  # torch.nn.Module taking the inputs positionally, in declared order
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    reference_inputs: dict[str, Any]  # name -> torch.Tensor
    source_subfolder: str
    source_class: str
    graph_rewrites: list[str] = field(default_factory=list)
    calibration: list[dict[str, Any]] = field(default_factory=list)  # filled only when quantizing
    # A quantization-aware-trained checkpoint's learned int8 scales, which exporters that lower
    # PT2E graphs take instead of calibrating (edgegen.exporting.quantize).
    quantization_source: LearnedScales | None = None
    # A one-call pipeline program's schedule and sources (edgegen.exporting.one_call); None for a
    # single component.
    program: Any = None

    def example_args(self) -> tuple:
        return tuple(self.reference_inputs[spec.name] for spec in self.inputs)

    def run_eager(self, inputs: dict[str, Any] | None = None, module: Any = None) -> dict[str, Any]:
        """``module`` (default: this component's) on ``inputs`` (default: the reference inputs)."""
        import torch

        inputs = inputs or self.reference_inputs
        module = module if module is not None else self.module
        with torch.no_grad():
            result = module(*(inputs[spec.name] for spec in self.inputs))
        results = result if isinstance(result, tuple) else (result,)
        return {spec.name: tensor for spec, tensor in zip(self.outputs, results, strict=True)}


class Family(Protocol):
    name: str  # registry name
    description: str  # one line for refusals and `edgegen targets`
    pipeline_classes: tuple[str, ...]  # model_index.json _class_name values it takes
    components: tuple[ComponentSpec, ...]
    encoders: tuple[ConditioningEncoder, ...]
    guidance_modes: tuple[Guidance, ...]

    def claims(self, folder: Path, index: dict[str, Any]) -> bool:
        """True if ``folder`` is this family's; raises EdgegenError for an unsupported variant."""

    # Optional: ``for_folder(folder, index) -> Family``. A family whose components or guidance
    # depend on the folder (SD3 saved without its T5, Flux dev vs schnell) returns that folder's
    # own instance; family_of() calls it after claims().

    def build_component(
        self, pipeline: Any, name: str, batch_size: int = 1, prompt: str = ..., seed: int = 0, timestep: float | None = None
    ) -> Component: ...

    def calibration_inputs(self, pipeline: Any, name: str, batch_size: int = 1, count: int = ...) -> list[dict[str, Any]]: ...

    def latent_shape(self, folder: Path) -> tuple[int, ...]: ...

    def encode_prompt(self, tokenizers: dict[str, Any], run: Any, prompt: str) -> dict[str, np.ndarray]:
        """Conditioning tensors for one prompt; ``run(component, inputs)`` runs an encoder component
        (an eager module or a runtime Session: the sampling loop never knows which)."""

    def prepare_timesteps(self, scheduler: Any, steps: int, latent_shape: tuple[int, ...]) -> None:
        """``scheduler.set_timesteps`` as this family's pipeline calls it (flow-matching shifts, sigmas)."""

    def denoiser_inputs(self, latents: np.ndarray, timestep: float, conditioning: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The denoiser's inputs; with embedded guidance, ``conditioning["guidance_scale"]`` is the [B] scale."""

    denoiser_output: str
    decoder_output: str

    def decoder_inputs(self, latents: np.ndarray) -> dict[str, np.ndarray]:
        """The decoder component's inputs from raw latents (it folds in the VAE's scaling and shift)."""

    def fingerprint(self, folder: Path) -> str:
        """What must agree for two folders' images to be comparable (tokenizer, latent space)."""

    def make_student(
        self, teacher_dir: Path, output_dir: Path, preset: str, force: bool = False, seed: int = 0, attention_heads: int | None = None
    ) -> Path:
        """A compact student of the teacher folder, written as a pipeline folder of this family
        (``attention_heads``: per attention layer, instead of the teacher's)."""


# ---------------------------------------------------------------------------------------------
# helpers every family uses


def require(pipeline: Any, attribute: str, component: str) -> Any:
    """The loaded pipeline's sub-model ``attribute``, or one line naming the component that needs it."""
    value = getattr(pipeline, attribute, None)
    if value is None:
        raise EdgegenError(f"{type(pipeline).__name__} has no '{attribute}', so it has no {component} component")
    return value


def traced_component(
    name: str, module: Any, inputs: dict[str, Any], output_names: list[str], spec: ComponentSpec, source: Any, rewrites: list[str]
) -> Component:
    """``module`` as a Component on its reference ``inputs``; one eager run names and shapes its outputs.

    A module loaded in float16 (``--dtype float16``) computes in float16 behind float32 inputs
    and outputs, so every artifact, runner and reference file keeps one float32 interface.
    """
    import torch

    dtype = weights_dtype(module)
    if dtype != torch.float32:
        module = float32_io(module, dtype)
        # Reference inputs made by the pipeline's own float16 sub-models (a denoiser's text
        # embeddings) are float16 too; the artifact takes float32.
        inputs = {key: value.float() if value.is_floating_point() else value for key, value in inputs.items()}
        rewrites = [*rewrites, f"float32 inputs and outputs around a {str(dtype).removeprefix('torch.')} model"]
    component = Component(
        name=name,
        module=module,
        inputs=[tensor_spec(key, value) for key, value in inputs.items()],
        outputs=[],
        reference_inputs=inputs,
        source_subfolder=spec.subfolder,
        source_class=type(source).__name__,
        graph_rewrites=rewrites,
    )
    with torch.no_grad():
        result = module(*component.example_args())
    results = result if isinstance(result, tuple) else (result,)
    component.outputs = [tensor_spec(n, t) for n, t in zip(output_names, results, strict=True)]
    return component


def weights_dtype(module: Any) -> Any:
    """The dtype of ``module``'s first floating-point parameter (float32 for one without any)."""
    import torch

    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)


def float32_io(module: Any, dtype: Any) -> Any:
    """``module`` (holding ``dtype`` weights) behind float32 inputs and outputs.

    Exported (``torch.export``), it computes in its weights' dtype: the graph a float16 artifact
    holds. Run eagerly, it computes in float32 on those same weights, upcast for the call: CPUs
    without float16 arithmetic run torch's float16 kernels 50-300x slower
    (``benchmarks/float16_cpu.py`` here: a 1024^3 matmul 79x, a 3x3 convolution 336x), and this
    is the float16 model's function
    without its activations' rounding, which the parity gate then measures. The wrapper's
    ``forward`` keeps the wrapped module's signature: exporters name the graph's inputs from it
    and the export checks it against the declared inputs.
    """
    import inspect

    import torch

    class Float32IO(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = module

        def forward(self, *args):
            if torch.compiler.is_exporting():
                return self._run(args)
            with computing_in_float32(self.inner):
                return self._run(args)

        def _run(self, args):
            compute = weights_dtype(self.inner)
            cast = [arg.to(compute) if arg.is_floating_point() else arg for arg in args]
            result = self.inner(*cast)
            if isinstance(result, tuple):
                return tuple(tensor.to(torch.float32) for tensor in result)
            return result.to(torch.float32)

    Float32IO.forward.__signature__ = inspect.signature(Float32IO.forward).replace(
        parameters=[inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD), *inspect.signature(module.forward).parameters.values()]
    )
    return Float32IO().eval()


@contextlib.contextmanager
def computing_in_float32(module: Any):
    """Every floating-point parameter and buffer of ``module`` in float32 inside the block, and
    back to its own dtype after (float16 -> float32 -> float16 is exact)."""
    import torch

    tensors = [t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point() and t.dtype != torch.float32]
    dtypes = [t.dtype for t in tensors]
    for tensor in tensors:
        tensor.data = tensor.data.float()
    try:
        yield module
    finally:
        for tensor, dtype in zip(tensors, dtypes, strict=True):
            tensor.data = tensor.data.to(dtype)


def in_float32(module: Any) -> Any:
    """A float32 copy of a module loaded in float16, for converters that take float32 graphs and
    store or compute them in float16 themselves (LiteRT's float16 weights, Core ML's precision)."""
    import copy

    return copy.deepcopy(module).float()


def component_names(family: Family) -> tuple[str, ...]:
    return tuple(spec.name for spec in family.components)


def component_spec(family: Family, name: str) -> ComponentSpec:
    for spec in family.components:
        if spec.name == name:
            return spec
    raise EdgegenError(f"unknown component '{name}'; choose one of: {', '.join(component_names(family))}")


def components_with_role(family: Family, role: Role) -> tuple[ComponentSpec, ...]:
    return tuple(spec for spec in family.components if spec.role == role)


def tensor_spec(name: str, tensor: Any) -> TensorSpec:
    return TensorSpec(name=name, shape=list(tensor.shape), dtype=str(tensor.dtype).replace("torch.", ""))


def read_config(folder: Path, subfolder: str) -> dict[str, Any]:
    path = Path(folder) / subfolder / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EdgegenError(f"{folder} has no {subfolder}/config.json") from None
    except (OSError, ValueError) as error:
        raise EdgegenError(f"cannot read {path}: {error}") from None


def latent_space_config(folder: Path) -> dict[str, Any]:
    """The VAE config that defines the folder's latent space: its own VAE's, or, where a decoder
    student replaced the VAE, the latent space that student's manifest records (the tiny decoder
    takes the sampler's latents as they are, so its own config says nothing about them)."""
    from edgegen.models.decoder_student import read_decoder_manifest

    config = read_config(folder, "vae")
    decoder = read_decoder_manifest(folder)
    if decoder is not None:
        config = {**config, **decoder.latent_space.model_dump()}
    return config


def spatial_size(size: int | list[int] | tuple[int, ...]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


# Tokenizer files that decide how a prompt becomes token ids; transformers 5 saves the fast
# tokenizer's tokenizer.json and tokenizer_config.json, older folders vocab.json/merges.txt.
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model")
# Keys transformers writes into tokenizer_config.json about how it was loaded, not how it tokenizes:
# a folder re-saved after from_pretrained gains them, with the same tokens.
_LOADER_STATE_KEYS = ("is_local", "local_files_only", "name_or_path", "_name_or_path", "_commit_hash", "cache_dir", "revision", "token", "subfolder")


def tokenizer_digest(folder: Path, subfolder: str) -> str:
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        path = Path(folder) / subfolder / name
        if not path.is_file():
            continue
        data = path.read_bytes()
        if name == "tokenizer_config.json":
            try:
                config = {k: v for k, v in json.loads(data).items() if k not in _LOADER_STATE_KEYS}
                data = json.dumps(config, sort_keys=True).encode()
            except (ValueError, AttributeError):
                pass  # not a JSON object: hash it as it is
        digest.update(name.encode())
        digest.update(data)
    return digest.hexdigest()


def use_plain_attention(model: Any) -> list[str]:
    """Swap diffusers' SDPA processors for the plain one; return the rewrite it records.

    diffusers' default SDPA processor decomposes into where/eq/any ops that XNNPACK does not
    take; the plain processor computes the same attention with delegable matmuls and softmax.
    SCMAN processors (a student's sparse attention) are already delegable and stay.
    """
    if not hasattr(model, "set_attn_processor"):
        return []
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    from edgegen.models.scman import SCMANProcessor

    # Only the plain SDPA processor has a plain twin; joint (SD3), Flux and linear (Sana) attention
    # processors compute something else and stay.
    current = model.attn_processors
    replaced = {name: AttnProcessor() for name, proc in current.items() if isinstance(proc, AttnProcessor2_0) and not isinstance(proc, SCMANProcessor)}
    if not replaced:
        return []
    model.set_attn_processor({name: replaced.get(name, proc) for name, proc in current.items()})
    return [f"{type(model).__name__}: {len(replaced)} attention processor(s) -> AttnProcessor"]


def vae_decoder_module(vae: Any) -> Any:
    """``latents -> image`` with the VAE's latent scaling and shift folded in, so the sampling loop
    hands over raw latents (AutoencoderKL, AutoencoderDC, ...)."""
    import torch

    scaling = float(vae.config.scaling_factor)
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)

    class VaeDecoder(torch.nn.Module):
        def __init__(self, vae):
            super().__init__()
            self.vae = vae
            self.scaling_factor = scaling
            self.shift_factor = shift

        def forward(self, latents):
            latents = latents / self.scaling_factor
            if self.shift_factor:
                latents = latents + self.shift_factor
            return self.vae.decode(latents, return_dict=False)[0]

    return VaeDecoder(vae).eval()


def no_student(family: Any) -> Any:
    """For families whose student is not built yet: one line instead of a wrong student."""
    raise EdgegenError(f"students of {family.description} pipelines are not supported yet; `edgegen student init` takes Stable Diffusion 1.x/2.x")


def text_encoder_wrapper(encoder: Any, spec: ConditioningEncoder) -> Any:
    """The encoder as ``(input_ids[, attention_mask]) -> hidden states[, pooled]``, as the spec asks."""
    import torch

    def select(outputs):
        hidden = outputs.hidden_states[spec.hidden_layer] if spec.hidden_layer != -1 else outputs[0]
        if not spec.pooled_output:
            return hidden
        pooled = getattr(outputs, "text_embeds", None)
        return hidden, (pooled if pooled is not None else outputs.pooler_output)

    wants_hidden = spec.hidden_layer != -1

    class TextEncoder(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids):
            if not wants_hidden and not spec.pooled_output:
                return self.encoder(input_ids, return_dict=False)[0]
            return select(self.encoder(input_ids, output_hidden_states=wants_hidden, return_dict=True))

    class MaskedTextEncoder(TextEncoder):
        def forward(self, input_ids, attention_mask):
            return select(self.encoder(input_ids, attention_mask=attention_mask, output_hidden_states=wants_hidden, return_dict=True))

    return (MaskedTextEncoder if spec.attention_mask else TextEncoder)(encoder).eval()


def tokenize(tokenizer: Any, prompts: list[str], max_length: int | None = None, tensors: str = "pt") -> Any:
    """Token ids (and attention mask) padded to the encoder's fixed length, as the artifact takes them."""
    return tokenizer(
        prompts,
        padding="max_length",
        max_length=max_length or tokenizer.model_max_length,
        truncation=True,
        return_tensors=tensors,
    )


@dataclass
class Networks:
    """A loaded pipeline's networks by role: what trainers train, freeze and share."""

    denoiser: Any
    encoder: Any  # the family's first conditioning encoder
    tokenizer: Any
    decoder: Any  # the autoencoder whose decoder is the decoder component
    subfolders: dict[str, str]  # role -> pipeline attribute (= subfolder) of that network

    def all(self) -> list[Any]:
        return [self.denoiser, self.encoder, self.decoder]


def networks(family: Family, pipeline: Any) -> Networks:
    def first(role: Role) -> str:
        return next(spec.subfolder for spec in family.components if spec.role == role)

    subfolders = {"denoiser": first("denoiser"), "encoder": first("encoder"), "decoder": first("decoder")}
    missing = [name for name in subfolders.values() if getattr(pipeline, name, None) is None]
    if missing:
        raise EdgegenError(f"{type(pipeline).__name__} has no {', '.join(missing)}")
    encoder = family.encoders[0]
    return Networks(
        denoiser=getattr(pipeline, subfolders["denoiser"]),
        encoder=getattr(pipeline, subfolders["encoder"]),
        tokenizer=getattr(pipeline, encoder.tokenizer_subfolder),
        decoder=getattr(pipeline, subfolders["decoder"]),
        subfolders={**subfolders, "tokenizer": encoder.tokenizer_subfolder},
    )
