"""The training loop and what it is made of: views, the online network, run folder, checkpoints."""
