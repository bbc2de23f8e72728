import inspect

import pytest

from lifelong.methods import METHODS, make_method
from lifelong.catalog import CATALOG, method_spec
from lifelong.models.diffusion import DiffusionConfig
from lifelong.models.gan import GANConfig

CONFIGS = {
    "diffusion": DiffusionConfig(image_size_px=8, in_channels=1, num_classes=4, block_out_channels=(8, 16)),
    "gan": GANConfig(condition="label", image_size_px=8, in_channels=1, num_classes=4, z_dim=4, width=8),
}
ALL = [(family, name) for family in CATALOG for name in CATALOG[family]]


def _knobs(cls) -> set[str]:
    """The constructor's keyword-only arguments that params.yaml sets (generator_seed is the learner's)."""
    params = inspect.signature(cls).parameters.values()
    return {p.name for p in params if p.kind is p.KEYWORD_ONLY} - {"generator_seed"}


def test_registry_and_catalog_name_the_same_methods():
    assert {f: set(m) for f, m in METHODS.items()} == {f: set(m) for f, m in CATALOG.items()}


@pytest.mark.parametrize("family, name", ALL)
def test_a_method_has_knobs_iff_the_catalog_names_its_section(family, name):
    assert bool(_knobs(METHODS[family][name])) == (method_spec(family, name).options is not None)


def test_methods_that_share_a_section_take_the_same_knobs():
    by_section: dict[str, set[frozenset[str]]] = {}
    for family, name in ALL:
        if (section := method_spec(family, name).options) is not None:
            by_section.setdefault(section, set()).add(frozenset(_knobs(METHODS[family][name])))
    assert by_section and all(len(knob_sets) == 1 for knob_sets in by_section.values())


@pytest.mark.parametrize(
    "family, name, knob",
    [("diffusion", "finetune", "weight"), ("diffusion", "generative_replay", "beta"),
     ("gan", "finetune", "beta"), ("gan", "lifelong_gan", "filter_ratio"), ("gan", "piggyback_gan", "auxiliary")],
)
def test_a_knob_the_method_does_not_have_is_an_error_naming_it(family, name, knob):
    with pytest.raises(TypeError, match=knob):
        make_method(name, CONFIGS[family], **{knob: 1})
