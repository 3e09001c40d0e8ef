"""The embedded default is a real diffusers folder; bad folders fail in one line."""

import json

import pytest

from edgegen.families.stable_diffusion import COMPONENT_NAMES, build_component, pipeline_components, tokenize
from edgegen.errors import EdgegenError
from edgegen.families.loading import checkpoint_sha256, load_pipeline


def test_embedded_default_loads_with_from_pretrained(pipeline_dir, pipeline):
    from diffusers import StableDiffusionPipeline

    index = json.loads((pipeline_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert isinstance(pipeline, StableDiffusionPipeline)
    assert pipeline_components(pipeline) == list(COMPONENT_NAMES)


def test_embedded_default_is_reproducible(tmp_path, pipeline_dir):
    from edgegen.embedded.builders import build_embedded_default

    again = build_embedded_default(tmp_path / "again")
    for subfolder in ("text_encoder", "unet", "vae"):
        assert checkpoint_sha256(again, subfolder) == checkpoint_sha256(pipeline_dir, subfolder)


def test_byte_level_tokenizer_round_trips_any_prompt(pipeline):
    prompt = "a blue square, bottom-right!"
    ids = tokenize(pipeline, [prompt])
    assert ids.shape == (1, pipeline.tokenizer.model_max_length)
    decoded = pipeline.tokenizer.decode(ids[0], skip_special_tokens=True)
    assert decoded.replace(" ", "") == prompt.replace(" ", "")[: len(decoded.replace(" ", ""))]


def test_pipeline_generates_an_image(pipeline):
    import torch

    image = pipeline("a red circle", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 32, 32, 3)
    assert 0.0 <= image.min() and image.max() <= 1.0


def test_components_declare_static_specs(pipeline):
    denoiser = build_component(pipeline, "denoiser")
    assert [s.name for s in denoiser.inputs] == ["sample", "timestep", "encoder_hidden_states"]
    assert denoiser.inputs[1].dtype == "float32"
    assert denoiser.outputs[0].shape == denoiser.inputs[0].shape
    decoder = build_component(pipeline, "vae_decoder", batch_size=2)
    assert decoder.outputs[0].shape == [2, 3, 32, 32]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda tmp: tmp / "absent", "pipeline folder not found"),
        (lambda tmp: tmp, "not a diffusers pipeline folder"),
    ],
)
def test_bad_pipeline_folders(tmp_path, make, message):
    with pytest.raises(EdgegenError, match=message):
        load_pipeline(make(tmp_path))


def test_broken_pipeline_folder_is_one_line(tmp_path):
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}')
    with pytest.raises(EdgegenError, match="cannot load pipeline") as info:
        load_pipeline(tmp_path)
    assert "\n" not in str(info.value)


def test_unknown_component_lists_choices(pipeline):
    with pytest.raises(EdgegenError, match="choose one of: text_encoder, denoiser, vae_decoder"):
        build_component(pipeline, "audio_encoder")
