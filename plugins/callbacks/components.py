"""Offers the built-in callbacks."""

from clrun import Component, hookimpl


@hookimpl
def clrun_components():
    return [Component("callback", "clrun/knn", "clrun.plugins.callbacks.knn:KNNEvaluation", "weighted kNN top-1 of backbone and projector features"),
        Component("callback", "clrun/linear_probe", "clrun.plugins.callbacks.linear_probe:LinearProbe", "linear classifier on frozen, standardized backbone and projector features"),
        Component("callback", "clrun/linear_segmentation", "clrun.plugins.callbacks.linear_segmentation:LinearSegmentation", "DINOv2's linear segmentation (BatchNorm + linear head) on frozen patch tokens, mIoU"),
        Component("callback", "clrun/patch_knn", "clrun.plugins.callbacks.patch_knn:PatchKNN", "HummingBird's in-context patch retrieval (kNN over labeled train patches), mIoU"),
        Component("callback", "clrun/finetune", "clrun.plugins.callbacks.finetune:FineTune", "fine-tunes copies of the encoder with a linear head, top-1 on a test set"),
        Component("callback", "clrun/online_probe", "clrun.plugins.callbacks.online_probe:OnlineProbe", "online linear probes on detached backbone and projector features"),
        Component("callback", "clrun/tensorboard", "clrun.plugins.callbacks.tensorboard:TensorBoardLogger", "step, epoch and final metrics and the recipe to TensorBoard"),
        Component("callback", "clrun/wandb", "clrun.plugins.callbacks.wandb:WandbLogger", "the recipe, every metrics record, the report and plots (and the encoder) to Weights & Biases; resumes with the run"),
        Component("callback", "clrun/mlflow", "clrun.plugins.callbacks.mlflow:MlflowLogger", "the recipe, every metrics record, the report and plots (and the encoder) to MLflow; resumes with the run")]
