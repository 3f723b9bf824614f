import pytest

from label_config import LabelConfigError, parse_config, render_config


def test_render_and_parse_round_trip():
    xml = render_config(["cat", "dog & wolf", 'say "hi"'])
    parsed = parse_config(xml)
    assert parsed.classes == ["cat", "dog & wolf", 'say "hi"']
    assert parsed.image_name == "image" and parsed.image_value == "image"
    assert parsed.class_control == "pred_class"
    assert parsed.spurious_control == "spurious"
    assert parsed.correction_control == "class_fix"
    assert parsed.attention_control is None and xml.count("<BrushLabels") == 1  # one paint tool
    assert parsed.influence_control is None and parsed.has_influence_view  # read-only page, not a form
    assert parsed.has_saliency_view
    assert "<MagicWand" in xml and parsed.magicwand_control == "magicwand"
    assert parsed.wand_label_control == "spurious_wand"  # labels wand regions Spurious as they are drawn


def test_single_object_variant_drops_only_the_views():
    xml = render_config(["a", "b"], saliency_view=False)
    parsed = parse_config(xml)
    assert not parsed.has_saliency_view and not parsed.has_influence_view and parsed.classes == ["a", "b"]
    assert xml.count("<Image ") == 1 and "<HyperText" not in xml
    assert parsed.correction_control == "class_fix" and parsed.spurious_control == "spurious"


def test_older_configs_still_parse():
    """Configs written by earlier versions: an attention BrushLabels, influence in a TextArea, no class_fix."""
    xml = ('<View><Image name="image" value="$image"/><BrushLabels name="spurious" toName="image">'
           '<Label value="Spurious"/></BrushLabels><BrushLabels name="attention" toName="image">'
           '<Label value="Model attention"/></BrushLabels><Choices name="pred_class" toName="image">'
           '<Choice value="a"/></Choices><TextArea name="influence" toName="image"/></View>')
    parsed = parse_config(xml)
    assert (parsed.attention_control, parsed.influence_control, parsed.correction_control) == ("attention", "influence", None)
    assert not parsed.has_influence_view


@pytest.mark.parametrize(
    "xml, message",
    [
        ("<View>", "not valid XML"),
        ('<View><Choices name="c" toName="i"><Choice value="a"/></Choices></View>', "no <Image>"),
        ('<View><Image name="i" value="$img"/></View>', "no <Choices>"),
        ('<View><Image name="i" value="$img"/><Choices name="c" toName="x"><Choice value="a"/></Choices></View>', "unknown image"),
        ('<View><Image name="i" value="$img"/><Choices name="c" toName="i"></Choices></View>', "no <Choice>"),
    ],
)
def test_configs_we_cannot_serve_are_named(xml, message):
    with pytest.raises(LabelConfigError, match=message):
        parse_config(xml)


def test_render_rejects_empty_or_duplicate_classes():
    with pytest.raises(ValueError):
        render_config([])
    with pytest.raises(ValueError):
        render_config(["a", "a"])
