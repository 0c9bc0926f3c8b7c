"""Registers the built-in data sets as components of kind "dataset".

Offered by import path: listing them (``cl-run components``, ``cl-run plugins``) imports neither the
data set modules nor torch.
"""

from __future__ import annotations

from clrun import Component, hookimpl

PACKAGE = "clrun.plugins.datasets"


@hookimpl
def clrun_components() -> list[Component]:
    """The built-in data sets; none of them downloads anything."""
    return [
        Component("dataset", "clrun/fashion_mnist", f"{PACKAGE}.fashion_mnist:FashionMNIST", "Fashion-MNIST 1x28x28, 10 classes (Debian package dataset-fashion-mnist)"),
        Component("dataset", "clrun/cifar10", f"{PACKAGE}.cifar:CIFAR10", "CIFAR-10 3x32x32, 10 classes, from torchvision's on-disk format"),
        Component("dataset", "clrun/cifar100", f"{PACKAGE}.cifar:CIFAR100", "CIFAR-100 3x32x32, 100 fine classes, from torchvision's on-disk format"),
        Component("dataset", "clrun/image_folder", f"{PACKAGE}.image_folder:ImageFolder", "your images from a folder (recursive), optionally one subfolder per class"),
        Component("dataset", "clrun/webdataset", f"{PACKAGE}.webdataset:WebDataset", "images from WebDataset tar shards (`cl-run shards`), streamed per process and worker"),
        Component("dataset", "clrun/hf_dataset", f"{PACKAGE}.hf_dataset:hf_dataset", "a Hugging Face `datasets` data set from disk (save_to_disk or Parquet), random access or streamed"),
        Component("dataset", "clrun/fmnist_scenes", f"{PACKAGE}.fmnist_scenes:FMNISTScenes", "segmentation: 2-4 Fashion-MNIST items per gray canvas, per-pixel labels (10 classes + background)"),
        Component("dataset", "clrun/segmentation_folder", f"{PACKAGE}.segmentation_folder:SegmentationFolder", "segmentation: images + PNG label maps in the ADE20K, Pascal VOC, Cityscapes or a plain layout"),
        Component("dataset", "clrun/synthetic", f"{PACKAGE}.synthetic:Synthetic", "small generated striped images with learnable classes, for tests"),
    ]
