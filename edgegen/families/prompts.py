"""Prompts every family's reference and calibration inputs are made from.

Calibration for post-training quantization uses varied prompts, seeds and timesteps, so the
observed ranges cover what the sampling loop will feed the component.
"""

DEFAULT_PROMPT = "a red circle at the top left"
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
