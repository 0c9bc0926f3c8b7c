"""Heads: the MLP projector and predictor (``mlp``), DINO's prototype head (``dino_head``) and the token
heads of masked modelling (``token_heads``: MAE's decoder, I-JEPA's predictor). ``components`` registers them."""
