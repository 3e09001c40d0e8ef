"""Image quality metrics against hand-computable values, and the user-supplied extractors' plumbing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

FEATURES = 8


def write_feature_extractor(path: Path, seed: int = 0, size: int = 32) -> Path:
    """A small ONNX feature extractor of our own: tanh of a fixed random projection of the pixels."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(seed).normal(0, 1 / math.sqrt(3 * size * size), (3 * size * size, FEATURES))
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["images"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "projection"], ["projected"]),
            helper.make_node("Tanh", ["projected"], ["features"]),
        ],
        "features",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", FEATURES])],
        [numpy_helper.from_array(weights.astype(np.float32), "projection")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def write_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A random tiny CLIP (model + processor) saved locally: plumbing only, its scores mean nothing."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from edgegen.embedded.builders import build_tokenizer

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    config = CLIPConfig(
        text_config=dict(small, vocab_size=tokenizer.vocab_size + len(tokenizer.get_added_vocab()), max_position_embeddings=tokenizer.model_max_length,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(small, image_size=32, patch_size=8),
        projection_dim=8,
    )
    CLIPModel(config).eval().save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def extractor(tmp_path_factory):
    from edgegen.measure.quality import OnnxFeatures

    return OnnxFeatures(write_feature_extractor(tmp_path_factory.mktemp("features") / "features.onnx"))


def _images(seed: int, count: int = 12) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (count, 3, 32, 32)).astype(np.float32)


def test_psnr_of_a_known_mse():
    from edgegen.measure.quality import image_psnr_db

    reference = np.zeros((3, 16, 16), np.float32)
    # +0.2 in [-1, 1] is +0.1 in [0, 1]: MSE 0.01 at data range 1 -> exactly 20 dB.
    assert image_psnr_db(reference, reference + 0.2) == pytest.approx(20.0, abs=1e-4)


def test_ssim_identical_is_one_and_of_constant_images_is_the_luminance_term():
    from edgegen.measure.quality import image_ssim

    textured = _images(1, 1)[0]
    assert image_ssim(textured, textured) == pytest.approx(1.0, abs=1e-6)
    # Constant images have no variance or covariance, so SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    # with a = 0.5, b = 0.75 in [0, 1] and C1 = (0.01 * 1)^2.
    c1 = 0.01**2
    expected = (2 * 0.5 * 0.75 + c1) / (0.5**2 + 0.75**2 + c1)
    got = image_ssim(np.zeros((3, 32, 32), np.float32), np.full((3, 32, 32), 0.5, np.float32))
    assert got == pytest.approx(expected, abs=1e-6)
    shifted = np.roll(textured, 3, axis=-1)
    assert image_ssim(textured, shifted) < 0.5


def test_fid_and_kid_of_identical_sets_are_near_zero_and_grow_with_a_shift(extractor):
    from edgegen.measure.quality import distribution_gap

    images = _images(2)
    fid_same, kid_same = distribution_gap(extractor, images, images)
    fid_other, kid_other = distribution_gap(extractor, images, np.clip(images * 0.3 + 0.5, -1, 1))
    assert abs(fid_same) < 1e-3
    assert fid_other > 100 * max(abs(fid_same), 1e-6)
    # KID's estimator of a set against itself is not 0 but -2 (mean k(x,x) - mean k(x,y), y != x) / m
    # (its cross term keeps the diagonal); with torchmetrics' kernel (x.y / d + 1)^3 by hand:
    import torch

    features = extractor.module()(torch.from_numpy((images + 1) / 2)).numpy()
    kernel = (features @ features.T / FEATURES + 1) ** 3
    m = len(images)
    off_diagonal = kernel.sum() - np.trace(kernel)
    expected = 2 * (off_diagonal / (m * (m - 1)) - kernel.sum() / m**2)
    assert kid_same == pytest.approx(expected, rel=1e-6)
    assert kid_other > abs(kid_same)
    assert np.isfinite([fid_same, kid_same, fid_other, kid_other]).all()


def test_distribution_gap_needs_two_images(extractor):
    from edgegen.errors import EdgegenError
    from edgegen.measure.quality import distribution_gap

    with pytest.raises(EdgegenError, match="at least 2"):
        distribution_gap(extractor, _images(3, 1), _images(4, 1))


def test_feature_extractor_that_does_not_load_is_one_line(tmp_path):
    from edgegen.errors import EdgegenError
    from edgegen.measure.quality import OnnxFeatures

    with pytest.raises(EdgegenError, match="not found"):
        OnnxFeatures(tmp_path / "missing.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not an onnx model")
    with pytest.raises(EdgegenError, match="cannot load feature extractor"):
        OnnxFeatures(corrupt)


def test_clip_score_from_a_local_folder_is_finite_and_deterministic(tmp_path):
    from edgegen.errors import EdgegenError
    from edgegen.measure.quality import clip_score

    folder = write_tiny_clip(tmp_path / "clip")
    images, prompts = _images(5, 3), ["a red circle", "a blue square", "a green triangle"]
    first = clip_score(folder, images, prompts)
    assert np.isfinite(first)
    assert clip_score(folder, images, prompts) == pytest.approx(first, abs=1e-6)
    with pytest.raises(EdgegenError, match="CLIP"):
        clip_score(tmp_path / "nowhere", images, prompts)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgegenError, match="cannot load CLIP"):
        clip_score(tmp_path / "empty", images, prompts)
