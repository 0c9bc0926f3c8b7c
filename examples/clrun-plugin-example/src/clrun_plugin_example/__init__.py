"""An example third-party cl-run plugin.

It offers, in its own ``example/`` namespace:

* ``example/align_uniform``            (loss): alignment + uniformity of Wang & Isola (2020);
* ``example/RandomGaussianNoiseClamp`` (augmentation): per-image Gaussian noise, clamped to [0, 1].

cl-run finds it through the ``clrun`` entry point in ``pyproject.toml``, which names
``clrun_plugin_example.plugin``; nothing here needs to be imported by hand.
"""

from clrun_plugin_example.augmentations import RandomGaussianNoiseClamp
from clrun_plugin_example.losses import AlignUniformLoss

__version__ = "0.1.0"

__all__ = ["AlignUniformLoss", "RandomGaussianNoiseClamp", "__version__"]
