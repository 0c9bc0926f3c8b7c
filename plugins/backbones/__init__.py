"""Backbones: every timm model as ``timm/<name>`` (``timm_backbone``), with the patch tokens of ViTs
(``vit_tokens``) for the token-level methods. ``components`` registers them."""
