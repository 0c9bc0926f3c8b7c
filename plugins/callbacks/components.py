"""Offers the built-in callbacks."""

from clrun import Component, hookimpl
from clrun.plugins.callbacks.knn import KNNEvaluation
from clrun.plugins.callbacks.finetune import FineTune
from clrun.plugins.callbacks.linear_probe import LinearProbe
from clrun.plugins.callbacks.online_probe import OnlineProbe
from clrun.plugins.callbacks.tensorboard import TensorBoardLogger


@hookimpl
def clrun_components():
    return [Component("callback", "clrun/knn", KNNEvaluation, "weighted kNN top-1 of backbone and projector features"),
        Component("callback", "clrun/linear_probe", LinearProbe, "linear classifier on frozen, standardized backbone and projector features"),
        Component("callback", "clrun/finetune", FineTune, "fine-tunes copies of the encoder with a linear head, top-1 on a test set"),
        Component("callback", "clrun/online_probe", OnlineProbe, "online linear probes on detached backbone and projector features"),
        Component("callback", "clrun/tensorboard", TensorBoardLogger, "step, epoch and final metrics and the recipe to TensorBoard")]
