"""Render the Robustar labeling config and read the parts the backend needs back out of one."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from importlib import resources
from xml.sax.saxutils import quoteattr

IMAGE_OBJECT = "image"
SALIENCY_OBJECT = "saliency"
SPURIOUS_CONTROL = "spurious"
SPURIOUS_LABEL = "Spurious"
ATTENTION_CONTROL = "attention"
ATTENTION_LABEL = "Model attention"
CLASS_CONTROL = "pred_class"  # the model's predicted class (a prediction; never a training label)
CORRECTION_CONTROL = "class_fix"  # the expert's class correction (empty = the task's ground truth is right)
INFLUENCE_CONTROL = "influence"
VIEW_MARKERS = ("<!--views-->", "<!--/views-->")  # around the object tags a file upload cannot have


class LabelConfigError(ValueError):
    """The label config lacks a tag the backend needs, or is not valid XML."""


@dataclass(frozen=True)
class ParsedConfig:
    """What the backend reads from a project's label config."""

    classes: list[str]
    image_name: str
    image_value: str  # the task-data key that holds the image URL, e.g. "image"
    class_control: str
    spurious_control: str | None
    attention_control: str | None  # a second BrushLabels for the model's attention (older configs only)
    influence_control: str | None  # a TextArea for influence lines in the prediction (older configs only)
    has_saliency_view: bool
    correction_control: str | None = None  # Choices for the expert's class correction
    magicwand_control: str | None = None  # MagicWand: its (unlabelled) regions paint spurious pixels
    wand_label_control: str | None = None  # Labels with Spurious: its ``labels`` results with an RLE paint too
    has_influence_view: bool = False  # a HyperText loading the influence/suspicion page of the task


def render_config(classes: list[str], saliency_view: bool = True) -> str:
    """Return the labeling config XML with one ``<Choice>`` per class name.

    ``saliency_view=False`` leaves out the views beside the image (the saliency ``<Image>`` and the
    influence ``<HyperText>``): Label Studio accepts direct file uploads only while a config has a
    single object tag.
    """
    if not classes:
        raise ValueError("a labeling config needs at least one class")
    if len(set(classes)) != len(classes):
        raise ValueError(f"duplicate class names: {classes}")
    template = resources.files("label_config").joinpath("robustar.xml").read_text()
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in classes)
    if not saliency_view:
        start, end = VIEW_MARKERS
        while start in template:
            head, rest = template.split(start, 1)
            template = head + rest.split(end, 1)[1]
    return template.replace("{choices}", choices)


def parse_config(xml: str) -> ParsedConfig:
    """Find the image, class choices and brush controls in a label config.

    Raises LabelConfigError naming the missing tag when the config is not one we can serve.
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise LabelConfigError(f"label config is not valid XML: {e}") from e
    images = {el.get("name"): el.get("value", "") for el in root.iter("Image")}
    choices = [el for el in root.iter("Choices")]
    if not images:
        raise LabelConfigError("label config has no <Image> tag")
    if not choices:
        raise LabelConfigError("label config has no <Choices> tag for the class")
    chosen = next((c for c in choices if c.get("name") == CLASS_CONTROL), choices[0])
    image_name = chosen.get("toName") or next(iter(images))
    if image_name not in images:
        raise LabelConfigError(f"<Choices name={chosen.get('name')!r}> points to unknown image {image_name!r}")
    classes = [c.get("value") for c in chosen.iter("Choice") if c.get("value")]
    if not classes:
        raise LabelConfigError(f"<Choices name={chosen.get('name')!r}> has no <Choice> values")

    def brush_with(label: str) -> str | None:
        for el in root.iter("BrushLabels"):
            if any(lb.get("value") == label for lb in el.iter("Label")):
                return el.get("name")
        return None

    def on_image(el: ET.Element) -> bool:
        return (el.get("toName") or image_name) == image_name

    textareas = {el.get("name") for el in root.iter("TextArea")}
    hypertexts = {el.get("name") for el in root.iter("HyperText")}
    corrections = [c for c in choices if c.get("name") == CORRECTION_CONTROL and (c.get("toName") or image_name) == image_name]
    return ParsedConfig(
        classes=classes,
        image_name=image_name,
        image_value=images[image_name].lstrip("$"),
        class_control=chosen.get("name"),
        spurious_control=brush_with(SPURIOUS_LABEL),
        attention_control=brush_with(ATTENTION_LABEL),
        influence_control=INFLUENCE_CONTROL if INFLUENCE_CONTROL in textareas else None,
        has_saliency_view=SALIENCY_OBJECT in images,
        correction_control=CORRECTION_CONTROL if corrections else None,
        magicwand_control=next((el.get("name") for el in root.iter("MagicWand") if on_image(el)), None),
        wand_label_control=next((el.get("name") for el in root.iter("Labels") if on_image(el)
                                 and any(lb.get("value") == SPURIOUS_LABEL for lb in el.iter("Label"))), None),
        has_influence_view=INFLUENCE_CONTROL in hypertexts,
    )
