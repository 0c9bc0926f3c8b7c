"""The module the ``clrun`` entry point names: cl-run imports it and calls ``clrun_components()``.

Keep this module cheap to import and free of side effects: it is imported by every ``cl-run``
command (even ``cl-run components``), and an exception raised here only marks this plugin as broken
(``cl-run plugins`` shows the error) while cl-run goes on without it.
"""

from __future__ import annotations

import clrun

NAMESPACE = "example"


@clrun.hookimpl
def clrun_components() -> list[clrun.Component]:
    # Offering is not selecting: a recipe uses these only when it names them.
    return [
        clrun.Component(
            "loss",
            f"{NAMESPACE}/align_uniform",
            "clrun_plugin_example.losses:AlignUniformLoss",
            "alignment + uniformity on the hypersphere (Wang & Isola 2020)",
        ),
        clrun.Component(
            "augmentation",
            f"{NAMESPACE}/RandomGaussianNoiseClamp",
            "clrun_plugin_example.augmentations:RandomGaussianNoiseClamp",
            "additive Gaussian noise on a random subset of images, clamped to [0, 1]",
        ),
    ]
