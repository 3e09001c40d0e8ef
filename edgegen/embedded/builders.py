"""The embedded default teacher: a tiny but real diffusers text-to-image pipeline.

Built from configs in code with a fixed seed, so it needs no download and is the same on every
machine; then the weights trained on the built-in shapes data (``weights/``, made by
``scripts/train_embedded_default.py``) are loaded into it. It is saved with ``save_pretrained``
and used only through ``from_pretrained`` on the saved folder, exactly as a user's own Stable
Diffusion folder would be.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgegen.errors import EdgegenError

DEFAULT_SEED = 0
WEIGHTS_DIR = Path(__file__).parent / "weights"
TEACHER_WEIGHTS = WEIGHTS_DIR / "teacher.safetensors"  # keys prefixed unet. / text_encoder. / vae.
TEACHER_PROVENANCE = WEIGHTS_DIR / "teacher.json"
STUDENT_WEIGHTS = {"distilled": WEIGHTS_DIR / "student.safetensors", "few-step": WEIGHTS_DIR / "student-fewstep.safetensors"}
STUDENT_PROVENANCE = WEIGHTS_DIR / "students.json"  # kind -> preset and the recipe that trained it
PROBE_DIR = WEIGHTS_DIR / "probe"  # the caption-faithfulness probe of the shapes data
# The few-step student's tiny decoder (``edgegen train decoder``): its AutoencoderTiny weights, and
# its preset and recipe.
DECODER_WEIGHTS = WEIGHTS_DIR / "student-fewstep-decoder.safetensors"
DECODER_PROVENANCE = WEIGHTS_DIR / "decoder-student.json"
EMBEDDED_DEFAULT_NAME = "edgegen-tiny-t2i"

# Byte-level CLIP vocabulary: every byte is a token, with and without the end-of-word marker,
# and no merges. CLIPTokenizer then splits text into bytes, so any prompt tokenizes offline.
_START_TOKEN = "<|startoftext|>"
_END_TOKEN = "<|endoftext|>"
TEXT_MAX_LENGTH = 40  # bytes: "a yellow triangle at the bottom right" with its start and end tokens
LATENT_SIZE = 8
IMAGE_SIZE = 32


def _bytes_to_unicode() -> list[str]:
    # The GPT-2/CLIP reversible byte -> printable character table.
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def byte_level_vocab() -> dict[str, int]:
    chars = _bytes_to_unicode()
    tokens = chars + [c + "</w>" for c in chars] + [_START_TOKEN, _END_TOKEN]
    return {token: index for index, token in enumerate(tokens)}


def build_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer(
        vocab=byte_level_vocab(),
        merges=[],
        model_max_length=TEXT_MAX_LENGTH,
        pad_token=_END_TOKEN,
    )


def trained_weights_available() -> bool:
    return TEACHER_WEIGHTS.is_file() and TEACHER_PROVENANCE.is_file()


def _load_trained(text_encoder, unet, vae) -> None:
    from safetensors.torch import load_file

    state = load_file(str(TEACHER_WEIGHTS))
    for prefix, module in (("unet.", unet), ("text_encoder.", text_encoder), ("vae.", vae)):
        part = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
        module.load_state_dict(part, strict=True)
    provenance = json.loads(TEACHER_PROVENANCE.read_text(encoding="utf-8"))
    vae.register_to_config(scaling_factor=float(provenance["vae_scaling_factor"]))


def build_embedded_default(output_dir: Path, seed: int = DEFAULT_SEED, weights: str = "trained") -> Path:
    """Construct the embedded default pipeline and save it to ``output_dir``.

    ``weights="trained"`` loads the committed weights trained on the built-in shapes data;
    ``"random"`` keeps the seeded initialisation (what training starts from).
    """
    if weights not in ("trained", "random"):
        raise EdgegenError(f"unknown weights '{weights}'; choose trained or random")
    if weights == "trained" and not trained_weights_available():
        raise EdgegenError(f"the trained weights are missing from {WEIGHTS_DIR}; reinstall edgegen")
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    vocab_size = len(byte_level_vocab())
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=TEXT_MAX_LENGTH,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=IMAGE_SIZE,
    )
    # Zero terminal SNR with v-prediction (Lin et al., "Common Diffusion Noise Schedules and
    # Sample Steps are Flawed"): on 8x8 latents the usual schedule leaves the shape's quadrant
    # readable in the noise at t=999, so a model trained on it takes position from the initial
    # noise instead of the caption. At zero SNR the first step has only the caption to go on.
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        rescale_betas_zero_snr=True,
        prediction_type="v_prediction",
        timestep_spacing="trailing",
        steps_offset=1,  # unused by trailing spacing; set so diffusers does not call the config outdated
    )
    if weights == "trained":
        _load_trained(text_encoder, unet, vae)
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=build_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(output_dir, safe_serialization=True)
    return output_dir


def build_embedded_student(teacher_dir: Path, output_dir: Path, kind: str = "distilled") -> Path:
    """The committed student of the trained default: ``distilled`` (KD-MMG) or ``few-step`` (HDG-MMS).

    Made exactly as a user's would be (``make_student`` from the teacher folder), then given the
    trained UNet weights and the recipe that produced them.
    """
    from safetensors.torch import load_file

    from edgegen.artifact import atomic_folder
    from edgegen.models.checkpoint import read_student_manifest, write_student
    from edgegen.families.loading import load_pipeline
    from edgegen.models.student import make_student
    from edgegen.schema.checkpoint import StudentManifest, lift_v1, lift_v2

    if kind not in STUDENT_WEIGHTS:
        raise EdgegenError(f"unknown student '{kind}'; choose one of: {', '.join(STUDENT_WEIGHTS)}")
    if not (STUDENT_WEIGHTS[kind].is_file() and STUDENT_PROVENANCE.is_file()):
        raise EdgegenError(f"the trained student weights are missing from {WEIGHTS_DIR}; reinstall edgegen")
    provenance = json.loads(STUDENT_PROVENANCE.read_text(encoding="utf-8"))[kind]
    output_dir = Path(output_dir)
    make_student(teacher_dir, provenance["preset"], output_dir, force=True)
    pipeline = load_pipeline(output_dir)
    pipeline.unet.load_state_dict(load_file(str(STUDENT_WEIGHTS[kind])), strict=True)
    # students.json may carry the few-step schedule inside "recipe" (schema 1): lifted to its field.
    fields = {**read_student_manifest(output_dir).model_dump(exclude={"sampling", "qat"}), "recipe": provenance["recipe"]}
    fields.update({key: provenance[key] for key in ("sampling", "qat") if provenance.get(key) is not None})
    manifest = StudentManifest.model_validate(lift_v2(lift_v1(fields)))
    with atomic_folder(output_dir, force=True) as staging:
        write_student(pipeline, manifest, staging)
    return output_dir


def build_embedded_decoder_student(fewstep_dir: Path, output_dir: Path) -> Path:
    """The few-step student with the committed tiny decoder in place of its VAE, made as a user's
    would be (``make_decoder_student`` from the few-step student's folder) and given the trained
    decoder weights and the recipe that produced them."""
    import shutil

    from diffusers import AutoencoderTiny
    from safetensors.torch import load_file

    from edgegen.artifact import atomic_folder
    from edgegen.models.decoder_student import make_decoder_student, read_decoder_manifest
    from edgegen.schema.base import write_json
    from edgegen.schema.decoder_student import DECODER_MANIFEST_FILENAME

    if not (DECODER_WEIGHTS.is_file() and DECODER_PROVENANCE.is_file()):
        raise EdgegenError(f"the trained decoder student weights are missing from {WEIGHTS_DIR}; reinstall edgegen")
    provenance = json.loads(DECODER_PROVENANCE.read_text(encoding="utf-8"))
    output_dir = Path(output_dir)
    untrained = output_dir.with_name(output_dir.name + ".untrained")
    make_decoder_student(fewstep_dir, provenance["preset"], untrained, force=True)
    with atomic_folder(output_dir, force=True) as staging:
        shutil.copytree(untrained, staging, dirs_exist_ok=True)
        vae = AutoencoderTiny.from_pretrained(staging / "vae")
        vae.load_state_dict(load_file(str(DECODER_WEIGHTS)), strict=True)
        vae.eval().save_pretrained(staging / "vae", safe_serialization=True)
        manifest = read_decoder_manifest(staging)
        write_json(staging / DECODER_MANIFEST_FILENAME, manifest.model_copy(update={"recipe": provenance["recipe"]}))
    shutil.rmtree(untrained)
    return output_dir
