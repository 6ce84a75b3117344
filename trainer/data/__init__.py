"""DatasetTree layout readers and image loading for re-identification collections.

The readers only list files (they never decode images), so they are cheap enough to run on an
upload before any costly validation; ``images.probe_image`` is that validation step.
"""

from trainer.data.images import ALLOWED_FORMATS, ImageError, load_rgb, probe_image
from trainer.data.readers import (
    IMAGE_EXTENSIONS,
    LAYOUTS,
    SPLITS,
    DatasetError,
    DatasetTree,
    Item,
    Skipped,
    detect_layout,
    read_dataset,
    relabel,
    strip_labels,
)

__all__ = [
    "ALLOWED_FORMATS",
    "IMAGE_EXTENSIONS",
    "LAYOUTS",
    "SPLITS",
    "DatasetError",
    "DatasetTree",
    "ImageError",
    "Item",
    "Skipped",
    "detect_layout",
    "load_rgb",
    "probe_image",
    "read_dataset",
    "relabel",
    "strip_labels",
]
