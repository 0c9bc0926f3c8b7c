"""The crop behind ``kornia/RandomResizedCrop`` and ``clrun/random_resized_crop``: the sliced path is
kornia's slice mode pixel for pixel, the batched one (roi_align, taken off the CPU) matches it within float
rounding, both cut exactly the drawn boxes, and a view's copies are cut from one batch."""

from __future__ import annotations

import inspect

import kornia.augmentation as K
import pytest
import torch

import clrun
from clrun.plugins.augmentations import kornia_crop, resized_crops
from clrun.plugins.augmentations.random_resized_crop import RandomResizedCrop as PlaceCrop
from clrun.plugins.augmentations.resized_crops import batched_on_cpu, uploaded

# The batched path's largest difference from the sliced one on [0, 1] images: float rounding of the sample
# points (measured 5.5e-5 for 224 px crops), far below one uint8 level (1 / 255 = 3.9e-3).
TOLERANCE = 1e-4


def ramps(b: int, height: int, width: int) -> torch.Tensor:
    """(b, 2, height, width): channel 0 is each pixel's column, channel 1 its row. Bilinear resizing keeps a
    ramp a ramp, so a crop's corner pixels say which box it was cut from."""
    columns = torch.arange(width, dtype=torch.float32).expand(b, 1, height, width)
    rows = torch.arange(height, dtype=torch.float32)[:, None].expand(b, 1, height, width)
    return torch.cat([columns, rows], dim=1)


def boxes_seen(crops: torch.Tensor) -> torch.Tensor:
    """The (x0, y0, x1, y1) each crop of ``ramps`` was cut from (align_corners: the corners are sampled)."""
    return torch.stack([crops[:, 0, 0, 0], crops[:, 1, 0, 0], crops[:, 0, 0, -1], crops[:, 1, -1, 0]], dim=1).round()


def corners(src: torch.Tensor) -> torch.Tensor:
    """kornia's (B, 4, 2) box corners as (x0, y0, x1, y1)."""
    return torch.stack([src[:, 0, 0], src[:, 0, 1], src[:, 2, 0], src[:, 2, 1]], dim=1)


@pytest.mark.parametrize("resample", ["nearest", "bilinear", "bicubic"])
@pytest.mark.parametrize("align_corners", [True, False])
def test_the_sliced_crop_is_kornias_slice_mode(resample, align_corners):
    images = torch.rand(16, 3, 40, 30)
    theirs = K.RandomResizedCrop((12, 20), resample=resample, align_corners=align_corners)
    expected = theirs(images)
    ours = resized_crops.resized_crops(images, theirs._params["src"], (12, 20), resample, align_corners)
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("side, size, scale", [
    (28, (28, 28), (0.08, 1.0)),    # the Fashion-MNIST recipes' global crops
    (224, (224, 224), (0.3, 1.0)),  # ImageNet global crops
    (224, (96, 96), (0.05, 0.4)),   # DINO's local crops
    (28, (14, 20), (0.01, 0.02)),   # enlarged from a few pixels, a non-square output
    (32, (1, 1), (0.08, 1.0)),      # a one-pixel output samples the crop's first pixel
])
def test_the_batched_crop_matches_the_sliced_one_within_float_rounding(side, size, scale):
    torch.manual_seed(0)
    images = torch.rand(64, 3, side, side)
    src = K.RandomResizedCrop(size, scale=scale).forward_parameters(images.shape)["src"]
    sliced = resized_crops.resized_crops(images, src, size)
    with batched_on_cpu():
        batched = resized_crops.resized_crops(images, src, size)
    torch.testing.assert_close(batched, sliced, atol=TOLERANCE, rtol=0)


def test_one_pixel_wide_crops_repeat_their_pixel_on_both_paths():
    images = torch.rand(2, 1, 10, 10)
    src = torch.tensor([[[3., 2.], [3., 2.], [3., 7.], [3., 7.]], [[1., 4.], [8., 4.], [8., 4.], [1., 4.]]])
    sliced = resized_crops.resized_crops(images, src, (6, 5))
    with batched_on_cpu():
        batched = resized_crops.resized_crops(images, src, (6, 5))
    torch.testing.assert_close(batched, sliced, atol=TOLERANCE, rtol=0)
    assert torch.equal(sliced[0], sliced[0, :, :, :1].expand(1, 6, 5))


def test_each_path_cuts_exactly_the_boxes_kornias_generator_drew(crop_path):
    crop = clrun.create("augmentation", "kornia/RandomResizedCrop", size=[12, 12], scale=[0.08, 1.0])
    torch.manual_seed(1)
    out = crop(ramps(256, 40, 30))
    assert out.shape == (256, 2, 12, 12)
    assert torch.equal(boxes_seen(out), corners(crop._params["src"]))


@pytest.mark.parametrize("name", ["kornia/RandomResizedCrop", "clrun/random_resized_crop"])
def test_copies_are_what_the_op_gives_on_the_repeated_batch(crop_path, name):
    crop = clrun.create("augmentation", name, size=[16, 16], scale=[0.2, 1.0])
    images = torch.rand(8, 3, 28, 28)
    torch.manual_seed(2)
    copies = crop.crop_copies(images, 3)
    torch.manual_seed(2)
    assert torch.equal(copies, crop(images.repeat(3, 1, 1, 1)))
    # Copy k of image i is row k B + i, each with its own box.
    assert not torch.equal(copies[:8], copies[8:16])


def test_copies_of_places_are_cut_inside_each_place(crop_path):
    crop = PlaceCrop(8, scale=(0.08, 1.0))
    places = torch.tensor([[5, 0, 20, 60], [0, 7, 60, 12]])
    x0, y0, x1, y1 = boxes_seen(crop.crop_copies(ramps(2, 60, 60), 500, places)).T
    top, left, height, width = places.repeat(500, 1).T
    assert (x0 >= left).all() and (y0 >= top).all() and (x1 < left + width).all() and (y1 < top + height).all()


def test_the_cpu_slices_and_other_devices_take_the_batched_kernel(monkeypatch):
    images, src = torch.rand(4, 3, 20, 20), K.RandomResizedCrop((8, 8)).forward_parameters((4, 3, 20, 20))["src"]

    def refused(*args, **kwargs):
        raise AssertionError("the other path was taken")

    monkeypatch.setattr(resized_crops, "roi_aligned", refused)
    assert resized_crops.resized_crops(images, src, (8, 8)).shape == (4, 3, 8, 8)
    monkeypatch.undo()
    monkeypatch.setattr(resized_crops, "sliced", refused)
    # An accelerator's images (meta: no values, and reading one raises) with the boxes on the host.
    out = resized_crops.resized_crops(images.to("meta"), src, (8, 8))
    assert out.shape == (4, 3, 8, 8) and out.device.type == "meta"
    with batched_on_cpu():
        assert resized_crops.resized_crops(images, src, (8, 8)).shape == (4, 3, 8, 8)


def test_settings_roi_align_cannot_reproduce_keep_the_sliced_path(monkeypatch):
    monkeypatch.setattr(resized_crops, "roi_aligned", lambda *a: pytest.fail("nearest cannot be roi-aligned"))
    images = torch.rand(4, 3, 20, 20)
    src = K.RandomResizedCrop((8, 8)).forward_parameters(images.shape)["src"]
    with batched_on_cpu():
        for resample, align_corners in (("nearest", True), ("bicubic", True), ("bilinear", False)):
            assert resized_crops.resized_crops(images, src, (8, 8), resample, align_corners).shape == (4, 3, 8, 8)


def test_kornias_resample_mode_is_left_to_kornia(crop_path):
    images = torch.rand(4, 3, 20, 20)
    ours = kornia_crop.RandomResizedCrop((8, 8), cropping_mode="resample")
    theirs = K.RandomResizedCrop((8, 8), cropping_mode="resample")
    torch.manual_seed(3)
    expected = theirs(images)
    torch.manual_seed(3)
    assert torch.equal(ours(images), expected)


def test_kornia_randomresizedcrop_is_built_as_cl_runs_subclass_with_kornias_arguments():
    crop = clrun.create("augmentation", "kornia/RandomResizedCrop", size=[8, 8])
    assert type(crop) is kornia_crop.RandomResizedCrop and isinstance(crop, K.RandomResizedCrop)
    assert inspect.signature(kornia_crop.RandomResizedCrop) == inspect.signature(K.RandomResizedCrop)
    [component] = clrun.components("augmentation", "kornia/RandomResizedCrop")
    assert component.summary == inspect.getdoc(K.RandomResizedCrop).splitlines()[0]


def test_boxes_stay_put_on_their_own_device():
    host = torch.rand(3, 5)
    assert uploaded(host, torch.device("cpu")) is host


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_boxes_go_to_cuda_from_pinned_memory_without_blocking():
    host = torch.rand(3, 5)
    on_gpu = uploaded(host, torch.device("cuda"))
    assert on_gpu.device.type == "cuda" and torch.equal(on_gpu.cpu(), host)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_batched_crop_matches_the_sliced_one():
    torch.manual_seed(0)
    images = torch.rand(64, 3, 224, 224, device="cuda")
    src = K.RandomResizedCrop((96, 96), scale=(0.05, 0.4)).forward_parameters(images.shape)["src"]
    batched = resized_crops.resized_crops(images, src, (96, 96))  # CUDA images: the batched kernel
    sliced = resized_crops.sliced(images, src, torch.arange(64), (96, 96), "bilinear", True)
    torch.testing.assert_close(batched, sliced, atol=TOLERANCE, rtol=0)
