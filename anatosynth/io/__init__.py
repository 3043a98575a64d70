"""Medical-volume input/output: NIfTI volumes with their geometry, dataset layouts, canonical geometry."""

from anatosynth.io.volume import Volume, load_image, load_label, save_volume, check_same_geometry, check_pair
from anatosynth.io.datasets import Case, Dataset, read_dataset, read_labels_json
from anatosynth.io.canonical import to_ras, resample, resample_label, crop_foreground, canonicalise

__all__ = [
    "Volume", "load_image", "load_label", "save_volume", "check_same_geometry", "check_pair",
    "Case", "Dataset", "read_dataset", "read_labels_json",
    "to_ras", "resample", "resample_label", "crop_foreground", "canonicalise",
]
