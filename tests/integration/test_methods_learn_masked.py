"""The masked-modelling recipes (MAE, I-JEPA), trained briefly from their Fashion-MNIST recipes on real
data, measured as the other learning tests are (4 epochs, a 5k kNN bank, the full 10k test split) against
their own encoder at initialization: a 4-block ViT with 4-pixel patches whose averaged patch tokens score
about 52% at initialization.

MAE's features are known to be weak under kNN and linear probes (the paper fine-tunes), and at 160 steps
its gain is small: +1.1 with the paper's settings (75% hidden, standardized pixel targets), +1.9 with
plain pixels, +2.85 with plain pixels and half the patches hidden, the recipe's settings (+6.8 with
seed 1). The margin is about half the smaller measured gain.

I-JEPA starts slowly on this ViT: its kNN score fell 4-13 points below the untrained encoder's after 160
steps in every setting tried and rose 4.5 points above it only after 624 (its recipe's 8 epochs of 10k
images), several CPU minutes more than this suite can spend; the table in docs/guides/methods.md reports that run. Here
its recipe trains briefly and its prediction loss must fall clearly: what a broken predictor, wrong
target positions or a target that moves with the context would not do.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("short_runs", Path(__file__).parents[1] / "helpers" / "short_runs.py")
short_runs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(short_runs)

# recipe stem -> (training images, minimum kNN gain over the untrained encoder); measured gains noted.
CASES = {
    "mae_fmnist": (5120, 0.012),  # 160 steps: 52.20% -> 55.05% (+2.85); +6.8 with seed 1
}

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_report")]


@pytest.mark.parametrize("stem", sorted(CASES))
def test_a_short_run_beats_the_untrained_encoder(stem, tmp_path, untrained_knn):
    images, margin = CASES[stem]
    short_runs.assert_beats_untrained(stem, images, margin, tmp_path, untrained_knn)


def test_a_short_ijepa_run_predicts_the_target_tokens_better_and_better(tmp_path):
    recipe = short_runs.clrun.load_recipe(short_runs.RECIPES / "ijepa_fmnist.yaml", [
        "data.dataset.subset=1280", "train.epochs=4", "health.enabled=false", "callbacks=[]", f"run.dir={tmp_path}",
        "train.progress=false"])
    run = short_runs.clrun.train(recipe)
    losses = short_runs.epoch_losses(run)
    print(f"ijepa_fmnist: smooth-L1 per epoch {losses}")
    assert len(losses) == 4 and losses[-1] < 0.85 * losses[0]
