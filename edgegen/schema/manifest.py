"""The artifact manifest: what an exporter made, from what, with which tools, and how faithful.

Input/output specs are recorded *as the converter produced them* (LiteRT narrows int64 to int32,
for example); runtimes validate and cast inputs against these, not against the eager model.
"""

from __future__ import annotations

import posixpath
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from edgegen.schema.base import StrictModel

# 2: the source records the weight variant and the LoRA adapters fused before export.
# 3: the source records the load dtype. 4: one-call pipeline programs record their schedule.
ARTIFACT_SCHEMA_VERSION = 4
MANIFEST_FILENAME = "manifest.json"
REFERENCE_FILENAME = "reference.safetensors"


class TensorSpec(StrictModel):
    name: str
    shape: list[int]
    dtype: str  # a numpy dtype name: float32, int64, ...


def relative_path(value: str) -> str:
    """A path inside the artifact folder: relative, normalised, POSIX, never climbing out."""
    if not value or "\x00" in value or "\\" in value:
        raise ValueError(f"{value[:120]!r} is not a relative path inside the artifact")
    if value.startswith("/") or posixpath.normpath(value) != value or value == "." or value.split("/")[0] == "..":
        raise ValueError(f"{value[:120]!r} must be a normalised relative path inside the artifact (no leading '/', no '.' or '..' part)")
    return value


class ArtifactFile(StrictModel):
    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)

    _relative = field_validator("path")(relative_path)


class Quantization(StrictModel):
    scheme: str = "none"
    details: dict[str, Any] = {}


class CoremlDeployment(StrictModel):
    """How a Core ML program (a .mlpackage, or a .pte with the Core ML delegate) is meant to load."""

    deployment_target: str  # coremltools' minimum deployment target, e.g. "iOS17"
    compute_units: str  # coremltools ComputeUnit name, e.g. "ALL"
    precision: str  # what the program computes in: "float32" or "float16"


class Adapter(StrictModel):
    """A LoRA adapter fused into the weights before export."""

    file: str  # its file name as given; the hash says which file it was
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scale: float


class Source(StrictModel):
    pipeline_dir: str
    pipeline_class: str
    component_class: str
    checkpoint_sha256: str  # the base weights; adapters below are fused on top
    variant: str | None = None  # the weight files loaded, e.g. fp16
    adapters: list[Adapter] = []
    dtype: Literal["float32", "float16"] = "float32"  # what the weights were loaded and computed in


def _lift_v1(data: dict[str, Any]) -> dict[str, Any]:
    """Version 1 manifests had no variant or adapters: the base weights, as is."""
    return {**data, "schema_version": 2}


def _lift_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Version 2 manifests had no load dtype: every one was loaded and exported in float32."""
    return {**data, "schema_version": 3}


def _lift_v3(data: dict[str, Any]) -> dict[str, Any]:
    """Version 3 had no one-call pipeline programs: every artifact was one component."""
    return {**data, "schema_version": 4}


MANIFEST_MIGRATIONS = {1: _lift_v1, 2: _lift_v2, 3: _lift_v3}


class OneCallProgram(StrictModel):
    """What a one-call pipeline artifact computes: token ids and initial noise in, image out.

    The app tokenizes (the tokenizer files are in the artifact), draws the initial noise
    (``latent_shape``, standard normal) and makes one call; the program runs the text encoder,
    ``len(timesteps)`` denoiser steps on this fixed schedule and the decoder, and returns the
    image in [-1, 1], clamped.
    """

    family: str
    timesteps: list[int]  # the student's own schedule, in the order the steps run
    alphas_cumprod: list[float]  # the scheduler's at each timestep, baked into the graph
    prediction_type: str  # what the denoiser predicts: epsilon, v_prediction or sample
    update: str  # how the latents move from one timestep to the next
    guidance_scale: float  # classifier-free guidance inside the program; 1: none
    latent_shape: list[int]
    tokenizer_folder: str  # inside the artifact
    max_length: int  # token ids are padded and truncated to this
    image_range: list[float] = [-1.0, 1.0]
    # The components the program holds, by name, and the checkpoint each came from.
    components: dict[str, str]

    _relative = field_validator("tokenizer_folder")(relative_path)


class FakeQuantParity(StrictModel):
    """An int8 export of a QAT student vs the fake-quant graph it was trained as, same inputs."""

    psnr_db: float
    max_abs_error: float
    cosine: float


class Parity(StrictModel):
    """Exported vs eager on the reference inputs; ``measured`` is false where this host cannot run it."""

    measured: bool
    reason: str | None = None
    runtime: str | None = None
    min_psnr_db: float
    psnr_db: float | None = None
    max_abs_error: float | None = None
    cosine: float | None = None
    vs_fake_quant: FakeQuantParity | None = None  # int8 exports of a QAT student only


class Delegation(StrictModel):
    """Which graph nodes an accelerator delegate took, and which fell back."""

    backend: str
    total_nodes: int
    delegated_nodes: int
    delegate_subgraphs: int
    fallback_ops: dict[str, int] = {}
    # Why the delegate's partitioner refused each fallback op, in its own words (the first
    # refusal seen); an op it never considered has no partitioner support at all.
    fallback_reasons: dict[str, str] = {}

    @property
    def delegated_fraction(self) -> float:
        return self.delegated_nodes / self.total_nodes if self.total_nodes else 1.0


class ArtifactManifest(StrictModel):
    schema_version: int = ARTIFACT_SCHEMA_VERSION
    kind: Literal["edgegen.artifact"] = "edgegen.artifact"
    edgegen_version: str
    created_at: str
    target: str
    backend: str | None = None
    component: str
    model_file: str
    # Files beside the model holding its weights, which a runtime loads with it (ExecuTorch's
    # .ptd, ONNX external data); empty when the weights are inside the model file.
    weight_files: list[str] = []
    files: list[ArtifactFile]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    eager_inputs: list[TensorSpec]
    eager_outputs: list[TensorSpec]
    quantization: Quantization
    source: Source
    toolchain: dict[str, str]
    graph_rewrites: list[str] = []
    parity: Parity
    delegation: Delegation | None = None
    coreml: CoremlDeployment | None = None  # Core ML programs only
    program: OneCallProgram | None = None  # one-call pipeline artifacts only (component "pipeline")
    reference_file: str = REFERENCE_FILENAME

    _relative = field_validator("model_file", "reference_file")(relative_path)

    @property
    def precision(self) -> str:
        """What results tables call its numeric format: the quantization scheme, or float16 for a
        float artifact computing in float16 (``--dtype float16``)."""
        if self.quantization.scheme == "none" and self.source.dtype == "float16":
            return "float16"
        return self.quantization.scheme

    @model_validator(mode="after")
    def _every_file_listed(self) -> ArtifactManifest:
        """The integrity check cannot be switched off: the model and the reference are hashed."""
        paths = [entry.path for entry in self.files]
        if not paths:
            raise ValueError("files is empty: every file of the artifact must be listed with its hash")
        if len(set(paths)) != len(paths):
            raise ValueError("files lists a path twice")
        if self.model_file not in paths and not any(path.startswith(self.model_file + "/") for path in paths):
            raise ValueError(f"model_file {self.model_file!r} is not listed in files")
        if self.reference_file not in paths:
            raise ValueError(f"reference_file {self.reference_file!r} is not listed in files")
        for weights in self.weight_files:
            relative_path(weights)
            if weights not in paths:
                raise ValueError(f"weight file {weights!r} is not listed in files")
        return self
