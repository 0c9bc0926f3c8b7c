"""cl-run's built-in plugins. They use only the public ``clrun`` API, exactly as a third-party plugin would.

The plugin manager registers the modules listed here even when entry-point autoloading is off.
"""

BUILTIN_MODULES = (
    "clrun.plugins.datasets.components",
    "clrun.plugins.augmentations.components",
    "clrun.plugins.masks.components",
    "clrun.plugins.backbones.components",
    "clrun.plugins.heads.components",
    "clrun.plugins.losses.components",
    "clrun.plugins.optim.components",
    "clrun.plugins.callbacks.components",
    "clrun.plugins.weights.components",
)
