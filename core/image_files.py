"""Finding the image files of a folder tree: what ``clrun/image_folder`` serves and ``cl-run shards`` packs."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def find_images(root: Path, extensions: tuple[str, ...]) -> list[Path]:
    """Image files under ``root`` (recursively), relative to it, sorted so the order is the same everywhere.

    Extensions match case-insensitively (cameras write .JPG). Hidden files and folders are skipped:
    macOS leaves ``._name.jpg`` resource forks next to real images, and they would fail to decode.
    Symlinked folders are followed, since data sets are often assembled from links.
    """
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(extensions):
                found.append(Path(dirpath, name).relative_to(root))
    return sorted(found)
