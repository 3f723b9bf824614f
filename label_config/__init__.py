"""Label Studio labeling configs for Robustar, rendered with a dataset's class names."""

from label_config.render import (
    ATTENTION_CONTROL,
    ATTENTION_LABEL,
    CLASS_CONTROL,
    CORRECTION_CONTROL,
    IMAGE_OBJECT,
    INFLUENCE_CONTROL,
    SALIENCY_OBJECT,
    SPURIOUS_CONTROL,
    SPURIOUS_LABEL,
    LabelConfigError,
    parse_config,
    render_config,
)

__all__ = [
    "ATTENTION_CONTROL",
    "ATTENTION_LABEL",
    "CLASS_CONTROL",
    "CORRECTION_CONTROL",
    "IMAGE_OBJECT",
    "INFLUENCE_CONTROL",
    "LabelConfigError",
    "SALIENCY_OBJECT",
    "SPURIOUS_CONTROL",
    "SPURIOUS_LABEL",
    "parse_config",
    "render_config",
]
