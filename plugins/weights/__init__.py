"""Weights layouts: how the official checkpoints of self-supervised methods hold their networks, for a recipe's
``init:`` section (see ``clrun.weights.layout``)."""
