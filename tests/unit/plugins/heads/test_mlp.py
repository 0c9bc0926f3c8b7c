"""clrun/mlp and clrun/identity projectors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clrun import Component
from clrun.plugins.heads import components as heads
from clrun.plugins.heads.mlp import IdentityProjector, MLPProjector


def layers_of(module: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, kind)]


@pytest.mark.parametrize("num_layers", [1, 2, 3, 4])
def test_shapes_and_layer_counts(num_layers):
    head = MLPProjector(in_dim=24, hidden_dim=32, out_dim=8, num_layers=num_layers)
    assert head(torch.randn(5, 24)).shape == (5, 8)
    linears = layers_of(head, nn.Linear)
    assert len(linears) == num_layers
    assert len(layers_of(head, nn.BatchNorm1d)) == num_layers - 1
    assert len(layers_of(head, nn.ReLU)) == num_layers - 1
    widths = [(l.in_features, l.out_features) for l in linears]
    expected = [24] + [32] * (num_layers - 1) + [8]
    assert widths == list(zip(expected[:-1], expected[1:]))
    assert linears[-1].bias is not None
    assert isinstance(list(head.net)[-1], nn.Linear)  # the output is not passed through ReLU


def test_defaults_are_simclr_head():
    head = MLPProjector(in_dim=2048)
    linears = layers_of(head, nn.Linear)
    assert [(l.in_features, l.out_features) for l in linears] == [(2048, 2048), (2048, 128)]
    assert [type(m) for m in head.net] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert head.out_dim == 128


def test_without_batch_norm():
    head = MLPProjector(in_dim=16, hidden_dim=16, out_dim=4, num_layers=3, batch_norm=False)
    assert layers_of(head, nn.BatchNorm1d) == []
    assert [type(m) for m in head.net] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    # without batch norm a single example works in training mode
    assert head(torch.randn(1, 16)).shape == (1, 4)


def test_last_batch_norm():
    head = MLPProjector(in_dim=16, hidden_dim=32, out_dim=8, num_layers=2, last_batch_norm=True)
    last_linear, last_bn = list(head.net)[-2:]
    assert isinstance(last_linear, nn.Linear) and last_linear.bias is None
    assert isinstance(last_bn, nn.BatchNorm1d) and not last_bn.affine
    assert last_bn.weight is None and last_bn.bias is None
    head.train()
    y = head(torch.randn(64, 16) * 3 + 2)
    # training-mode batch norm without affine: every output column has mean 0 and variance 1
    torch.testing.assert_close(y.mean(0), torch.zeros(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(0, unbiased=False), torch.ones(8), atol=1e-3, rtol=0)


def test_last_batch_norm_single_layer():
    head = MLPProjector(in_dim=10, out_dim=6, num_layers=1, last_batch_norm=True)
    assert [type(m) for m in head.net] == [nn.Linear, nn.BatchNorm1d]
    assert head(torch.randn(4, 10)).shape == (4, 6)


def test_backward_reaches_all_parameters():
    head = MLPProjector(in_dim=12, hidden_dim=20, out_dim=6, num_layers=3, last_batch_norm=True)
    head(torch.randn(8, 12)).pow(2).sum().backward()
    for name, p in head.named_parameters():
        assert p.grad is not None, name


def test_in_dim_is_required():
    with pytest.raises(TypeError):
        MLPProjector()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        IdentityProjector()  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"in_dim": 0}, "in_dim"),
        ({"in_dim": 16, "num_layers": 0}, "num_layers"),
        ({"in_dim": 16, "num_layers": 1.5}, "num_layers"),
        ({"in_dim": 16, "hidden_dim": -1}, "hidden_dim"),
        ({"in_dim": 16, "out_dim": 0}, "out_dim"),
        ({"in_dim": 16, "out_dim": True}, "out_dim"),
        ({"in_dim": 16, "batch_norm": "yes"}, "batch_norm"),
        ({"in_dim": 16, "last_batch_norm": 1}, "last_batch_norm"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MLPProjector(**kwargs)


def test_wrong_input_width_is_a_clear_error():
    head = MLPProjector(in_dim=16, hidden_dim=8, out_dim=4)
    with pytest.raises(ValueError, match=r"\(batch, 16\)"):
        head(torch.randn(4, 15))
    with pytest.raises(ValueError, match=r"\(batch, 16\)"):
        head(torch.randn(4, 16, 2))


def test_identity_projector():
    ident = IdentityProjector(in_dim=7)
    x = torch.randn(3, 7)
    assert ident(x) is x
    assert ident.out_dim == 7
    assert list(ident.parameters()) == []
    with pytest.raises(ValueError):
        IdentityProjector(in_dim=0)


def test_components_offered():
    offered = heads.clrun_components()
    assert isinstance(offered, list) and all(isinstance(c, Component) for c in offered)
    by_kind_name = {(c.kind, c.name): c for c in offered}
    assert set(by_kind_name) == {("projector", "clrun/mlp"), ("projector", "clrun/identity"), ("projector", "clrun/dino_head"),
                                 ("predictor", "clrun/mlp"), ("token_head", "clrun/mae_decoder"),
                                 ("token_head", "clrun/jepa_predictor")}
    assert by_kind_name["projector", "clrun/mlp"].factory is MLPProjector
    predictor = by_kind_name["predictor", "clrun/mlp"].factory(in_dim=24, hidden_dim=16)
    assert isinstance(predictor, MLPProjector)  # the same MLP heads the online branch
    assert predictor(torch.randn(3, 24)).shape == (3, 24)  # out_dim defaults to in_dim: predictions match projections
    assert by_kind_name["predictor", "clrun/mlp"].factory(in_dim=24, out_dim=8).out_dim == 8
    assert by_kind_name["projector", "clrun/identity"].factory is IdentityProjector
    assert by_kind_name["projector", "clrun/identity"].summary == "no projector: the loss sees the backbone features"
