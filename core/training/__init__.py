"""Training: the loop (``loop``), one step (``step``), the setup every command shares (``setup``), the run's
state (``run``, ``parts``), and by subsystem the model (``model``), its optimization (``optim``), its placement
on devices and processes (``parallel``), checkpoints (``checkpointing``) and the run's callbacks (``callbacks``)."""
