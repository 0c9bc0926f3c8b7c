"""Every registered built-in augmentation against the augmentation contracts of ``clrun.testing``:
the ``clrun/*`` ones and every ``kornia/*`` op that cl-run passes through (all of them: each is cheap
on 16x16 images), built with its defaults or, where kornia requires arguments or its defaults change
nothing, with the settings below.

The cases come from the registry (``clrun.testing.cases``), so a new op (a kornia upgrade) is covered
without touching this file; one that needs arguments fails until they are added to SETTINGS. What
each contract checks is in ``core/testing/modules.py``.
"""

from __future__ import annotations

import importlib.util
from importlib.metadata import version

import pytest

import clrun
from clrun import testing

S = testing.IMAGE_SIZE
COLOR = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1}  # SimCLR's color jitter
NORMALIZE = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}

SETTINGS: dict[str, dict] = {
    # arguments kornia requires; sizes equal to the test images' keep the batch one size
    "kornia/CenterCrop": {"size": [S, S]},
    "kornia/Resize": {"size": [S, S]},
    "kornia/PadTo": {"size": [S, S]},
    "kornia/LongestMaxSize": {"max_size": S},
    "kornia/SmallestMaxSize": {"max_size": S},
    "kornia/RandomCrop": {"size": [S, S], "padding": 4},
    "kornia/RandomResizedCrop": {"size": [S, S]},
    "clrun/random_resized_crop": {"size": [S, S]},
    "kornia/Normalize": NORMALIZE,
    "kornia/Denormalize": NORMALIZE,
    "kornia/RandomAffine": {"degrees": 30.0},
    "kornia/RandomRotation": {"degrees": 30.0},
    "kornia/RandomRotation90": {"times": [0, 3]},
    "kornia/RandomShear": {"shear": 20.0},
    "kornia/RandomGaussianBlur": {"kernel_size": 3, "sigma": [0.1, 2.0]},
    "kornia/RandomMotionBlur": {"kernel_size": 3, "angle": 35.0, "direction": 0.5},
    "kornia/RandomRain": {"drop_height": [2, 8]},  # the default drops (up to 20 px) need larger images
    # defaults that leave every image unchanged: ranges a recipe would give, so the draws are tested
    "kornia/ColorJitter": COLOR,
    "kornia/ColorJiggle": COLOR,
    "kornia/RandomBrightness": {"brightness": [0.6, 1.4]},
    "kornia/RandomContrast": {"contrast": [0.6, 1.4]},
    "kornia/RandomSaturation": {"saturation": [0.6, 1.4]},
    "kornia/RandomHue": {"hue": [-0.1, 0.1]},
    "kornia/RandomGamma": {"gamma": [0.7, 1.3]},
    "kornia/RandomTranslate": {"translate_x": [-0.2, 0.2], "translate_y": [-0.2, 0.2]},
    "kornia/RandomSnow": {"snow_coefficient": [0.1, 0.6], "brightness": [1.0, 2.5]},
}

# Registered ops that cannot be built here, with why; test_unbuildable_ops_still_fail_to_build checks
# that each still fails, so an entry goes stale loudly, not silently.
UNBUILDABLE: dict[str, tuple[str, dict]] = {
    "kornia/RandomDissolving": ("needs kornia's optional Stable Diffusion extra (diffusers) and its model", {}),
    "kornia/RandomFisheye": (
        "takes its center_x, center_y and gamma ranges as tensors, which a recipe cannot give",
        {"center_x": [-0.3, 0.3], "center_y": [-0.3, 0.3], "gamma": [0.9, 1.1]},
    ),
}

CASES = [
    case
    for pattern in ("clrun/*", "kornia/*")
    for case in testing.cases(pattern, kind="augmentation")
    if case.name not in UNBUILDABLE
]


def test_every_builtin_augmentation_has_every_contract():
    names = {c.name for p in ("clrun/*", "kornia/*") for c in clrun.components("augmentation", p)} - set(UNBUILDABLE)
    assert len(names) >= 50 and {"kornia/RandomResizedCrop", "kornia/ColorJitter"} <= names
    assert sorted((c.name, c.contract) for c in CASES) == sorted(
        (name, contract) for name in names for contract in testing.contracts("augmentation")
    )


# Upstream bugs of older kornia releases (Python 3.10 gets kornia 0.8, the last release for it), each
# expected to fail there (strict: the entry goes once a release fixes it) and checked fully elsewhere.
KORNIA = tuple(int(part) for part in version("kornia").split(".")[:2])
KORNIA_BUGS: dict[tuple[str, str], tuple[tuple[int, int], str]] = {
    ("kornia/RandomLinearCornerIllumination", "keeps_the_batch"): (
        (0, 9), "kornia 0.8 fails on a batch in which no image is drawn for the op (a 0-element reshape)"),
}


def expected_failure(case) -> list:
    fixed_in, why = KORNIA_BUGS.get((case.name, case.contract), ((0, 0), ""))
    return [pytest.mark.xfail(raises=RuntimeError, strict=True, reason=why)] if KORNIA < fixed_in else []


@pytest.mark.parametrize("case", [pytest.param(c, marks=expected_failure(c), id=str(c)) for c in CASES])
def test_augmentation_contract(case):
    case.check(**SETTINGS.get(case.name, {}))


@pytest.mark.parametrize("name", sorted(UNBUILDABLE))
def test_unbuildable_ops_still_fail_to_build(name):
    why, settings = UNBUILDABLE[name]
    assert clrun.components("augmentation", name), f"{name} is no longer registered: drop it from UNBUILDABLE"
    with pytest.raises(clrun.ComponentError):
        clrun.create("augmentation", name, **settings)  # if this builds now, move it to SETTINGS: {why}


def test_an_op_whose_optional_package_is_missing_is_refused_without_asking(capsys):
    """kornia 0.8 would ask on stdin whether to pip-install diffusers: a hang in a batch job."""
    assert importlib.util.find_spec("diffusers") is None  # this environment leaves the extra out
    with pytest.raises(clrun.ComponentError) as error:
        clrun.create("augmentation", "kornia/RandomDissolving")
    assert str(error.value).endswith(
        "kornia/RandomDissolving needs the optional package 'diffusers', not installed here, and a Stable Diffusion "
        "model from the Hugging Face hub; install it (pip install diffusers) where the model can be downloaded, "
        "or remove the op")
    assert capsys.readouterr().out == ""
