"""NIfTI volumes that keep their geometry, with validation of images and label maps.

A :class:`Volume` is a 3D array plus its 4x4 voxel-to-world affine (RAS+ world, millimetres, as in
nibabel). Loading checks what later stages rely on and turns every problem into an
:class:`~anatosynth.errors.InputError` that names the file.
"""

from __future__ import annotations

import gzip
import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from anatosynth.errors import InputError

__all__ = ["Volume", "load_image", "load_label", "save_volume", "check_same_geometry", "check_pair",
           "screen_label_map", "looks_like_label_map", "NIFTI_SUFFIXES", "check_output_file", "check_output_dir",
           "atomic_write_bytes", "atomic_write_text", "ensure_writable_dir"]

NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass
class Volume:
    """A 3D array with its voxel-to-world affine (RAS+ mm).

    Attributes:
        array: the voxel data, indexed ``[i, j, k]`` as stored in the file.
        affine: 4x4 matrix mapping voxel indices to world coordinates (mm).
    """

    array: np.ndarray
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along each array axis."""
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))

    @property
    def orientation(self) -> str:
        """Axis codes such as ``'RAS'`` or ``'LPS'`` (the direction each axis increases towards)."""
        return "".join(nib.orientations.aff2axcodes(self.affine))

    def world(self, ijk: np.ndarray) -> np.ndarray:
        """World coordinates (mm) of voxel indices ``ijk`` with shape (..., 3)."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def with_array(self, array: np.ndarray) -> Volume:
        return Volume(array, self.affine.copy())


def _name(path: Path) -> str:
    return path.name.lower()


def _check_suffix(path: Path) -> None:
    if not _name(path).endswith(NIFTI_SUFFIXES):
        raise InputError(path, "not a NIfTI file (expected .nii or .nii.gz)")


def _read(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read the data array and affine, mapping every failure to one clear line."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a folder, expected a NIfTI file")
    _check_suffix(path)
    try:
        img = nib.load(str(path))
        if not isinstance(img, nib.spatialimages.SpatialImage):  # NIfTI-1/2 are; the suffix was checked
            raise InputError(path, f"not a NIfTI image ({type(img).__name__})")
        data = np.asanyarray(img.dataobj)
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise InputError(path, f"truncated or corrupt gzip data ({err.__class__.__name__})") from None
    except nib.filebasedimages.ImageFileError as err:
        raise InputError(path, f"not a readable NIfTI image ({err})") from None
    except (OSError, ValueError) as err:
        raise InputError(path, f"cannot read NIfTI data ({err})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(path, f"expected a 3D volume, found {data.ndim} dimensions with shape {tuple(data.shape)}")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(path, "header has an invalid (singular or non-finite) affine")
    return data, affine


def load_image(path: str | Path) -> Volume:
    """Load an intensity image as float32, rejecting NaN/Inf intensities."""
    data, affine = _read(path)
    array = np.asarray(data, dtype=np.float32)
    if not np.all(np.isfinite(array)):
        bad = int((~np.isfinite(array)).sum())
        raise InputError(path, f"{bad} voxels are NaN or Inf")
    return Volume(array, affine)


def load_label(path: str | Path, *, require_foreground: bool = False,
               names: dict[int, str] | None = None) -> Volume:
    """Load a label map as int32, accepting float storage only when every value is integral.

    Args:
        path: NIfTI label map.
        require_foreground: reject a map that holds only background (0).
        names: optional id→name map; ids present in the file but missing from it are rejected.
    """
    data, affine = _read(path)
    if np.issubdtype(data.dtype, np.floating):
        arr = np.asarray(data, dtype=np.float64)
        if not np.all(np.isfinite(arr)):
            raise InputError(path, "label map holds NaN or Inf values")
        rounded = np.rint(arr)
        if not np.array_equal(rounded, arr):
            worst = float(np.abs(rounded - arr).max())
            raise InputError(path, f"label map holds non-integer values (off by up to {worst:.3g}); "
                                   "labels must be whole numbers")
        arr = rounded
    elif np.issubdtype(data.dtype, np.integer) or data.dtype == bool:
        arr = np.asarray(data)
    else:
        raise InputError(path, f"label map has unsupported data type {data.dtype}")
    if arr.size and arr.min() < 0:
        raise InputError(path, f"label map holds negative values (min {arr.min():g})")
    if arr.size and arr.max() > np.iinfo(np.int32).max:
        raise InputError(path, "label ids too large")
    labels = np.asarray(arr, dtype=np.int32)
    if require_foreground and not labels.any():
        raise InputError(path, "label map is empty (no foreground voxels)")
    if names is not None:
        unknown = sorted(set(np.unique(labels).tolist()) - set(names) - {0})
        if unknown:
            raise InputError(path, unknown_ids_message(unknown))
    return Volume(labels, affine)


def screen_label_map(path: str | Path) -> None:
    """A cheap look at a label map's first slice (all that a gzip stream must decompress to reach it): negative
    or non-integer values, or more than 255 distinct ones, mean an intensity image among the label maps.

    Raises:
        InputError: the file is unreadable or looks like an image (one line, naming it).
    """
    try:
        img = nib.load(str(path))
        if not isinstance(img, nib.spatialimages.SpatialImage):
            raise InputError(path, f"not a NIfTI image ({type(img).__name__})")
        first = np.asarray(img.dataobj[..., :1] if len(img.shape) >= 3 else img.dataobj)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - nibabel raises many kinds; all mean "not a usable NIfTI"
        raise InputError(path, f"cannot read it as NIfTI ({err.__class__.__name__})") from None
    values = np.unique(first)
    if values.size and not np.array_equal(values, np.rint(values)) and values.size <= 255:
        raise InputError(path, "label map holds non-integer values in its first slice; labels must be whole numbers")
    if values.size and (values.min() < 0 or not np.array_equal(values, np.rint(values)) or values.size > 255):
        raise InputError(path, f"looks like an intensity image, not a label map ({values.size} distinct values, "
                               f"{values.min():g} to {values.max():g}, in its first slice); remove it from the "
                               "label maps")


def unknown_ids_message(unknown: list[int]) -> str:
    """One short line for label ids the label names lack: the count and the first few; many distinct values
    mean the file is probably an image among the label maps."""
    shown = ", ".join(map(str, unknown[:5])) + (f", … ({len(unknown)} in all)" if len(unknown) > 5 else "")
    if len(unknown) > 50:
        return (f"{len(unknown)} values the label names lack ({shown}): an intensity image, not a label map? "
                "Remove it from the folder of label maps")
    return f"label ids {shown} are not in the label names"


def check_same_geometry(image: Volume, label: Volume, path: str | Path, *, atol_mm: float = 1e-3) -> None:
    """Raise if an image and its label map do not share shape and affine (to ``atol_mm``)."""
    if image.shape != label.shape:
        raise InputError(path, f"image shape {image.shape} and label shape {label.shape} differ")
    if not np.allclose(image.affine, label.affine, atol=atol_mm, rtol=1e-5):
        raise InputError(path, "image and label affines differ (different geometry)")


def looks_like_label_map(image: np.ndarray, label: np.ndarray) -> bool:
    """True when an "image" holds only a few whole numbers, all of them ids of the label map beside it.

    A scan has hundreds of distinct intensities; a label map passed as the image has its label ids.
    A strided sample is tested first, so a real image costs one cheap pass.
    """
    sample = image[::4, ::4, ::2]
    for arr in (sample, image):
        if not np.array_equal(arr, np.rint(arr)):
            return False
        values = np.unique(arr)
        if len(values) > 64:
            return False
    if len(values) < 2:  # a constant image is no label map either
        return False
    ids = set(np.unique(label).tolist()) | {0}
    return set(values.astype(np.int64).tolist()) <= ids


def check_pair(image: Volume, label: Volume, image_path: str | Path, label_path: str | Path) -> None:
    """Check an image and its label map together: same geometry, and the image is not a label map."""
    check_same_geometry(image, label, label_path)
    if looks_like_label_map(image.array, label.array):
        values = np.unique(image.array).astype(np.int64).tolist()
        raise InputError(image_path, f"looks like a label map, not an image (only the label ids {values}); "
                                     "check the image entry of the dataset")


def ensure_writable_dir(folder: str | Path) -> Path:
    """Create ``folder`` if needed and make sure files can be written into it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(folder, f"cannot create output folder ({err.strerror})") from None
    if not folder.is_dir():
        raise InputError(folder, "output path exists and is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(folder, "output folder is not writable")
    return folder


def check_output_file(path: str | Path) -> Path:
    """Check, before any work, that a file can be written at ``path`` (its folder may not exist yet).

    Raises:
        InputError: ``path`` is a folder, or the first existing folder above it is a file or not writable.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "is a folder; expected the path of a file to write")
    return _check_creatable(path)


def check_output_dir(path: str | Path) -> Path:
    """Check, before any work, that an output folder exists or can be created at ``path`` (nothing is made)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(path, "output path exists and is not a folder")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise InputError(path, "output folder is not writable")
        return path
    return _check_creatable(path)


def _check_creatable(path: Path) -> Path:
    """The first existing folder above ``path`` must be a writable folder."""
    parent = path.parent if str(path.parent) else Path(".")
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(path, f"cannot be created: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(path, f"cannot be created: {parent} is not writable")
    return path


def atomic_write_bytes(path: str | Path, write) -> Path:
    """Write a file through a temporary sibling and ``os.replace``, so no half-written file is left.

    Args:
        path: destination.
        write: callable receiving the temporary path and writing the whole file there.
    """
    path = check_output_file(path)
    folder = ensure_writable_dir(path.parent if str(path.parent) else Path("."))
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the user's usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text through :func:`atomic_write_bytes` (no half-written config, report or JSON)."""
    return atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def save_volume(volume: Volume, path: str | Path, dtype: np.dtype | str | None = None) -> Path:
    """Write a volume as NIfTI (atomically), keeping its affine as both qform and sform."""
    path = Path(path)
    _check_suffix(path)
    array = volume.array if dtype is None else volume.array.astype(dtype)
    img = nib.Nifti1Image(np.asarray(array), volume.affine)
    img.set_qform(volume.affine, code=1)
    img.set_sform(volume.affine, code=1)
    img.header.set_xyzt_units("mm")
    return atomic_write_bytes(path, lambda tmp: nib.save(img, tmp))
