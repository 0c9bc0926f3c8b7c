"""Augmentations: every kornia.augmentation op as ``kornia/<Name>`` and ``clrun/random_resized_crop``,
which crops inside each image's place on a letterboxed canvas. ``components`` registers them."""
