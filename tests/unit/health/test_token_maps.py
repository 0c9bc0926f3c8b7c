"""Token maps in the report of a ViT run: the patch features' principal components and the class token's
attention per head, on the health sample's first images (core/health/token_maps.py). That a CNN run has
none is checked on the quickstart's full run (tests/integration/test_end_to_end.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import clrun
from clrun.health.token_maps import principal_components

RECIPES = Path(__file__).resolve().parents[3] / "recipes"
TINY = ["data.dataset.subset=256", "data.batch_size=64", "train.epochs=1", "train.max_steps=1", "callbacks=[]",
        "health.samples=64", "train.progress=false"]


def test_principal_components_find_the_directions_that_vary_most():
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(32, 32, generator=g))[0][:, :3]  # 3 orthonormal directions
    scores = torch.randn(2 * 400, 3, generator=g) * torch.tensor([10.0, 5.0, 2.0])
    patches = (scores @ basis.T + 0.01 * torch.randn(800, 32, generator=g)).reshape(2, 400, 32)
    maps = principal_components(patches, (20, 20))
    assert maps.shape == (2, 20, 20, 3) and maps.min() == 0.0 and maps.max() == 1.0
    for k in range(3):  # each map is its component's scores, up to sign and the [0, 1] scaling
        c = np.corrcoef(maps[..., k].reshape(-1), scores[:, k].numpy())[0, 1]
        assert abs(c) > 0.99  # the sample's own PCA: the scores are uncorrelated only in expectation


def test_a_vit_run_draws_its_token_maps_into_the_report(tmp_path):
    run = clrun.train(clrun.load_recipe(RECIPES / "lejepa_fmnist.yaml", [*TINY, f"run.dir={tmp_path}"]))
    with np.load(run.folder.token_maps, allow_pickle=False) as maps:
        assert maps["images"].shape == (4, 1, 28, 28) and maps["images"].dtype == np.uint8
        assert maps["pca"].shape == (4, 4, 4, 3)  # 28 px in patches of 7: a 4 x 4 grid
        attention = maps["attention"]
    assert attention.shape == (4, 3, 4, 4)  # 3 heads
    assert (attention > 0).all() and (attention.sum(axis=(2, 3)) < 1).all()  # the class token's share goes to patches
    report = run.folder.report.read_text(encoding="utf-8")
    assert "### Token maps" in report and "(plots/token_maps.png)" in report
    assert (run.folder.plots / "token_maps.png").stat().st_size > 10_000

