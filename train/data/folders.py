"""Readers for encoded images on disk: an ImageNet-style class tree and a flat unlabelled folder.

``imagefolder``: ``root/<class>/<image>`` (classes sorted by name become labels 0..K-1).
``flatfolder``:  every image under ``root`` (searched recursively), no labels: a user's own data.
Each file is checked before training starts (see ``verify_files``), so that a corrupt image fails
with its name instead of crashing a worker hours into a run.
"""
from __future__ import annotations

from pathlib import Path

from .dataset import DataError, require_dir

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
VERIFY_CHOICES = ("auto", "full", "header", "none")
# Up to this many files "auto" decodes every one fully (catches truncated JPEGs); above it only the
# headers are read, because decoding e.g. ImageNet's 1.28M files up front would take far too long.
AUTO_FULL_LIMIT = 20_000
# PIL modes of 8-bit images; the loaders convert these to RGB exactly. 16-bit and float images
# (modes I;16, I, F) would be clipped to 255 by that conversion, so they are refused.
EIGHT_BIT_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def verify_files(files: list[str], mode: str = "auto") -> None:
    """Raise DataError naming every unreadable file (up to 10) among ``files``.

    mode: 'full' decodes each image, 'header' opens it and checks its structure (PIL ``verify``),
    'none' skips the check, 'auto' = 'full' up to AUTO_FULL_LIMIT files, 'header' above.
    """
    if mode not in VERIFY_CHOICES:
        raise ValueError(f"verify={mode!r} is not one of {VERIFY_CHOICES}")
    if mode == "none":
        return
    if mode == "auto":
        mode = "full" if len(files) <= AUTO_FULL_LIMIT else "header"
    from PIL import Image

    bad = []
    for f in files:
        try:
            with Image.open(f) as im:
                if im.mode not in EIGHT_BIT_MODES:
                    bad.append(f"{f} (mode {im.mode}: not an 8-bit image; convert it to 8-bit RGB or grey)")
                elif mode == "full":
                    im.load()
                else:
                    im.verify()
        except Exception as e:  # PIL raises many types for bad files
            bad.append(f"{f} ({type(e).__name__}: {e})")
        if len(bad) >= 10:
            break
    if bad:
        raise DataError("unreadable image file(s): " + "; ".join(bad))


def read_image_folder(root: str | Path, verify: str = "auto") -> tuple[list[str], list[int], list[str]]:
    """(files, labels, class names) of a ``root/<class>/<image>`` tree."""
    root = require_dir(Path(root), "image folder")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"image folder {root} has no class sub-folders (expected root/<class>/<image>)")
    files, labels = [], []
    for label, name in enumerate(classes):
        found = sorted(str(p) for p in (root / name).iterdir() if _is_image(p))
        if not found:
            raise DataError(f"class folder {root / name} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        files += found
        labels += [label] * len(found)
    verify_files(files, verify)
    return files, labels, classes


def read_flat_folder(root: str | Path, verify: str = "auto") -> list[str]:
    """Every image file under ``root`` (recursively, sorted)."""
    root = require_dir(Path(root), "image folder")
    files = sorted(str(p) for p in root.rglob("*") if _is_image(p))
    if not files:
        raise DataError(f"image folder {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    verify_files(files, verify)
    return files
