"""The HDG-MMS discriminator: frozen teacher UNet features with small trainable heads.

The teacher sees a lightly noised latent and the caption; its down- and mid-block outputs are
captured by hooks (``edgegen.trainers.kd.FeatureTap``); each gets a head that pools it to a
vector and scores it, plus a projection term with the pooled caption embedding (a projection
discriminator), so the judgement is conditional on the text. Only the heads train.
"""

from __future__ import annotations

from typing import Any


def discriminator_blocks(unet: Any) -> list[str]:
    names = [f"down_blocks.{i}" for i in range(len(unet.down_blocks))]
    return names + (["mid_block"] if getattr(unet, "mid_block", None) is not None else [])


class Discriminator:
    def __init__(self, teacher_unet: Any, text_width: int, example: tuple):
        import torch

        from edgegen.trainers.kd import FeatureTap

        self.unet = teacher_unet
        self.tap = FeatureTap(teacher_unet, discriminator_blocks(teacher_unet))
        with torch.no_grad():
            teacher_unet(*example[:2], encoder_hidden_states=example[2])
        heads = torch.nn.ModuleDict()
        for name, feature in self.tap.features.items():
            channels = feature.shape[1]
            heads[name.replace(".", "/")] = torch.nn.ModuleDict(
                {
                    "features": torch.nn.Sequential(
                        torch.nn.Conv2d(channels, channels, 3, padding=1), torch.nn.SiLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
                    ),
                    "score": torch.nn.Linear(channels, 1),
                    "text": torch.nn.Linear(text_width, channels),
                }
            )
        self.heads = heads

    def __call__(self, latents: Any, timesteps: Any, embeddings: Any) -> Any:
        """One logit per sample: the mean over heads."""
        import torch

        self.unet(latents, timesteps, encoder_hidden_states=embeddings)
        pooled_text = embeddings.mean(dim=1)
        logits = []
        for name, feature in self.tap.features.items():
            head = self.heads[name.replace(".", "/")]
            vector = head["features"](feature)
            logits.append(head["score"](vector).squeeze(1) + (head["text"](pooled_text) * vector).sum(dim=1) / vector.shape[1] ** 0.5)
        return torch.stack(logits).mean(dim=0)


def hinge_discriminator_loss(real_logits: Any, fake_logits: Any) -> Any:
    import torch

    return torch.relu(1 - real_logits).mean() + torch.relu(1 + fake_logits).mean()


def hinge_generator_loss(fake_logits: Any) -> Any:
    return -fake_logits.mean()
