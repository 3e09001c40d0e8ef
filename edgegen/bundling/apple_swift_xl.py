"""apple/ml-stable-diffusion's Swift ``StableDiffusionXLPipeline``: the resources folder it loads.

What differs from the SD 1.x pipeline (``apple_swift``, whose scheduler ports, conversion,
chunking and compiling this shares) is in ``XL_CONTRACT`` (docs/consumers/
apple-ml-stable-diffusion.md quotes ``StableDiffusionXLPipeline.swift``, ``TextEncoderXL.swift``
and ``StableDiffusionXL+Resources.swift``): two text encoders, ``TextEncoder`` and
``TextEncoder2``, each reading float32 ids [1, 77] and giving ``hidden_embeds`` (the penultimate
layer) and ``pooled_outputs``; the second tokenizer pads with ``!``; the UNet also takes
``text_embeds`` (the second encoder's pooled output, [2, P]) and ``time_ids`` ([2, 6], the
configuration's original size, crop and target size, 1024/0/1024 by default); the app concatenates
both encoders' states on the feature axis, encodes the empty negative prompt (not diffusers' zeros),
and its CLI divides the final latents by 0.13025 for XL before the decoder.

Fitted inside the graphs as for SD 1.x: ids as the pipeline's tokenizers give them, states
zero-padded to 77 tokens, app timesteps at the model's noise level, v-prediction to epsilon, and
the decoder multiplying back the app's latent scale before applying the VAE's own. A refiner UNet
(5 time ids, aesthetic score) is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.bundling.apple_swift import CONTRACT, SwiftGraphs, swift_alphas_cumprod, swift_unet
from edgegen.bundling.fitting import clip_ids_as_the_pipeline_tokenizes, config, config_index, fit_schedule, special_ids, training_scheduler
from edgegen.errors import EdgegenError


@dataclass(frozen=True)
class XlContract:
    consumer: str
    models: dict[str, str]
    inputs: dict[str, list[str]]
    outputs: dict[str, list[str]]
    time_ids: int  # the base UNet's; a refiner's has 5
    default_geometry: tuple[float, ...]  # PipelineConfiguration: originalSize, crop, targetSize
    latents_scale: float  # the Swift CLI's decoderScaleFactor for XL


XL_CONTRACT = XlContract(
    consumer=CONTRACT.consumer.replace("swift/StableDiffusion/pipeline", "swift/StableDiffusion/pipeline (StableDiffusionXLPipeline)"),
    models={"encoder": "TextEncoder", "encoder_2": "TextEncoder2", "unet": "Unet", "decoder": "VAEDecoder"},
    inputs={
        "encoder": ["input_ids"], "encoder_2": ["input_ids"],
        "unet": ["sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"], "decoder": ["z"],
    },
    outputs={
        "encoder": ["hidden_embeds", "pooled_outputs"], "encoder_2": ["hidden_embeds", "pooled_outputs"],
        "unet": ["noise_pred"], "decoder": ["image"],
    },
    time_ids=6,
    default_geometry=(1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0),
    latents_scale=0.13025,
)

FAMILIES = ("stable-diffusion-xl",)
TOKENIZERS = {"encoder": ("tokenizer", "text_encoder"), "encoder_2": ("tokenizer_2", "text_encoder_2")}


@dataclass
class XlFit:
    tokens: dict[str, int]  # encoder role -> the tokens its model reads
    hidden: dict[str, int]  # encoder role -> its states' width
    pooled: int
    latent_size: int
    prediction: str
    timestep_table: np.ndarray
    adaptations: list[str]


def fit(pipeline_dir: Path, family_name: str) -> XlFit:
    """The fit of the SDXL pipeline in ``pipeline_dir`` to the Swift XL pipeline, from its configs, or one line."""
    from transformers import AutoTokenizer

    from edgegen.families.base import spatial_size

    index = config_index(pipeline_dir)
    if index.get("requires_aesthetics_score"):
        raise EdgegenError("this is an SDXL refiner (5 time ids with an aesthetic score); the Swift XL bundle takes a base pipeline")
    unet, vae = config(pipeline_dir, "unet"), config(pipeline_dir, "vae")
    tokens, hidden = {}, {}
    for role, (tokenizer_folder, encoder_folder) in TOKENIZERS.items():
        tokenizer = AutoTokenizer.from_pretrained(str(Path(pipeline_dir) / tokenizer_folder))
        if tokenizer.bos_token != "<|startoftext|>" or tokenizer.eos_token != "<|endoftext|>":
            raise EdgegenError(f"the Swift BPETokenizer adds <|startoftext|> and <|endoftext|>; {tokenizer_folder}'s start and end tokens differ")
        encoder = config(pipeline_dir, encoder_folder)
        tokens[role] = int(min(tokenizer.model_max_length, encoder["max_position_embeddings"]))
        hidden[role] = int(encoder["hidden_size"])
        if tokens[role] > CONTRACT.tokens:
            raise EdgegenError(f"the Swift XL pipeline's text encoders read {CONTRACT.tokens} ids; {encoder_folder} reads {tokens[role]}")
    if len(set(tokens.values())) != 1:
        raise EdgegenError(f"SDXL concatenates both encoders' states token by token; these read {tokens['encoder']} and {tokens['encoder_2']} ids")
    if int(unet["cross_attention_dim"]) != sum(hidden.values()):
        raise EdgegenError(f"the Swift XL pipeline concatenates both encoders' states ({' + '.join(map(str, hidden.values()))}); this UNet attends to {unet['cross_attention_dim']}")
    pooled = int(config(pipeline_dir, "text_encoder_2").get("projection_dim") or hidden["encoder_2"])
    time_width = unet.get("addition_time_embed_dim")
    if unet.get("addition_embed_type") != "text_time" or time_width is None or int(unet["projection_class_embeddings_input_dim"]) != XL_CONTRACT.time_ids * int(time_width) + pooled:
        raise EdgegenError(f"the Swift XL pipeline sends {XL_CONTRACT.time_ids} time ids and the pooled text embedding; this UNet's added conditioning differs")
    if unet["in_channels"] != CONTRACT.latent_channels:
        raise EdgegenError(f"the Swift pipeline draws {CONTRACT.latent_channels}-channel latents; this UNet takes {unet['in_channels']}")
    height, width = spatial_size(unet["sample_size"])
    if height != width:
        raise EdgegenError("the Swift pipeline makes square images from the UNet's sample shape; this UNet's latents are not square")
    schedule = fit_schedule(training_scheduler(pipeline_dir), swift_alphas_cumprod(), "the Swift schedulers", "read epsilon")
    adaptations = []
    if tokens["encoder"] < CONTRACT.tokens:
        adaptations.append(
            f"text states: both encoders read the first {tokens['encoder']} of the app's {CONTRACT.tokens} ids and zero-pad to {CONTRACT.tokens} tokens; "
            f"the UNet reads back the first {tokens['encoder']}"
        )
    adaptations += schedule.adaptations
    if schedule.prediction == "v_prediction":
        adaptations.append("prediction: the Swift schedulers read epsilon; the UNet converts the model's v to epsilon at the app's noise level")
    scaling = float(vae.get("scaling_factor", XL_CONTRACT.latents_scale))
    if scaling != XL_CONTRACT.latents_scale:
        adaptations.append(f"latent scale: the app divides by {XL_CONTRACT.latents_scale}; the decoder multiplies it back and applies the VAE's own ({scaling})")
    if index.get("force_zeros_for_empty_prompt", True):
        adaptations.append(
            "negative prompt: the Swift XL pipeline encodes the empty negative prompt where diffusers' SDXL conditions on zeros "
            "(force_zeros_for_empty_prompt); that is the app's loop, not the graphs'"
        )
    return XlFit(tokens, hidden, pooled, height, schedule.prediction, schedule.timestep_table, adaptations)


def app_modules(pipeline: Any, fitted: XlFit) -> dict[str, Any]:
    """TextEncoder, TextEncoder2, Unet and VAEDecoder as the Swift XL pipeline calls them."""
    import torch

    from edgegen.families.base import ConditioningEncoder, text_encoder_wrapper
    from edgegen.families.stable_diffusion_xl import standardized_decoder_module

    def encoder(role: str) -> Any:
        tokenizer_folder, encoder_folder = TOKENIZERS[role]
        # Both report a pooled output: TextEncoderXL.swift reads "pooled_outputs" of each.
        spec = ConditioningEncoder(component=encoder_folder, tokenizer_subfolder=tokenizer_folder, hidden_layer=-2, pooled_output=True)
        wrapped = text_encoder_wrapper(getattr(pipeline, encoder_folder), spec)
        tokens, specials = fitted.tokens[role], special_ids(getattr(pipeline, tokenizer_folder))

        class TextEncoderXL(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.encoder = wrapped

            def forward(self, input_ids):  # float32 ids: the Swift side sends Float32
                ids = clip_ids_as_the_pipeline_tokenizes(input_ids.to(torch.int32), tokens, *specials)
                hidden, pooled = self.encoder(ids)
                return torch.nn.functional.pad(hidden, (0, 0, 0, CONTRACT.tokens - tokens)), pooled

        return TextEncoderXL().eval()

    decoder = standardized_decoder_module(pipeline.vae)  # with a VAE's latents mean and std where it has them

    class VAEDecoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.decoder = decoder

        def forward(self, z):
            return self.decoder(z * XL_CONTRACT.latents_scale)  # the app divided by it; the module applies the VAE's own

    unet = swift_unet(pipeline.unet, fitted.timestep_table, fitted.prediction, fitted.tokens["encoder"], added_conditioning=True)
    return {"encoder": encoder("encoder"), "encoder_2": encoder("encoder_2"), "unet": unet, "decoder": VAEDecoder().eval()}


def app_example_inputs(fitted: XlFit, bos_id: int, eos_id: int, seed: int = 0) -> dict[str, tuple]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    ids = torch.full((1, CONTRACT.tokens), float(eos_id))
    ids[0, 0] = float(bos_id)
    size, width = fitted.latent_size, sum(fitted.hidden.values())
    states = torch.randn((2, width, 1, CONTRACT.tokens), generator=generator)
    states[..., fitted.tokens["encoder"]:] = 0
    return {
        "encoder": (ids,),
        "encoder_2": (ids.clone(),),
        "unet": (
            torch.randn((2, CONTRACT.latent_channels, size, size), generator=generator),
            torch.tensor([501.0, 501.0]),
            states,
            torch.randn((2, fitted.pooled), generator=generator),
            torch.tensor([list(XL_CONTRACT.default_geometry)] * 2),
        ),
        "decoder": (torch.randn((1, CONTRACT.latent_channels, size, size), generator=generator) / XL_CONTRACT.latents_scale,),
    }


def graphs(pipeline: Any, pipeline_dir: Path, fitted: XlFit, bos_id: int, eos_id: int, folder: Path) -> SwiftGraphs:
    downsample = 2 ** (len(pipeline.vae.config.block_out_channels) - 1)
    return SwiftGraphs(
        swift_pipeline="StableDiffusionXLPipeline(resourcesAt: URL(fileURLWithPath: FOLDER), configuration: MLModelConfiguration(), reduceMemory: false)",
        models=XL_CONTRACT.models, inputs=XL_CONTRACT.inputs, outputs=XL_CONTRACT.outputs,
        modules=app_modules(pipeline, fitted), examples=app_example_inputs(fitted, bos_id, eos_id),
        latent_size=fitted.latent_size, image_size=fitted.latent_size * downsample, adaptations=list(fitted.adaptations),
        app_settings=(
            f"encoderScaleFactor and decoderScaleFactor = {XL_CONTRACT.latents_scale} (as the Swift CLI does for XL), and originalSize and targetSize to the image size "
            "the model was trained at (the configuration's default is 1024); the XL pipeline runs from iOS 17 / macOS 14"
        ),
        float32_roles=("decoder", "image_encoder"),
        encoder_scale=XL_CONTRACT.latents_scale,
    )
