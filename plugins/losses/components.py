"""The ``loss`` components cl-run ships with (offered through the ``clrun_components`` hook)."""

from __future__ import annotations

from clrun import Component, hookimpl


@hookimpl
def clrun_components() -> list[Component]:
    return [
        Component("loss", "clrun/ntxent", "clrun.plugins.losses.ntxent:NTXentLoss", "SimCLR's NT-Xent / InfoNCE with a temperature"),
        Component("loss", "clrun/moco", "clrun.plugins.losses.moco:MoCoLoss", "MoCo v2: InfoNCE of queries against momentum keys and a queue of past keys"),
        Component("loss", "clrun/mocov3", "clrun.plugins.losses.mocov3:MoCoV3Loss", "MoCo v3: symmetric InfoNCE of predictions against the batch's momentum keys"),
        Component("loss", "clrun/nnclr", "clrun.plugins.losses.nnclr:NNCLRLoss", "NNCLR: InfoNCE with nearest neighbours from a support queue as positives"),
        Component("loss", "clrun/dcl", "clrun.plugins.losses.dcl:DCLLoss", "DCL: NT-Xent without the positive in the denominator (DCLW with weight_sigma)"),
        Component("loss", "clrun/dclw", "clrun.plugins.losses.dcl:DCLWLoss", "DCLW: DCL with von Mises-Fisher weighted positives (sigma 0.5)"),
        Component("loss", "clrun/byol", "clrun.plugins.losses.byol:BYOLLoss", "BYOL: normalized MSE of predictions to the momentum target's projections"),
        Component("loss", "clrun/simsiam", "clrun.plugins.losses.simsiam:SimSiamLoss", "SimSiam: negative cosine of predictions to stop-gradient projections"),
        Component("loss", "clrun/swav", "clrun.plugins.losses.swav:SwAVLoss", "SwAV: swapped prediction of Sinkhorn-Knopp codes over learned prototypes"),
        Component("loss", "clrun/barlow_twins", "clrun.plugins.losses.barlow_twins:BarlowTwinsLoss", "Barlow Twins: cross-correlation of the views towards the identity"),
        Component("loss", "clrun/dino", "clrun.plugins.losses.dino:DINOLoss", "DINO: cross-entropy of the student to the centered, sharpened momentum teacher"),
        Component("loss", "clrun/ibot", "clrun.plugins.losses.ibot:IBOTLoss", "iBOT: DINO on the class token plus distillation of masked patch tokens"),
        Component("loss", "clrun/gram_anchoring", "clrun.plugins.losses.gram:GramAnchoring", "DINOv3 Gram anchoring: another loss plus the MSE of the patch Gram matrix to an earlier teacher's"),
        Component("loss", "clrun/lejepa", "clrun.plugins.losses.lejepa:LeJEPALoss", "LeJEPA: invariance to the global views' mean plus SIGReg, a sliced Gaussianity test"),
        Component("loss", "clrun/mae", "clrun.plugins.losses.mae:MAELoss", "MAE: squared error of the predicted pixels of the hidden patches, normalized per patch"),
        Component("loss", "clrun/ijepa", "clrun.plugins.losses.ijepa:IJEPALoss", "I-JEPA: smooth L1 of predicted to the target's layer-normed tokens of the target blocks"),
        Component("loss", "clrun/vicreg", "clrun.plugins.losses.vicreg:VICRegLoss", "VICReg: invariance, variance and covariance terms"),
    ]
