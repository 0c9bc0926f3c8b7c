"""The ``loss`` components cl-run ships with (offered through the ``clrun_components`` hook)."""

from __future__ import annotations

from clrun import Component, hookimpl
from clrun.plugins.losses.barlow_twins import BarlowTwinsLoss
from clrun.plugins.losses.byol import BYOLLoss
from clrun.plugins.losses.moco import MoCoLoss
from clrun.plugins.losses.ntxent import NTXentLoss
from clrun.plugins.losses.simsiam import SimSiamLoss
from clrun.plugins.losses.swav import SwAVLoss
from clrun.plugins.losses.vicreg import VICRegLoss


@hookimpl
def clrun_components() -> list[Component]:
    return [
        Component("loss", "clrun/ntxent", NTXentLoss, "SimCLR's NT-Xent / InfoNCE with a temperature"),
        Component("loss", "clrun/moco", MoCoLoss, "MoCo v2: InfoNCE of queries against momentum keys and a queue of past keys"),
        Component("loss", "clrun/byol", BYOLLoss, "BYOL: normalized MSE of predictions to the momentum target's projections"),
        Component("loss", "clrun/simsiam", SimSiamLoss, "SimSiam: negative cosine of predictions to stop-gradient projections"),
        Component("loss", "clrun/swav", SwAVLoss, "SwAV: swapped prediction of Sinkhorn-Knopp codes over learned prototypes"),
        Component("loss", "clrun/barlow_twins", BarlowTwinsLoss, "Barlow Twins: cross-correlation of the views towards the identity"),
        Component("loss", "clrun/vicreg", VICRegLoss, "VICReg: invariance, variance and covariance terms"),
    ]
