"""Medical-volume input/output: NIfTI volumes with their geometry, dataset layouts, canonical geometry."""

from anatosynth.io.canonical import canonicalise, crop_foreground, resample, resample_label, to_ras
from anatosynth.io.datasets import Case, Dataset, read_dataset, read_labels_json
from anatosynth.io.volume import Volume, check_pair, check_same_geometry, load_image, load_label, save_volume

__all__ = [
    "Volume", "load_image", "load_label", "save_volume", "check_same_geometry", "check_pair",
    "Case", "Dataset", "read_dataset", "read_labels_json",
    "to_ras", "resample", "resample_label", "crop_foreground", "canonicalise",
]
