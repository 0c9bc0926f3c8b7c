"""Augmentations: every kornia.augmentation op as ``kornia/<Name>`` and ``clrun/random_resized_crop``,
which crops inside each image's place on a letterboxed canvas. ``components`` registers them;
``kornia/RandomResizedCrop`` is built as ``kornia_crop``'s subclass of kornia's op, and both crops cut their
boxes with ``resized_crops`` (one batched kernel on a GPU)."""
