"""What updates the model: the optimizer over its parameter groups (``param_groups``), the scheduler, the
recipe's scheduled settings (``schedules``) and the GradScaler, built together by ``optimization``."""
