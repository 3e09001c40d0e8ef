"""The decoder student manifest (``edgegen_decoder.json``): a pipeline folder whose ``vae`` is a
small decoder distilled from another VAE's decoder.

The tiny decoder (diffusers' ``AutoencoderTiny``, TAESD's architecture) decodes the sampler's
latents directly (its ``scaling_factor`` is 1), so the latent space the folder's denoiser works
in is the teacher VAE's, recorded here: pipelines compare by it, not by the tiny decoder's config.
"""

from __future__ import annotations

from typing import Any

from edgegen.schema.base import StrictModel

DECODER_SCHEMA_VERSION = 1
DECODER_MANIFEST_FILENAME = "edgegen_decoder.json"


class LatentSpace(StrictModel):
    latent_channels: int
    scaling_factor: float
    shift_factor: float | None = None


class DecoderStudentManifest(StrictModel):
    schema_version: int = DECODER_SCHEMA_VERSION
    edgegen_version: str
    created_at: str
    component: str = "vae_decoder"
    preset: str
    source_dir: str  # the pipeline folder the student was made from (its other components are kept)
    teacher_vae_sha256: str  # the VAE whose decoder it reproduces (edgegen.models.decoder_student.weights_sha256)
    latent_space: LatentSpace
    teacher_parameters: int  # decoder parameters
    student_parameters: int
    architecture: dict[str, Any]  # the AutoencoderTiny config
    recipe: dict[str, Any] | None = None  # what trained it; None until a recipe has
