"""An example third-party cl-run plugin.

It offers, in its own ``example/`` namespace:

* ``example/align_uniform``            (loss): alignment + uniformity of Wang & Isola (2020);
* ``example/RandomGaussianNoiseClamp`` (augmentation): per-image Gaussian noise, clamped to [0, 1].

cl-run finds it through the ``clrun`` entry point in ``pyproject.toml``, which names
``clrun_plugin_example.plugin``; nothing here needs to be imported by hand.
"""

import importlib

__version__ = "0.1.0"

__all__ = ["AlignUniformLoss", "RandomGaussianNoiseClamp", "__version__"]

# Imported on first access (PEP 562): cl-run imports this package to reach the entry-point module,
# for every command, and the components import torch.
_MODULES = {"AlignUniformLoss": "clrun_plugin_example.losses", "RandomGaussianNoiseClamp": "clrun_plugin_example.augmentations"}


def __getattr__(name):
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULES[name]), name)
