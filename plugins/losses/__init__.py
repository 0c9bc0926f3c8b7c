"""Built-in contrastive and self-supervised losses.

Each loss is an ``nn.Module`` the training loop calls as ``loss_fn(out)`` with the step's
``clrun.StepOutputs`` (per-view backbone features, projector outputs and global/local flags). It
returns a scalar tensor or a dict ``{"loss": scalar, **detached_scalar_metrics}``. The components
are offered to the registry by ``clrun.plugins.losses.components``.
"""
