"""``clrun/image_folder`` with ``keep_aspect``: whole images letterboxed on the square with their place,
and ``clrun/random_resized_crop`` cropping inside each place on the device, as torchvision's
RandomResizedCrop crops the original file. The crop's tests run on both of its paths: the CPU's sliced one
and the GPU's batched kernel (forced here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import yaml
from PIL import Image

import clrun
from clrun import UserError, testing
from clrun.plugins.datasets.image_folder import ImageFolder
from clrun.plugins.augmentations.random_resized_crop import RandomResizedCrop, crop_boxes
from clrun.training.step import Step

TINY = Path(__file__).parents[3] / "recipes" / "tiny.yaml"
SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


def write(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def ramps(b: int, side: int) -> torch.Tensor:
    """(b, 2, side, side): each pixel's column and row. Bilinear resizing keeps a ramp a ramp, so a crop's
    corner pixels say which box it was cut from."""
    columns = torch.arange(side, dtype=torch.float32).expand(b, 1, side, side)
    return torch.cat([columns, columns.transpose(-1, -2)], dim=1)


@pytest.fixture
def white_wide_and_tall(tmp_path) -> Path:
    """White images, 3:1 wide and 1:2 tall: any black pixel in a view is the canvas's padding."""
    root = tmp_path / "images"
    for i in range(8):
        shape = (20, 60) if i % 2 else (48, 24)
        write(root / f"{i}.png", np.full(shape, 255, dtype=np.uint8))
    return root


def test_each_image_is_served_whole_resized_and_centered_with_its_place(tmp_path):
    rng = np.random.default_rng(0)
    wide = write(tmp_path / "a" / "wide.png", rng.integers(0, 256, (20, 60, 3), dtype=np.uint8))
    tall = write(tmp_path / "a" / "tall.png", rng.integers(0, 256, (45, 15, 3), dtype=np.uint8))
    dataset = ImageFolder(str(tmp_path / "a"), size=30, keep_aspect=True)
    for path, place in ((tall, [0, 10, 30, 10]), (wide, [10, 0, 10, 30])):
        image, label, served = dataset[dataset.files.index(path)]
        assert served.tolist() == place and label == -1 and image.shape == (3, 30, 30)
        top, left, height, width = place
        expected = np.array(Image.open(path).convert("RGB").resize((width, height), Image.Resampling.BILINEAR))
        assert torch.equal(image[:, top:top + height, left:left + width], torch.from_numpy(expected).permute(2, 0, 1))
        outside = torch.ones(30, 30, dtype=torch.bool)
        outside[top:top + height, left:left + width] = False
        assert image[:, outside].eq(0).all()
    # The data set contracts hold with places, and the default still serves center squares without one.
    testing.datasets.items("dataset", "clrun/image_folder", root=str(tmp_path / "a"), size=30, keep_aspect=True)
    testing.datasets.deterministic_items("dataset", "clrun/image_folder", root=str(tmp_path / "a"), size=30, keep_aspect=True)
    assert len(ImageFolder(str(tmp_path / "a"), size=30)[0]) == 2


def test_keep_aspect_must_be_a_boolean(tmp_path):
    with pytest.raises(clrun.ComponentError, match=r"^clrun/image_folder: keep_aspect must be true or false, got 'yes'$"):
        ImageFolder(str(tmp_path), keep_aspect="yes")


def torchvision_crop(height: int, width: int) -> tuple[int, int, int, int]:
    return T.RandomResizedCrop.get_params(torch.empty(1, height, width), list(SCALE), list(RATIO))


@pytest.mark.parametrize("place", [(0, 0, 60, 60), (5, 0, 20, 60), (0, 7, 60, 12)], ids=["square", "wide", "tall"])
def test_crops_are_drawn_as_torchvisions_randomresizedcrop_draws_them_on_the_image_alone(place, crop_path):
    """Box statistics over 2000 crops, read from the cropped pixels, agree with torchvision's get_params on
    an image of the place's size (which they never leave)."""
    top, left, height, width = place
    torch.manual_seed(0)
    crops = RandomResizedCrop(8, scale=SCALE, ratio=RATIO)(ramps(2000, 60), torch.tensor([place]).expand(2000, 4))
    x0, y0 = crops[:, 0, 0, 0].round(), crops[:, 1, 0, 0].round()
    x1, y1 = crops[:, 0, 0, -1].round(), crops[:, 1, -1, 0].round()
    assert (x0 >= left).all() and (y0 >= top).all() and (x1 <= left + width - 1).all() and (y1 <= top + height - 1).all()
    ours = torch.stack([y0 - top, x0 - left, y1 - y0 + 1, x1 - x0 + 1], dim=1).double()
    theirs = torch.tensor([torchvision_crop(height, width) for _ in range(2000)], dtype=torch.float64)
    # Means and spreads of (top, left, height, width) within a few standard errors of each other.
    standard_error = theirs.std(dim=0) / 2000 ** 0.5 + 1e-9
    assert ((ours.mean(dim=0) - theirs.mean(dim=0)).abs() < 5 * standard_error * 2 ** 0.5).all()
    assert ((ours.std(dim=0) - theirs.std(dim=0)).abs() < 0.08 * theirs.std(dim=0) + 0.05).all()


def test_when_no_try_fits_the_crop_is_torchvisions_central_one():
    for height, width in ((10, 30), (30, 10), (17, 17)):
        box = crop_boxes(torch.tensor([[3, 4, height, width]]), (1.0, 1.0), (1.0, 1.0))[0]
        i, j, h, w = T.RandomResizedCrop.get_params(torch.empty(1, height, width), [1.0, 1.0], [1.0, 1.0])
        assert box.tolist() == [[4 + j, 3 + i], [4 + j + w - 1, 3 + i], [4 + j + w - 1, 3 + i + h - 1], [4 + j, 3 + i + h - 1]]


def test_the_crop_resizes_its_box_as_kornias_crop_does(crop_path):
    """A box covering a place: the output is kornia's RandomResizedCrop of that box, i.e. the place resized."""
    images = torch.rand(2, 3, 40, 40)
    crop = RandomResizedCrop(16, scale=(1.0, 1.0), ratio=(0.5, 0.5))  # a 1:2 place fits exactly, at any draw
    out = crop(images, torch.tensor([[0, 10, 40, 20], [0, 10, 40, 20]]))
    expected = torch.nn.functional.interpolate(images[:, :, :, 10:30], size=(16, 16), mode="bilinear", align_corners=True)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)  # the batched kernel: float rounding


def test_views_cropped_inside_the_places_never_show_the_padding(white_wide_and_tall, crop_path):
    dataset = ImageFolder(str(white_wide_and_tall), size=48, channels=1, keep_aspect=True)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))]).repeat(16, 1, 1, 1)
    places = torch.stack([dataset[i][2] for i in range(len(dataset))]).repeat(16, 1)
    crop = RandomResizedCrop(24, scale=(0.08, 1.0))
    torch.manual_seed(0)
    assert crop(images.float() / 255, places).min() > 0.999
    # The control: the same crops drawn over the whole canvas show the black bars.
    assert crop(images.float() / 255).amin(dim=(1, 2, 3)).lt(0.5).float().mean() > 0.3


def keep_aspect_recipe(root: Path, run_dir: Path, first: str = "clrun/random_resized_crop"):
    return clrun.load_recipe(TINY, [
        f"run.dir={run_dir}", "health.enabled=false", "callbacks=[]",
        f"data.dataset={{name: clrun/image_folder, root: '{root}', size: 48, channels: 1, keep_aspect: true}}",
        "data.batch_size=4",
        f"views=[{{name: global, count: 2, transforms: [{{name: {first}, size: [32, 32], scale: [0.3, 1.0]}}, "
        "{name: kornia/RandomHorizontalFlip}]}]",
        "backbone.in_chans=1"])


def test_training_on_letterboxed_images_sees_only_the_images(white_wide_and_tall, tmp_path, monkeypatch):
    """Places travel from the data set through the loader and the step to the views: the network never
    sees the canvas's black padding, over a whole run of wide and tall white images."""
    step, darkest = Step.__call__, []

    def step_and_look(self, *batch):
        metrics, outputs = step(self, *batch)
        darkest.append(min(float(v.min()) for v in outputs.views))
        return metrics, outputs

    monkeypatch.setattr(Step, "__call__", step_and_look)
    run = clrun.train(keep_aspect_recipe(white_wide_and_tall, tmp_path))
    assert run.step == 2 and len(darkest) == 2 and min(darkest) > 0.999


def test_a_view_that_does_not_crop_inside_the_places_is_refused(white_wide_and_tall, tmp_path):
    recipe = keep_aspect_recipe(white_wide_and_tall, tmp_path, first="kornia/RandomResizedCrop")
    with pytest.raises(UserError) as refused:
        clrun.train(recipe)
    assert str(refused.value) == (
        f"{recipe.data.dataset.where}: error: data.dataset: keep_aspect serves each image whole on a padded square, "
        "so every view must begin with clrun/random_resized_crop, which crops inside the image; view 1 "
        "(kornia/RandomResizedCrop) begins otherwise: make clrun/random_resized_crop its first transform (it "
        "takes kornia/RandomResizedCrop's size, scale and ratio)")
    assert [p.name for p in tmp_path.iterdir()] == ["images"]  # refused before a run folder is made


def test_the_docs_keep_aspect_example_builds(white_wide_and_tall):
    # The example of "Crops from the whole image" in the Scaling and clusters guide.
    guide = (Path(__file__).resolve().parents[4] / "docs" / "guides" / "scaling.md").read_text(encoding="utf-8")
    blocks = [b.split("```")[0] for b in guide.split("```yaml\n")[1:]]
    block = next(b for b in blocks if "keep_aspect: true" in b)
    example = yaml.safe_load(block)
    dataset = dict(example["data"]["dataset"], root=str(white_wide_and_tall))
    assert isinstance(clrun.create("dataset", dataset.pop("name"), **dataset), ImageFolder)
    transforms = [clrun.create("augmentation", t.pop("name"), **t) for t in example["views"][0]["transforms"]]
    assert isinstance(transforms[0], RandomResizedCrop)
