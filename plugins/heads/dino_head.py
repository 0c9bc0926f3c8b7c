"""DINO's projection head: an MLP to a bottleneck, l2-normalized, then a weight-normalized linear layer
to ``out_dim`` prototypes. A projector like any other: any loss may use it.

``clrun.plugins.heads.components`` offers it as ``clrun/dino_head``.
"""

from __future__ import annotations

from typing import Annotated

from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import weight_norm

from clrun import Range, checked


@checked
class DINOHead(nn.Module):
    """Caron et al. (2021), "Emerging Properties in Self-Supervised Vision Transformers" (DINO), section
    3.1 and the official ``DINOHead`` (facebookresearch/dino, vision_transformer.py), whose defaults
    these are:

        h = MLP(x)                 num_layers Linear layers in_dim -> hidden_dim ... -> bottleneck_dim,
                                   GELU between them (and BatchNorm1d with batch_norm); weights drawn
                                   from a normal of std 0.02 truncated at +-2, biases 0
        z = last_layer(h / ||h||)  a bias-free Linear(bottleneck_dim, out_dim) under weight
                                   normalization, w_k = g_k v_k / ||v_k||, with every g_k = 1

    With ``norm_last_layer`` (DINO's default) the gains ``g`` stay 1 (not trained), so every prototype
    ``w_k`` has unit length: the output is a cosine similarity to each prototype. DINO also freezes the
    last layer in the first epoch; in a recipe that is a parameter-group rule,
    ``params: {groups: [{match: [projector.last_layer.*], frozen_epochs: 1}]}``.

    Args:
        in_dim:          the backbone features' width (injected by the training loop).
        out_dim:         the number of prototypes K (DINO: 65536 on ImageNet).
        hidden_dim:      width of the hidden layers (DINO: 2048).
        bottleneck_dim:  width before the last layer (DINO: 256).
        num_layers:      Linear layers of the MLP, >= 1 (DINO: 3).
        batch_norm:      BatchNorm1d after each hidden Linear (DINO: off for ViTs).
        norm_last_layer: keep the prototypes at unit length (DINO: true; false can help ViT-B stability).

    Shapes: ``(B, in_dim) -> (B, out_dim)``.
    """

    def __init__(self, in_dim: Annotated[int, Range(min=1, hint="the features' width, set by the training loop")],
                 out_dim: Annotated[int, Range(min=2, hint="DINO uses 65536 prototypes on ImageNet")] = 65536,
                 hidden_dim: Annotated[int, Range(min=1, hint="DINO uses 2048")] = 2048,
                 bottleneck_dim: Annotated[int, Range(min=1, hint="DINO uses 256")] = 256,
                 num_layers: Annotated[int, Range(min=1, hint="DINO uses 3")] = 3,
                 batch_norm: bool = False, norm_last_layer: bool = True) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        widths = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i in range(num_layers):
            layers.append(nn.Linear(widths[i], widths[i + 1]))
            if i < num_layers - 1:
                layers += [nn.BatchNorm1d(widths[i + 1])] if batch_norm else []
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)  # DINO's trunc_normal_: cut at +-2 (absolute)
                nn.init.zeros_(module.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, self.out_dim, bias=False))
        gain = self.last_layer.parametrizations.weight.original0
        gain.data.fill_(1.0)
        gain.requires_grad_(not norm_last_layer)

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2))
