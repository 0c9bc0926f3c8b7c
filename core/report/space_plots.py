"""The report's pictures of the embedding space (recorded by ``clrun.space``): the map of the test features
before training and at the last evaluation, and the retrieval grid.

The map's 2-D layout is made here, from the recorded principal components: by UMAP where ``umap-learn`` is
installed (``pip install 'cl-run[umap]'``; its first call compiles with numba, tens of seconds), else the first
two principal components, which need nothing. Each panel is laid out on its own (the two encoders' spaces
are unrelated), points coloured by class with a legend of the class names.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

WHEN = (("first", "before training"), ("last", "last evaluation"))
RIGHT, WRONG = "#2a9d4b", "#d62728"  # a neighbour of the query's class, of another class


def layout_2d(points: np.ndarray) -> tuple[np.ndarray, str]:
    """``(n, 2)`` coordinates of the recorded points and the method's name: UMAP (``umap-learn``) where it is
    installed and there are enough points, else the first two principal components."""
    points = points.astype(np.float32)
    if importlib.util.find_spec("umap") is not None and len(points) >= 50:
        import umap

        reducer = umap.UMAP(n_components=2, n_neighbors=15, min_dist=0.1, random_state=0)
        return reducer.fit_transform(points), "UMAP"
    if points.shape[1] < 2:
        return np.concatenate([points, np.zeros_like(points)], axis=1)[:, :2], "PCA"
    return points[:, :2], "PCA"


def embedding_map_figure(space: dict[str, Any] | None) -> Figure | None:
    """One panel per recorded map (before training, last evaluation), each laid out by ``layout_2d``."""
    panels = [(when, title) for when, title in WHEN if space and f"{when}_points" in space]
    if not panels:
        return None
    names = [str(n) for n in space.get("class_names", [])]
    fig = Figure(figsize=(5.2 * len(panels) + 1.6, 5.0), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    handles = {}
    for ax, (when, title) in zip(axes, panels):
        xy, method = layout_2d(space[f"{when}_points"])
        labels = space[f"{when}_labels"]
        for label in np.unique(labels):
            chosen = labels == label
            name = names[label] if 0 <= label < len(names) else ("unlabeled" if label < 0 else str(label))
            handles[name] = ax.scatter(xy[chosen, 0], xy[chosen, 1], s=4, alpha=0.7, color=_colour(label),
                                       label=name, rasterized=True)
        if f"{when}_title" in space:  # a map of other images (cl-run embed --report) says what they are
            heading = f"{space[f'{when}_title']}: {len(xy)} images, {method}"
        else:
            heading = f"{title} (epoch {int(space.get(f'{when}_epoch', -1))}): {len(xy)} test images, {method}"
        ax.set_title(heading, fontsize="medium")
        ax.set_xticks([])
        ax.set_yticks([])
    if 1 < len(handles) <= 20:
        fig.legend(handles.values(), handles.keys(), loc="outside right center", fontsize="small", markerscale=3,
                   frameon=False)
    return fig


def retrieval_figure(space: dict[str, Any] | None) -> Figure | None:
    """A row per query: the test image, then its nearest bank images with their similarities, each framed
    green when it is of the query's class and red when not."""
    if not space or "retrieval_images" not in space:
        return None
    images, labels = space["retrieval_images"], space["retrieval_labels"]
    similarity = space.get("retrieval_similarity")
    names = [str(n) for n in space.get("class_names", [])]
    rows, columns = images.shape[:2]
    fig = Figure(figsize=(1.25 * columns, 1.45 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for row in range(rows):
        for col in range(columns):
            ax = axes[row][col]
            picture = images[row, col].transpose(1, 2, 0)
            ax.imshow(picture, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            label = int(labels[row, col])
            name = names[label] if 0 <= label < len(names) else str(label)
            if col == 0:
                ax.set_title(f"query: {name}" if label >= 0 else "query", fontsize="x-small", fontweight="bold")
                continue
            if label < 0:  # unlabeled images: the similarity alone, no verdict
                ax.set_title("" if similarity is None else f"{similarity[row, col - 1]:.3f}", fontsize="x-small")
                continue
            same = label == int(labels[row, 0])
            colour = RIGHT if same else WRONG
            ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, lw=4, edgecolor=colour))
            text = name if similarity is None else f"{similarity[row, col - 1]:.3f} {name}"
            ax.set_title(text if same else f"✗ {text}", fontsize="x-small", color=colour)
    return fig


def _colour(label: int) -> Any:
    from matplotlib import colormaps

    return "lightgray" if label < 0 else colormaps["tab20" if label >= 10 else "tab10"](label % 20)
