"""Split a diffusers pipeline into exportable components with declared inputs and outputs.

Components: ``text_encoder`` (token ids -> embeddings), ``denoiser`` (latents, timestep,
embeddings -> noise prediction) and ``vae_decoder`` (latents -> image). Shapes are static and
taken from the pipeline's configs; the timestep is float32 because NPUs and converters handle
it better than int64. Reference inputs are realistic (a tokenized prompt, that prompt's
embeddings) so they can double as calibration data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgegen.errors import EdgegenError
from edgegen.schema.manifest import TensorSpec

COMPONENT_NAMES = ("text_encoder", "denoiser", "vae_decoder")
DEFAULT_PROMPT = "a red circle at the top left"
# Calibration for post-training quantization: varied prompts, seeds and timesteps, so the
# observed ranges cover what the sampling loop will feed the component.
CALIBRATION_PROMPTS = (
    "a red circle at the top left",
    "a blue square in the middle",
    "a green triangle at the bottom right",
    "a yellow star on a black background",
    "two purple dots, one small and one large",
    "an orange ring at the top right",
    "a white cross on grey",
    "a cyan stripe across the bottom",
)


@dataclass
class Component:
    name: str
    module: Any  # torch.nn.Module taking the inputs positionally, in declared order
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    reference_inputs: dict[str, Any]  # name -> torch.Tensor
    source_subfolder: str
    source_class: str
    graph_rewrites: list[str] = field(default_factory=list)
    calibration: list[dict[str, Any]] = field(default_factory=list)  # filled only when quantizing
    # For a quantization-aware-trained student: builds the denoiser with its learned int8 scales
    # (a converted PT2E graph), which exporters that lower PT2E graphs take instead of calibrating.
    learned_int8_module: Callable[[], Any] | None = None
    # The same student as the fake-quant graph it was trained as: what its int8 exports answer to.
    fake_quant_module: Callable[[], Any] | None = None

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


def _spec(name: str, tensor: Any) -> TensorSpec:
    return TensorSpec(name=name, shape=list(tensor.shape), dtype=str(tensor.dtype).replace("torch.", ""))


def _use_plain_attention(model: Any) -> list[str]:
    # diffusers' default SDPA processor decomposes into where/eq/any ops that XNNPACK does not
    # take; the plain processor computes the same attention with delegable matmuls and softmax.
    # SCMAN processors (a student's sparse attention) are already delegable and stay.
    if not hasattr(model, "set_attn_processor"):
        return []
    from diffusers.models.attention_processor import AttnProcessor

    from edgegen.models.scman import SCMANProcessor

    current = model.attn_processors
    replaced = {name: AttnProcessor() for name, proc in current.items() if not isinstance(proc, SCMANProcessor)}
    if not replaced:
        return []
    model.set_attn_processor({name: replaced.get(name, proc) for name, proc in current.items()})
    return [f"{type(model).__name__}: {len(replaced)} attention processor(s) -> AttnProcessor"]


def _wrappers():
    import torch

    class TextEncoder(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids):
            return self.encoder(input_ids, return_dict=False)[0]

    class Denoiser(torch.nn.Module):
        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states):
            return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]

    class VaeDecoder(torch.nn.Module):
        # The latent scaling is folded in so that the sampling loop hands over raw latents.
        def __init__(self, vae, scaling_factor: float):
            super().__init__()
            self.vae = vae
            self.scaling_factor = scaling_factor

        def forward(self, latents):
            return self.vae.decode(latents / self.scaling_factor, return_dict=False)[0]

    return TextEncoder, Denoiser, VaeDecoder


def tokenize(pipeline: Any, prompts: list[str]) -> Any:
    tokenizer = pipeline.tokenizer
    return tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def _require(pipeline: Any, attribute: str, component: str) -> Any:
    value = getattr(pipeline, attribute, None)
    if value is None:
        raise EdgegenError(
            f"{type(pipeline).__name__} has no '{attribute}', so it has no {component} component"
        )
    return value


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

    if name not in COMPONENT_NAMES:
        raise EdgegenError(f"unknown component '{name}'; choose one of: {', '.join(COMPONENT_NAMES)}")
    TextEncoder, Denoiser, VaeDecoder = _wrappers()
    generator = torch.Generator().manual_seed(seed)
    text_model = _require(pipeline, "text_encoder", "text_encoder")
    _require(pipeline, "tokenizer", "text_encoder")
    input_ids = tokenize(pipeline, [prompt] * batch_size)
    text_encoder = TextEncoder(text_model).eval()

    if name == "text_encoder":
        module, rewrites, subfolder, source = text_encoder, [], "text_encoder", text_model
        inputs = {"input_ids": input_ids}
        output_names = ["text_embeddings"]
    elif name == "denoiser":
        if getattr(pipeline, "unet", None) is None:
            raise EdgegenError(
                f"{type(pipeline).__name__} has no UNet denoiser; transformer denoisers are not supported yet"
            )
        unet = pipeline.unet
        if getattr(unet.config, "addition_embed_type", None):
            raise EdgegenError(
                f"UNet with addition_embed_type '{unet.config.addition_embed_type}' (SDXL-style) is not supported yet"
            )
        with torch.no_grad():
            embeddings = text_encoder(input_ids)
        size = unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        sample = torch.randn((batch_size, unet.config.in_channels, *size), generator=generator)
        if timestep is None:
            timestep = pipeline.scheduler.config.num_train_timesteps // 2
        timesteps = torch.full((batch_size,), float(timestep), dtype=torch.float32)
        module, rewrites, subfolder, source = Denoiser(unet).eval(), _use_plain_attention(unet), "unet", unet
        inputs = {"sample": sample, "timestep": timesteps, "encoder_hidden_states": embeddings}
        output_names = ["noise_pred"]
    else:
        vae = _require(pipeline, "vae", "vae_decoder")
        unet = getattr(pipeline, "unet", None)
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        if unet is not None:
            size = unet.config.sample_size
            size = (size, size) if isinstance(size, int) else tuple(size)
        else:
            size = (vae.config.sample_size // factor,) * 2
        latents = torch.randn((batch_size, vae.config.latent_channels, *size), generator=generator)
        module = VaeDecoder(vae, float(vae.config.scaling_factor)).eval()
        rewrites, subfolder, source = _use_plain_attention(vae), "vae", vae
        inputs = {"latents": latents}
        output_names = ["image"]

    component = Component(
        name=name,
        module=module,
        inputs=[_spec(key, value) for key, value in inputs.items()],
        outputs=[],
        reference_inputs=inputs,
        source_subfolder=subfolder,
        source_class=type(source).__name__,
        graph_rewrites=rewrites,
    )
    qat_dir = getattr(pipeline, "_edgegen_qat_dir", None)
    if name == "denoiser" and qat_dir is not None:
        from functools import cache

        from edgegen.exporting.qat import fake_quant_denoiser, quantized_denoiser

        # Rebuilt once (export + prepare + load): an int8 export needs it as reference and to convert.
        fake_quant = cache(lambda: fake_quant_denoiser(pipeline, qat_dir, batch_size))
        component.fake_quant_module = fake_quant
        component.learned_int8_module = lambda: quantized_denoiser(pipeline, qat_dir, batch_size, fake_quant())
    with torch.no_grad():
        result = module(*component.example_args())
    results = result if isinstance(result, tuple) else (result,)
    component.outputs = [_spec(n, t) for n, t in zip(output_names, results, strict=True)]
    return component


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


def pipeline_components(pipeline: Any) -> list[str]:
    """The component names this pipeline can provide."""
    names = []
    if getattr(pipeline, "text_encoder", None) is not None and getattr(pipeline, "tokenizer", None) is not None:
        names.append("text_encoder")
    if getattr(pipeline, "unet", None) is not None:
        names.append("denoiser")
    if getattr(pipeline, "vae", None) is not None:
        names.append("vae_decoder")
    return names

