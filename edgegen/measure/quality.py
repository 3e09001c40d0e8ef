"""Image quality against a reference: PSNR/SSIM per image (torchmetrics), FID/KID and CLIP score.

Images are 3xHxW float arrays in [-1, 1] (what the decoders produce); they are mapped to [0, 1]
and PSNR/SSIM use a data range of 1.0. Distribution metrics need a feature extractor, which
edgegen never downloads: ``--feature-extractor`` is an ONNX file taking ``images`` [N,3,H,W]
float in [-1, 1] and returning ``features`` [N,D] (``edgegen probe export-features`` writes one
for the built-in shapes; Inception-v3 exported to ONNX works the same way), and ``--clip`` is a
local transformers CLIP folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import EdgegenError, first_line


def _unit_range(images: np.ndarray) -> Any:
    import torch

    array = np.asarray(images, dtype=np.float32)
    if array.ndim == 3:
        array = array[None]
    return torch.from_numpy((np.clip(array, -1, 1) + 1) / 2)


def image_psnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(_unit_range(test), _unit_range(reference), data_range=1.0))


def image_ssim(reference: np.ndarray, test: np.ndarray) -> float:
    from torchmetrics.functional.image import structural_similarity_index_measure

    # float64: in float32 the Gaussian window's rounding alone leaves a variance of ~1e-6 on a
    # flat image, which moves SSIM in the fourth decimal.
    return float(structural_similarity_index_measure(_unit_range(test).double(), _unit_range(reference).double(), data_range=1.0))


class OnnxFeatures:
    """A user's ONNX feature extractor as the torch module torchmetrics' FID/KID call."""

    def __init__(self, path: Path):
        path = Path(path)
        if not path.is_file():
            raise EdgegenError(f"feature extractor not found: {path}")
        try:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own types for bad files
            raise EdgegenError(f"cannot load feature extractor {path}: {first_line(error)[:200]}") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise EdgegenError(f"feature extractor {path} must take one image batch [N,3,H,W]")
        self.input_name = inputs[0].name
        self.path = path

    def module(self) -> Any:
        import torch

        session, name = self.session, self.input_name
        shape = session.get_inputs()[0].shape
        static_batch = isinstance(shape[0], int)
        size = (shape[2], shape[3]) if isinstance(shape[2], int) and isinstance(shape[3], int) else None

        class Extractor(torch.nn.Module):
            def forward(self, images):
                images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
                if size is not None and tuple(images.shape[-2:]) != size:
                    images = torch.nn.functional.interpolate(images, size=size, mode="bilinear", align_corners=False)
                batch = (images * 2 - 1).numpy().astype(np.float32)
                # A static-batch export takes one image at a time; a dynamic one, the whole batch.
                chunks = [batch[i : i + 1] for i in range(len(batch))] if static_batch else [batch]
                features = np.concatenate([session.run(None, {name: chunk})[0] for chunk in chunks])
                return torch.from_numpy(features.reshape(len(batch), -1)).double()

        return Extractor()

    def image_size(self) -> tuple[int, int]:
        shape = self.session.get_inputs()[0].shape
        height, width = shape[2], shape[3]
        return (height if isinstance(height, int) else 32, width if isinstance(width, int) else 32)


def distribution_gap(extractor: OnnxFeatures, reference: np.ndarray, test: np.ndarray) -> tuple[float, float]:
    """(FID, KID mean) of ``test`` images against ``reference`` images, in the extractor's features."""
    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    count = min(len(reference), len(test))
    if count < 2:
        raise EdgegenError("FID/KID need at least 2 images per side; give more prompts")
    size = extractor.image_size()
    fid = FrechetInceptionDistance(feature=extractor.module(), normalize=True, input_img_size=(3, *size))
    kid = KernelInceptionDistance(feature=extractor.module(), normalize=True, subsets=10, subset_size=count)
    for metric in (fid, kid):
        metric.update(_unit_range(reference), real=True)
        metric.update(_unit_range(test), real=False)
    with torch.no_grad():
        fid_value = float(fid.compute())
        kid_mean, _ = kid.compute()
    return fid_value, float(kid_mean)


def clip_score(clip_dir: Path, images: np.ndarray, prompts: list[str]) -> float:
    """Mean CLIP score (torchmetrics) of images against their prompts, with a local CLIP folder."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    if not Path(clip_dir).is_dir():
        raise EdgegenError(f"CLIP folder not found: {clip_dir}")
    import torch
    from transformers import CLIPModel, CLIPProcessor

    def load_local() -> tuple[Any, Any]:
        # torchmetrics only takes hub names or a loader; a loader keeps it to this folder.
        model = CLIPModel.from_pretrained(str(clip_dir), local_files_only=True).eval()
        # transformers 5 returns model outputs where torchmetrics 1.9 expects the projected tensor.
        for method in ("get_image_features", "get_text_features"):
            original = getattr(model, method)
            setattr(model, method, lambda *args, _original=original, **kwargs: _projected(_original(*args, **kwargs)))
        return model, CLIPProcessor.from_pretrained(str(clip_dir), local_files_only=True)

    try:
        metric = CLIPScore(model_name_or_path=load_local)
    except Exception as error:  # transformers raises many types for a bad folder
        raise EdgegenError(f"cannot load CLIP model {clip_dir}: {first_line(error)[:200]}") from None
    pixels = (_unit_range(images) * 255).round().to(dtype=torch.uint8)
    with torch.no_grad():
        return float(metric(list(pixels), list(prompts)))


def _projected(output: Any) -> Any:
    return output if hasattr(output, "norm") else output.pooler_output
