"""Registers the built-in data sets as components of kind "dataset"."""

from __future__ import annotations

from clrun import Component, hookimpl
from clrun.plugins.datasets.cifar import CIFAR10, CIFAR100
from clrun.plugins.datasets.fashion_mnist import FashionMNIST
from clrun.plugins.datasets.image_folder import ImageFolder
from clrun.plugins.datasets.synthetic import Synthetic


@hookimpl
def clrun_components() -> list[Component]:
    """The built-in data sets; none of them downloads anything."""
    return [
        Component("dataset", "clrun/fashion_mnist", FashionMNIST, "Fashion-MNIST 1x28x28, 10 classes (Debian package dataset-fashion-mnist)"),
        Component("dataset", "clrun/cifar10", CIFAR10, "CIFAR-10 3x32x32, 10 classes, from torchvision's on-disk format"),
        Component("dataset", "clrun/cifar100", CIFAR100, "CIFAR-100 3x32x32, 100 fine classes, from torchvision's on-disk format"),
        Component("dataset", "clrun/image_folder", ImageFolder, "your images from a folder (recursive), optionally one subfolder per class"),
        Component("dataset", "clrun/synthetic", Synthetic, "small generated striped images with learnable classes, for tests"),
    ]
