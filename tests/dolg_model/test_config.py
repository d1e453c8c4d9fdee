"""DOLGConfig: validation names the bad field and value; JSON round trip."""
import pytest

from dolg_model.config import ConfigError, DOLGConfig


@pytest.mark.parametrize("field, value", [
    ("backbone", "resnet9000"),
    ("image_size", 8),
    ("embedding_dim", 0),
    ("multi_atrous", "wide"),
    ("atrous_rates", ()),
    ("head", "softmax"),
    ("subcenters", 3),  # with the default head (curricularface)
    ("scale", -1.0),
    ("margin", 2.0),
    ("gem_p", 0.5),
    ("scales", (1.0, -0.5)),
    ("label_smoothing", 1.0),
])
def test_bad_field_is_named_with_its_value(field, value):
    with pytest.raises(ConfigError) as err:
        DOLGConfig(**{field: value})
    assert err.value.field == field
    assert f"DOLGConfig.{field}=" in str(err.value) and repr(value) in str(err.value)


def test_json_round_trip_and_unknown_field():
    cfg = DOLGConfig(backbone="efficientnetb3", head="subcenter_arcface", subcenters=3,
                     dynamic_margins=True, scales=(1.0, 0.5))
    again = DOLGConfig.from_json(cfg.to_json())
    assert again == cfg and again.scales == (1.0, 0.5)
    with pytest.raises(ConfigError, match="embeding_dim"):
        DOLGConfig.from_dict({"embeding_dim": 256})


def test_custom_backbone_needs_its_taps():
    with pytest.raises(ConfigError, match="custom_local_layer"):
        DOLGConfig(backbone="custom")
    DOLGConfig(backbone="custom", custom_local_layer="a", custom_global_layer="b")
