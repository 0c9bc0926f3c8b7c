"""Optimizers (torch.optim's, timm's LARS and LAMB) and learning-rate schedules (``lr_schedules``),
registered by ``components``."""
