"""Feature-level knowledge distillation: block outputs captured by hooks, matched through heads.

Students keep the teacher's block structure (fewer layers per block, narrower channels), so a
teacher block and the student block of the same name see the same resolution; a 1x1 conv head
maps the student's channels to the teacher's. The heads train with the student and are dropped
from the final model.
"""

from __future__ import annotations

from typing import Any

from edgegen.errors import EdgegenError


class FeatureTap:
    """Records the output tensor of named submodules on every forward."""

    def __init__(self, model: Any, names: list[str]):
        modules = dict(model.named_modules())
        missing = [name for name in names if name not in modules]
        if missing:
            raise EdgegenError(f"{type(model).__name__} has no block(s) {', '.join(missing)}")
        self.features: dict[str, Any] = {}
        self.handles = [modules[name].register_forward_hook(self._hook(name)) for name in names]

    def _hook(self, name: str):
        def record(module, inputs, output):
            self.features[name] = output[0] if isinstance(output, tuple) else output

        return record

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def block_names(unet: Any) -> list[str]:
    names = [f"down_blocks.{i}" for i in range(len(unet.down_blocks))]
    if getattr(unet, "mid_block", None) is not None:
        names.append("mid_block")
    return names + [f"up_blocks.{i}" for i in range(len(unet.up_blocks))]


def matching_blocks(teacher: Any, student: Any, example: tuple) -> dict[str, tuple[int, int]]:
    """Blocks present in both whose outputs have the same spatial size: name -> (student, teacher) channels."""
    import torch

    shared = [name for name in block_names(student) if name in block_names(teacher)]
    taps = FeatureTap(teacher, shared), FeatureTap(student, shared)
    with torch.no_grad():
        teacher(*example[:2], encoder_hidden_states=example[2])
        student(*example[:2], encoder_hidden_states=example[2])
    for tap in taps:
        tap.remove()
    teacher_features, student_features = taps[0].features, taps[1].features
    return {
        name: (student_features[name].shape[1], teacher_features[name].shape[1])
        for name in shared
        if student_features[name].shape[2:] == teacher_features[name].shape[2:]
    }


def projection_heads(channels: dict[str, tuple[int, int]]) -> Any:
    import torch

    heads = torch.nn.ModuleDict()
    for name, (student_channels, teacher_channels) in channels.items():
        head = torch.nn.Conv2d(student_channels, teacher_channels, kernel_size=1)
        if student_channels == teacher_channels:  # start as the identity where widths agree
            torch.nn.init.dirac_(head.weight)
            torch.nn.init.zeros_(head.bias)
        heads[name.replace(".", "/")] = head
    return heads


def feature_loss(heads: Any, student_features: dict[str, Any], teacher_features: dict[str, Any]) -> Any:
    import torch

    losses = [
        torch.nn.functional.mse_loss(heads[name.replace(".", "/")](student_features[name]), teacher_features[name])
        for name in teacher_features
    ]
    return torch.stack(losses).mean()


def check_compatible(teacher: Any, student: Any) -> None:
    """Teacher and student (edgegen.families.Networks) must share the conditioning and the latent space."""
    problems = []
    t, s = teacher.denoiser.config, student.denoiser.config
    if t.cross_attention_dim != s.cross_attention_dim:
        problems.append(f"cross_attention_dim {t.cross_attention_dim} vs {s.cross_attention_dim}")
    if t.in_channels != s.in_channels or t.out_channels != s.out_channels:
        problems.append(f"latent channels {t.in_channels} vs {s.in_channels}")
    if t.sample_size != s.sample_size:
        problems.append(f"latent size {t.sample_size} vs {s.sample_size}")
    hidden = teacher.encoder.config.hidden_size
    if hidden != s.cross_attention_dim:
        problems.append(f"the teacher's text embeddings are {hidden} wide, the student's cross-attention takes {s.cross_attention_dim}")
    if teacher.tokenizer.model_max_length != student.tokenizer.model_max_length:
        problems.append(f"prompt length {teacher.tokenizer.model_max_length} vs {student.tokenizer.model_max_length}")
    if teacher.decoder.config.latent_channels != student.decoder.config.latent_channels:
        problems.append("the VAEs' latent channels differ")
    if problems:
        raise EdgegenError("teacher and student conditioning do not match: " + "; ".join(problems))
