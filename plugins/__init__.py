"""cl-run's built-in plugins. They use only the public ``clrun`` API, exactly as a third-party plugin would.

The plugin manager registers the modules listed here even when entry-point autoloading is off.
"""

BUILTIN_MODULES = (
    "clrun.plugins.datasets.components",
    "clrun.plugins.augmentations",
    "clrun.plugins.mask_components",
    "clrun.plugins.backbones",
    "clrun.plugins.projectors",
    "clrun.plugins.token_head_components",
    "clrun.plugins.losses.components",
    "clrun.plugins.optimizers",
    "clrun.plugins.schedulers",
    "clrun.plugins.callbacks.components",
)
