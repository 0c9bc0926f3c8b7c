"""Mask generators for masked modelling (``generators``: random, block, multi-block), registered by
``components``."""
