"""Built-in heads: the MLP (a projector, or a predictor) and the identity projector (no head).

A projector maps the backbone's features ``(B, in_dim)`` to the vectors the loss compares; a
predictor maps the projector's outputs on the online branch only (BYOL, SimSiam). The training loop
injects ``in_dim`` (the width of the head's input); a recipe must not set it.

``clrun.plugins.heads.components`` offers them as ``clrun/mlp`` (projector and predictor) and ``clrun/identity``.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

from torch import Tensor, nn

from clrun import ComponentError, Range, checked, name_of

Width = Annotated[int, Range(min=1)]  # a layer's width or count


def _check_input(head: Any, x: Tensor, in_dim: int) -> None:
    if x.ndim != 2 or x.shape[1] != in_dim:
        raise ComponentError(
            f"{name_of(head)} expects features of shape (batch, {in_dim}), got {tuple(x.shape)}; "
            "pool or flatten the backbone's output to one vector per image"
        )


@checked
class MLPProjector(nn.Module):
    """SimCLR's projection head ``g(.)``: an MLP from backbone features to the loss space.

    Chen et al. (2020), "A Simple Framework for Contrastive Learning of Visual Representations",
    section 2.1: ``z = g(h) = W2 ReLU(W1 h)``; SimCLR v2 (Chen et al. 2020, "Big Self-Supervised
    Models are Strong Semi-Supervised Learners") uses deeper heads with batch norm.

    ``num_layers`` Linear layers map ``in_dim -> hidden_dim -> ... -> hidden_dim -> out_dim``. Each
    hidden layer is ``Linear -> BatchNorm1d (if batch_norm) -> ReLU``; the last one is a plain
    ``Linear``, or with ``last_batch_norm`` a bias-free ``Linear -> BatchNorm1d(affine=False)``
    (the output normalization of SimCLR v2 / Barlow Twins style heads). With ``num_layers=1`` the
    head is a single linear map and ``hidden_dim`` is unused.

    Args:
        in_dim:          width of the backbone features (injected by the training loop).
        hidden_dim:      width of the hidden layers (SimCLR: 2048, the ResNet-50 feature width).
        out_dim:         width of the output, the vectors the loss sees (SimCLR: 128).
        num_layers:      number of Linear layers, >= 1 (SimCLR: 2; SimCLR v2: 3).
        batch_norm:      BatchNorm1d after each hidden Linear.
        last_batch_norm: bias-free last Linear followed by BatchNorm1d(affine=False).

    Shapes: ``(B, in_dim) -> (B, out_dim)``. Batch norm needs ``B >= 2`` in training mode.
    """

    def __init__(
        self,
        in_dim: Width,
        hidden_dim: Annotated[int, Range(min=1, hint="SimCLR uses 2048")] = 2048,
        out_dim: Annotated[int, Range(min=1, hint="SimCLR uses 128")] = 128,
        num_layers: Annotated[int, Range(min=1, hint="SimCLR uses 2, SimCLR v2 3")] = 2,
        batch_norm: bool = True,
        last_batch_norm: bool = False,
    ):
        super().__init__()
        self.in_dim, self.hidden_dim, self.out_dim, self.num_layers = in_dim, hidden_dim, out_dim, num_layers
        self.batch_norm = batch_norm
        self.last_batch_norm = last_batch_norm

        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i in range(num_layers - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if batch_norm:
                layers.append(nn.BatchNorm1d(dims[i + 1]))
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.Linear(dims[-2], dims[-1], bias=not last_batch_norm))
        if last_batch_norm:
            layers.append(nn.BatchNorm1d(out_dim, affine=False))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(self, x, self.in_dim)
        return self.net(x)


@checked
class IdentityProjector(nn.Module):
    """No projection head: the loss sees the backbone features unchanged, ``(B, in_dim) -> (B, in_dim)``."""

    def __init__(self, in_dim: Width):
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = self.in_dim

    def forward(self, x: Tensor) -> Tensor:
        _check_input(self, x, self.in_dim)
        return x


@checked
def mlp_predictor(
    in_dim: Width,
    hidden_dim: Annotated[int, Range(min=1, hint="BYOL uses 4096")] = 2048,
    out_dim: Optional[Annotated[int, Range(min=1, hint="null: in_dim, the projection width")]] = None,
    num_layers: Annotated[int, Range(min=1, hint="BYOL and SimSiam use 2")] = 2,
    batch_norm: bool = True,
    last_batch_norm: bool = False,
) -> MLPProjector:
    """The MLP as a predictor head (BYOL, SimSiam): ``out_dim`` defaults to ``in_dim``, the projection width,
    because the loss compares predictions with projections."""
    return MLPProjector(in_dim, hidden_dim, in_dim if out_dim is None else out_dim, num_layers, batch_norm, last_batch_norm)
