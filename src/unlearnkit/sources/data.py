"""Data sources: a user's training data, read row by row by integer id, without unpickling.

A *data source* is a small JSON object, stored in a workspace's ``source.json``:

* ``{"kind": "npz", "path": "data.npz", "inputs": "x", "labels": "y"}``: two arrays of a NumPy
  ``.npz`` archive, read with ``allow_pickle=False``;
* ``{"kind": "image_folder", "root": "images/", "mode": "RGB"}``: one sub-folder per class
  (sorted folder names give the class indices, recorded as ``"classes"``), images read with Pillow
  (``pip install 'unlearnkit[images]'``);
* ``{"kind": "csv", "path": "index.csv", "mode": "L"}``: lines ``path,label`` (header optional),
  image paths relative to the CSV's folder.

Image sources take ``"mode"`` (``"L"``: one channel, ``"RGB"`` (default): three), ``"size"``
(``[height, width]`` to resize every image to; without it all images must share one size) and
``"skip_invalid"`` (``true``: leave out files Pillow cannot read, listed in
:attr:`DataSource.skipped`; default ``false``: refuse them, naming them). Every kind takes
``"num_classes"`` (default: the largest label + 1).

Row ids are the integers ``0 .. n-1``, in file order (npz, csv) or in (class, path) order (image
folders). The ledger stores ids, so a data source that changes under it would make the same id name
another row: :func:`describe_data_source` records ``"num_rows"`` and a ``"fingerprint"`` (of the
arrays, or of the list of files and labels), and opening the source later refuses a mismatch.

Inputs come out as float32 (images scaled to [0, 1], channels first), labels as int64.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import stat
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor

from unlearnkit.errors import InvalidRequestError, UnlearnkitError
from unlearnkit.request import instance_sha256
from unlearnkit.utils.hashing import tensor_sha256

DATA_KINDS: tuple[str, ...] = ("npz", "image_folder", "csv")
IMAGE_MODES: tuple[str, ...] = ("L", "RGB")
_COMMON_KEYS = frozenset({"kind", "num_classes", "num_rows", "fingerprint"})
_IMAGE_KEYS = frozenset({"mode", "size", "skip_invalid"})
_ALLOWED_KEYS: dict[str, frozenset[str]] = {
    "npz": _COMMON_KEYS | {"path", "inputs", "labels"},
    "image_folder": _COMMON_KEYS | _IMAGE_KEYS | {"root", "classes"},
    "csv": _COMMON_KEYS | _IMAGE_KEYS | {"path"},
}
# Pillow modes holding more than 8 bits per channel: converting them to "L"/"RGB" clips values
# silently, so they are refused instead of being read wrong.
_WIDE_MODES = frozenset({"I", "F", "I;16", "I;16B", "I;16L", "I;16N", "I;32", "I;32B"})
_MAX_LISTED = 10


class DataSourceError(UnlearnkitError, ValueError):
    """A data source cannot be read as described: missing files, bad arrays, non-image files,
    paths escaping their folder, or data changed since the source was described."""


def _listed(items: Sequence[Any]) -> str:
    shown = ", ".join(str(i) for i in items[:_MAX_LISTED])
    return shown + (f", ... ({len(items)} in all)" if len(items) > _MAX_LISTED else "")


def validate_ids(ids: Iterable[Any] | Tensor | np.ndarray, num_rows: int) -> list[int]:
    """Checks row ids against a data source of ``num_rows`` rows; returns them as Python ints.

    Raises:
        InvalidRequestError: Naming non-integer ids (floats, strings, booleans), ids out of
            range, and duplicates.

    Example:
        >>> validate_ids([3, 0, 2], 5)
        [3, 0, 2]
        >>> validate_ids([1, 7, -1], 5)
        Traceback (most recent call last):
        ...
        unlearnkit.errors.InvalidRequestError: 2 id(s) out of range for a data source of 5 rows (valid 0..4): 7, -1
        >>> validate_ids([1, 1.5, "2"], 5)
        Traceback (most recent call last):
        ...
        unlearnkit.errors.InvalidRequestError: row ids must be integers; got 1.5 (float), '2' (str)
    """
    if isinstance(ids, (str, bytes)) or isinstance(ids, Mapping):
        raise InvalidRequestError(f"row ids must be a sequence of integers, got {type(ids).__name__} {ids!r}")
    if isinstance(ids, (Tensor, np.ndarray)):
        if ids.ndim != 1:
            raise InvalidRequestError(f"row ids must be one-dimensional, got shape {tuple(ids.shape)}")
        ids = ids.tolist()  # floats stay floats, and are refused below
    try:
        items = list(ids)
    except TypeError:
        raise InvalidRequestError(f"row ids must be a sequence of integers, got {type(ids).__name__}") from None
    bad = [i for i in items if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer))]
    if bad:
        raise InvalidRequestError(
            "row ids must be integers; got " + _listed([f"{i!r} ({type(i).__name__})" for i in bad])
        )
    clean = [int(i) for i in items]
    out = [i for i in clean if not 0 <= i < num_rows]
    if out:
        raise InvalidRequestError(
            f"{len(out)} id(s) out of range for a data source of {num_rows} rows "
            f"(valid 0..{num_rows - 1}): {_listed(out)}"
        )
    seen: set[int] = set()
    dupes = sorted({i for i in clean if i in seen or seen.add(i)})  # type: ignore[func-returns-value]
    if dupes:
        raise InvalidRequestError(f"duplicate row id(s): {_listed(dupes)}")
    return clean


class DataSource:
    """Rows of a data set by integer id ``0 .. n-1``: inputs float32, labels int64.

    Build one with :func:`open_data_source`. Labels are held in memory; inputs are held (npz) or
    read from their files on demand (images).

    Attributes:
        description: The JSON source, completed with ``num_rows``, ``num_classes``,
            ``fingerprint`` (and ``classes`` for image folders).
        labels: Every row's label, int64, shape ``(n,)``.
        num_classes: Number of classes.
        input_shape: Shape of one input row.
        skipped: Files left out because ``skip_invalid`` was set (empty otherwise).
    """

    def __init__(self, description: dict[str, Any], labels: Tensor, input_shape: tuple[int, ...]) -> None:
        n = int(labels.shape[0])
        if n == 0:
            raise DataSourceError(f"data source {_name(description)} has no rows")
        labels = labels.to(torch.int64)
        num_classes = description.get("num_classes")
        if num_classes is None:
            num_classes = int(labels.max()) + 1
        bad = (labels >= num_classes).nonzero().flatten().tolist()
        if bad:
            raise DataSourceError(
                f"data source {_name(description)}: {len(bad)} label(s) out of range for {num_classes} classes "
                f"(valid 0..{num_classes - 1}): rows {_listed(bad)} have labels {_listed([int(labels[i]) for i in bad])}"
            )
        self.labels = labels
        self.num_classes = int(num_classes)
        self.input_shape = tuple(input_shape)
        self.skipped: list[str] = []
        self.description = {**description, "num_rows": n, "num_classes": self.num_classes}

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {_name(self.description)}: {len(self)} rows, {self.num_classes} classes>"

    @property
    def ids(self) -> range:
        """Every row id, ``0 .. n-1``."""
        return range(len(self))

    @property
    def fingerprint(self) -> str:
        """sha256 naming the rows' order and content (npz) or file list and labels (images)."""
        return str(self.description["fingerprint"])

    def to_dict(self) -> dict[str, Any]:
        """The JSON description (a copy)."""
        return json.loads(json.dumps(self.description))

    def rows(self, ids: Iterable[int] | Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
        """Inputs (float32, ``(k, *input_shape)``) and labels (int64, ``(k,)``) of rows ``ids``, in
        the given order.

        Raises:
            InvalidRequestError: For ids that are not integers, out of range, or repeated.
            DataSourceError: If a file cannot be read (images).
        """
        clean = validate_ids(ids, len(self))
        if not clean:
            return torch.empty((0, *self.input_shape), dtype=torch.float32), torch.empty(0, dtype=torch.int64)
        return self._inputs(clean), self.labels[torch.tensor(clean, dtype=torch.int64)]

    load_rows = rows

    def all_rows(self) -> tuple[Tensor, Tensor]:
        """Every row's inputs and labels, in id order."""
        return self.rows(self.ids)

    def content_hashes(self, ids: Iterable[int] | Tensor | np.ndarray) -> list[str]:
        """:func:`~unlearnkit.request.instance_sha256` of each row (its input and label)."""
        inputs, labels = self.rows(ids)
        return [instance_sha256(x, int(y)) for x, y in zip(inputs, labels)]

    def _inputs(self, ids: list[int]) -> Tensor:
        raise NotImplementedError


def _name(description: Mapping[str, Any]) -> str:
    return f"{description.get('kind')} {description.get('path', description.get('root'))!r}"


# --------------------------------------------------------------------------------------------
# npz
# --------------------------------------------------------------------------------------------


class NpzDataSource(DataSource):
    """Rows of two arrays of an ``.npz`` archive, held in memory as float32 / int64."""

    def __init__(self, description: dict[str, Any], inputs: Tensor, labels: Tensor) -> None:
        super().__init__(description, labels, tuple(inputs.shape[1:]))
        self._x = inputs

    def _inputs(self, ids: list[int]) -> Tensor:
        return self._x[torch.tensor(ids, dtype=torch.int64)].clone()


def _open_npz(spec: dict[str, Any], base_dir: str | Path | None) -> NpzDataSource:
    path = _resolve(spec["path"], base_dir)
    if not path.is_file():
        raise DataSourceError(f"data file not found: {path}")
    x_key, y_key = spec.get("inputs", "x"), spec.get("labels", "y")
    try:
        # allow_pickle=False: an object array would be unpickled, which can run arbitrary code.
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataSourceError(f"{path} is not a readable .npz archive: {err}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataSourceError(f"{path} holds a single array, not an .npz archive of named arrays (np.savez)")
    with archive:
        missing = [k for k in (x_key, y_key) if k not in archive.files]
        if missing:
            raise DataSourceError(f"{path} has no array(s) {missing}; its arrays: {sorted(archive.files)}")
        try:
            x, y = archive[x_key], archive[y_key]
        except ValueError as err:  # object arrays: "cannot be loaded when allow_pickle=False"
            raise DataSourceError(f"{path}: {err} (arrays of Python objects are refused: they are pickled)") from None
        except (OSError, EOFError, zipfile.BadZipFile) as err:
            raise DataSourceError(f"{path} is corrupt: {err}") from None
    inputs = _check_inputs_array(x, f"{path}[{x_key!r}]")
    labels = _check_labels_array(y, inputs.shape[0], f"{path}[{y_key!r}]")
    # The fingerprint covers the converted values, so re-saving the same data in another dtype or
    # compression keeps it, while any change to a row or to the row order does not.
    digest = hashlib.sha256(f"{tensor_sha256(inputs)}:{tensor_sha256(labels)}".encode()).hexdigest()
    description = {**spec, "inputs": x_key, "labels": y_key, "fingerprint": digest}
    return NpzDataSource(description, inputs, labels)


def _check_inputs_array(x: np.ndarray, what: str) -> Tensor:
    if x.dtype.kind not in "fiu":
        raise DataSourceError(f"{what} must hold real numbers (float or integer), got dtype {x.dtype}")
    if x.ndim < 2:
        raise DataSourceError(f"{what} must be shaped (N, ...) with at least one feature per row, got shape {x.shape}")
    if x.shape[0] == 0:
        raise DataSourceError(f"{what} has no rows")
    with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf is reported just below
        inputs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    finite = torch.isfinite(inputs.reshape(inputs.shape[0], -1)).all(dim=1)
    if not finite.all():
        bad = (~finite).nonzero().flatten().tolist()
        raise DataSourceError(
            f"{what}: {len(bad)} row(s) hold NaN or infinite values (or values beyond float32): rows {_listed(bad)}"
        )
    return inputs


def _check_labels_array(y: np.ndarray, n: int, what: str) -> Tensor:
    if y.ndim != 1:
        raise DataSourceError(f"{what} must be one-dimensional (one label per row), got shape {y.shape}")
    if y.shape[0] != n:
        raise DataSourceError(f"{what} has {y.shape[0]} labels for {n} input rows")
    if y.dtype.kind == "f":
        integral = np.isfinite(y) & (y == np.round(y))
        if not integral.all():
            bad = np.flatnonzero(~integral).tolist()
            raise DataSourceError(f"{what} must hold integer class indices; rows {_listed(bad)} do not")
    elif y.dtype.kind not in "iu":
        raise DataSourceError(f"{what} must hold integer class indices, got dtype {y.dtype}")
    labels = torch.from_numpy(y.astype(np.int64))
    negative = (labels < 0).nonzero().flatten().tolist()
    if negative:
        raise DataSourceError(f"{what}: labels must be >= 0; rows {_listed(negative)} are negative")
    return labels


# --------------------------------------------------------------------------------------------
# Images (folder of class sub-folders, or CSV index)
# --------------------------------------------------------------------------------------------


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise DataSourceError(
            "reading images needs Pillow, an optional dependency: pip install 'unlearnkit[images]'"
        ) from None
    return Image


class ImageFilesDataSource(DataSource):
    """Rows read from image files under one root folder, on demand.

    Every file is opened by a path checked to resolve inside ``root``, without following a
    symlink in its last component, so a file swapped for a link after the scan is not read.
    """

    def __init__(
        self,
        description: dict[str, Any],
        root: Path,
        files: list[str],
        labels: Tensor,
        image_size: tuple[int, int],
        skipped: list[str],
    ) -> None:
        channels = 1 if description["mode"] == "L" else 3
        super().__init__(description, labels, (channels, *image_size))
        self.root = root
        self.files = files
        self.image_size = image_size  # (height, width)
        self.skipped = skipped

    def _inputs(self, ids: list[int]) -> Tensor:
        return torch.from_numpy(np.stack([self._read(self.files[i]) for i in ids]))

    def _read(self, rel: str) -> np.ndarray:
        image_module = _pillow()
        path = _inside(self.root, rel)
        size = self.description.get("size")
        try:
            with _open_nofollow(path) as handle, image_module.open(handle) as image:
                image = image.convert(self.description["mode"])
                if size is not None:
                    image = image.resize((size[1], size[0]), image_module.Resampling.BILINEAR)
                array = np.asarray(image, dtype=np.float32) / 255.0
        except (OSError, ValueError, image_module.DecompressionBombError) as err:
            raise DataSourceError(f"cannot read image {path}: {err}") from None
        if array.shape[:2] != self.image_size:
            raise DataSourceError(
                f"image {path} is now {array.shape[1]}x{array.shape[0]} (width x height), not "
                f"{self.image_size[1]}x{self.image_size[0]}: it changed since the data source was opened"
            )
        return array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))


def _inside(root: Path, rel: str) -> Path:
    """``root / rel`` resolved, refused unless it stays inside ``root`` (``root`` is resolved)."""
    path = (root / rel).resolve()
    if path != root and root not in path.parents:
        raise DataSourceError(f"{root / rel} resolves to {path}, outside {root}; refused")
    return path


@contextlib.contextmanager
def _open_nofollow(path: Path) -> Iterator[BinaryIO]:
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        raise DataSourceError(f"cannot open {path}: {err.strerror}") from None
    # O_NONBLOCK keeps a FIFO swapped in after the scan from blocking the open; regular files only.
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DataSourceError(f"{path} is not a regular file")
    with os.fdopen(fd, "rb") as handle:
        yield handle


def _probe_images(
    root: Path, files: list[str], spec: Mapping[str, Any], where: Mapping[str, str] | None = None
) -> tuple[list[int], list[str], tuple[int, int]]:
    """Opens every image's header (Pillow reads pixels lazily): returns the indices of readable
    files, the unreadable ones, and the common (height, width) images will have."""
    image_module = _pillow()
    keep: list[int] = []
    invalid: list[str] = []
    sizes: dict[tuple[int, int], list[str]] = {}
    wide: list[str] = []
    for index, rel in enumerate(files):
        path = _inside(root, rel)
        label = f"{path}{where[rel] if where else ''}"
        try:
            with _open_nofollow(path) as handle, image_module.open(handle) as image:
                width, height = image.size
                mode = image.mode
        except (OSError, ValueError, image_module.DecompressionBombError, DataSourceError) as err:
            invalid.append(f"{label} ({type(err).__name__}: {err})" if isinstance(err, DataSourceError) else label)
            continue
        if mode in _WIDE_MODES:
            wide.append(f"{label} (mode {mode})")
            continue
        keep.append(index)
        sizes.setdefault((height, width), []).append(str(path))
    if wide:
        raise DataSourceError(
            f"{len(wide)} image(s) hold more than 8 bits per channel, which cannot be read as 'L' or 'RGB' "
            f"without clipping: {_listed(wide)}; convert them to 8-bit images"
        )
    if invalid and not spec.get("skip_invalid", False):
        raise DataSourceError(
            f"{len(invalid)} file(s) are not images Pillow can read: {_listed(invalid)}; remove them, or set "
            "\"skip_invalid\": true to leave them out"
        )
    if not keep:
        raise DataSourceError(f"no readable images under {root}")
    size = spec.get("size")
    if size is not None:
        return keep, invalid, (int(size[0]), int(size[1]))
    if len(sizes) > 1:
        described = "; ".join(
            f"{w}x{h}: {len(paths)} file(s), e.g. {paths[0]}" for (h, w), paths in sorted(sizes.items(), key=lambda kv: -len(kv[1]))
        )
        raise DataSourceError(
            f"images under {root} differ in size (width x height): {described}; pass \"size\": [height, width] to resize them"
        )
    return keep, invalid, next(iter(sizes))


def _scan_image_folder(root: Path) -> tuple[list[str], list[str], list[int], list[str]]:
    """Class names, files (relative POSIX paths), their labels, and stray files, refusing links.

    Names starting with "." (``.DS_Store``, ``.ipynb_checkpoints``) are operating-system or tool
    metadata, not data, and are ignored; anything else that is not an image is reported.
    """
    links: list[str] = []
    stray: list[str] = []
    specials: list[str] = []
    classes: list[str] = []
    with os.scandir(root) as it:
        for entry in sorted(it, key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            if entry.is_symlink():
                links.append(entry.path)
            elif entry.is_dir(follow_symlinks=False):
                classes.append(entry.name)
            else:
                stray.append(entry.path)
    files: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        count = 0
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for d in dirnames:
                if os.path.islink(os.path.join(dirpath, d)):
                    links.append(os.path.join(dirpath, d))
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
            for filename in sorted(f for f in filenames if not f.startswith(".")):
                full = os.path.join(dirpath, filename)
                mode = os.lstat(full).st_mode
                if stat.S_ISLNK(mode):
                    links.append(full)
                elif not stat.S_ISREG(mode):
                    specials.append(full)
                else:
                    files.append(Path(full).relative_to(root).as_posix())
                    labels.append(label)
                    count += 1
        if count == 0:
            raise DataSourceError(f"class folder {root / name} holds no files; remove it or add its images")
    # Symbolic links are refused outright (not only those pointing outside): a link can be
    # retargeted later, so the rows would silently change under the ids the ledger recorded.
    if links:
        raise DataSourceError(f"symbolic links are not allowed under an image folder: {_listed(links)}")
    if specials:
        raise DataSourceError(f"not regular files (devices, FIFOs, sockets): {_listed(specials)}")
    if not classes:
        raise DataSourceError(f"image folder {root} has no class sub-folders (expected {root}/<class>/<image>)")
    return classes, files, labels, stray


def _open_image_folder(spec: dict[str, Any], base_dir: str | Path | None) -> ImageFilesDataSource:
    given = _resolve(spec["root"], base_dir)
    if not given.is_dir():
        raise DataSourceError(f"image folder not found: {given}")
    root = given.resolve()
    classes, files, labels, stray = _scan_image_folder(root)
    if stray and not spec.get("skip_invalid", False):
        raise DataSourceError(
            f"{len(stray)} file(s) lie directly in {root}, outside any class sub-folder: {_listed(stray)}; move "
            "them, or set \"skip_invalid\": true to leave them out"
        )
    recorded = spec.get("classes")
    if recorded is not None and list(recorded) != classes:
        raise DataSourceError(
            f"the class folders of {root} are now {classes}, not {list(recorded)} as described: class indices "
            "would change; restore the folders or describe the data source again"
        )
    if spec.get("num_classes") is not None and spec["num_classes"] != len(classes):
        raise DataSourceError(f"{root} has {len(classes)} class folders but num_classes is {spec['num_classes']}")
    keep, invalid, size = _probe_images(root, files, spec)
    files = [files[i] for i in keep]
    kept_labels = [labels[i] for i in keep]
    listing = {"classes": classes, "files": files, "labels": kept_labels}
    description = {
        **spec,
        "mode": spec.get("mode", "RGB"),
        "classes": classes,
        "num_classes": len(classes),
        "fingerprint": _listing_fingerprint(listing),
    }
    return ImageFilesDataSource(
        description, root, files, torch.tensor(kept_labels, dtype=torch.int64), size, invalid + stray
    )


def _open_csv(spec: dict[str, Any], base_dir: str | Path | None) -> ImageFilesDataSource:
    path = _resolve(spec["path"], base_dir)
    if not path.is_file():
        raise DataSourceError(f"CSV index not found: {path}")
    root = path.resolve().parent
    files: list[str] = []
    labels: list[int] = []
    where: dict[str, str] = {}
    first_line: dict[Path, int] = {}
    missing: list[str] = []
    try:
        # utf-8-sig: spreadsheet programs often start a CSV with a byte-order mark.
        with open(path, newline="", encoding="utf-8-sig") as handle:
            lines = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataSourceError(f"cannot read CSV index {path}: {err}") from None
    seen_data = False
    for lineno, row in enumerate(lines, start=1):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != 2:
            raise DataSourceError(f"{path} line {lineno}: expected 2 fields 'path,label', got {len(row)}: {row}")
        rel, label_text = row[0].strip(), row[1].strip()
        try:
            label = int(label_text)
        except ValueError:
            if not seen_data:  # the first line may be a header ("path,label" or any names)
                seen_data = True
                continue
            raise DataSourceError(f"{path} line {lineno}: label {label_text!r} is not an integer") from None
        seen_data = True
        if label < 0:
            raise DataSourceError(f"{path} line {lineno}: label {label} is negative")
        if not rel:
            raise DataSourceError(f"{path} line {lineno}: empty path")
        if PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).is_absolute() or PureWindowsPath(rel).drive:
            raise DataSourceError(f"{path} line {lineno}: path {rel!r} is absolute; paths must be relative to {root}")
        resolved = (root / rel).resolve()
        if root not in resolved.parents:
            raise DataSourceError(
                f"{path} line {lineno}: path {rel!r} resolves to {resolved}, outside the CSV's folder {root}; refused"
            )
        if not resolved.exists():
            missing.append(f"{rel} (line {lineno})")
            continue
        if resolved in first_line:
            raise DataSourceError(
                f"{path} line {lineno}: {rel!r} is the same file as line {first_line[resolved]}; each image must "
                "be listed once (a forgotten copy would stay in the data under another id)"
            )
        first_line[resolved] = lineno
        files.append(rel)
        labels.append(label)
        where[rel] = f" (line {lineno})"
    if missing:
        raise DataSourceError(f"{len(missing)} file(s) listed in {path} do not exist: {_listed(missing)}")
    if not files:
        raise DataSourceError(f"CSV index {path} lists no images")
    keep, invalid, size = _probe_images(root, files, spec, where)
    files = [files[i] for i in keep]
    kept_labels = [labels[i] for i in keep]
    description = {
        **spec,
        "mode": spec.get("mode", "RGB"),
        "fingerprint": _listing_fingerprint({"files": files, "labels": kept_labels}),
    }
    return ImageFilesDataSource(description, root, files, torch.tensor(kept_labels, dtype=torch.int64), size, invalid)


def _listing_fingerprint(listing: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# Descriptions
# --------------------------------------------------------------------------------------------


def _resolve(path: str, base_dir: str | Path | None) -> Path:
    p = Path(path)
    return p if p.is_absolute() else Path(base_dir or ".") / p


def parse_data_source(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Validates a JSON data source's keys and value types; returns a plain copy.

    Raises:
        DataSourceError: Naming the unknown kind, unknown key, or ill-typed value.

    Example:
        >>> parse_data_source({"kind": "npz", "path": "d.npz"})
        {'kind': 'npz', 'path': 'd.npz'}
        >>> parse_data_source({"kind": "image_folder", "root": "img", "mode": "CMYK"})
        Traceback (most recent call last):
        ...
        unlearnkit.sources.data.DataSourceError: data source: 'mode' must be one of ('L', 'RGB'), got 'CMYK'
    """
    if not isinstance(spec, Mapping):
        raise DataSourceError(f"data source must be a JSON object, got {type(spec).__name__}")
    kind = spec.get("kind")
    if kind not in DATA_KINDS:
        raise DataSourceError(f"data source: unknown kind {kind!r}; expected one of {DATA_KINDS}")
    # Unknown keys are refused: a misspelt "skip_invalid" or "size" would silently change the rows.
    unknown = sorted(set(spec) - _ALLOWED_KEYS[kind])
    if unknown:
        raise DataSourceError(f"data source of kind {kind!r}: unknown key(s) {unknown}; allowed: {sorted(_ALLOWED_KEYS[kind])}")
    location = "root" if kind == "image_folder" else "path"
    for key in (location, "inputs", "labels", "fingerprint"):
        value = spec.get(key)
        if (key == location or value is not None) and (not isinstance(value, str) or not value):
            raise DataSourceError(f"data source: {key!r} must be a non-empty string, got {value!r}")
    for key in ("num_classes", "num_rows"):
        value = spec.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise DataSourceError(f"data source: {key!r} must be a positive integer, got {value!r}")
    if "mode" in spec and spec["mode"] not in IMAGE_MODES:
        raise DataSourceError(f"data source: 'mode' must be one of {IMAGE_MODES}, got {spec['mode']!r}")
    size = spec.get("size")
    if size is not None and not (
        isinstance(size, Sequence)
        and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise DataSourceError(f"data source: 'size' must be [height, width] in pixels, got {size!r}")
    if "skip_invalid" in spec and not isinstance(spec["skip_invalid"], bool):
        raise DataSourceError(f"data source: 'skip_invalid' must be true or false, got {spec['skip_invalid']!r}")
    classes = spec.get("classes")
    if classes is not None and (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)):
        raise DataSourceError(f"data source: 'classes' must be a list of folder names, got {classes!r}")
    out = json.loads(json.dumps(dict(spec)))
    if size is not None:
        out["size"] = [int(v) for v in size]
    return out


def open_data_source(
    spec: Mapping[str, Any], base_dir: str | Path | None = None, *, verify: bool = True
) -> DataSource:
    """Opens the data source a JSON description names.

    Args:
        spec: The description (see the module docstring).
        base_dir: The folder relative paths are resolved against (default: current directory).
        verify: Check the recorded ``num_rows`` and ``fingerprint``, if any (default). Turn off
            only to inspect a source that changed.

    Raises:
        DataSourceError: If the files are missing or unreadable, the arrays or images are not
            valid data, or (``verify``) the data changed since it was described.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     np.savez(f"{folder}/d.npz", x=np.zeros((4, 2)), y=np.array([0, 1, 2, 1]))
        ...     data = open_data_source({"kind": "npz", "path": "d.npz"}, folder)
        >>> len(data), data.num_classes, data.rows([3, 0])[1].tolist()
        (4, 3, [1, 0])
    """
    clean = parse_data_source(spec)
    if clean["kind"] == "npz":
        source: DataSource = _open_npz(clean, base_dir)
    elif clean["kind"] == "image_folder":
        source = _open_image_folder(clean, base_dir)
    else:
        source = _open_csv(clean, base_dir)
    if verify:
        for key, what in (("num_rows", "rows"), ("fingerprint", "fingerprint")):
            recorded = clean.get(key)
            if recorded is not None and recorded != source.description[key]:
                raise DataSourceError(
                    f"data source {_name(clean)} changed since it was described ({what}: "
                    f"{recorded} then, {source.description[key]} now): row ids recorded against it would "
                    "name other rows; restore the data, or describe it again in a new workspace"
                )
    return source


def describe_data_source(
    path: str | Path, *, kind: str | None = None, base_dir: str | Path | None = None, **options: Any
) -> dict[str, Any]:
    """Opens a data set and returns its complete JSON description (with fingerprint).

    The kind is guessed when not given: a folder is an ``image_folder``, ``*.npz`` is ``npz``,
    ``*.csv`` is ``csv``. ``path`` is stored relative to ``base_dir`` when it lies inside it,
    absolute otherwise.
    ``options`` are the kind's other keys (``inputs``, ``labels``, ``mode``, ``size``,
    ``skip_invalid``, ``num_classes``).

    Raises:
        DataSourceError: As :func:`open_data_source`, or when the kind cannot be guessed.
    """
    full = _resolve(str(path), base_dir)
    if kind is None:
        if full.is_dir():
            kind = "image_folder"
        elif full.suffix.lower() in (".npz", ".csv"):
            kind = full.suffix.lower()[1:]
        else:
            raise DataSourceError(
                f"cannot tell the kind of data source {full}: expected a folder of class sub-folders, a .npz or a .csv"
            )
    # Relative to base_dir when inside it (a workspace moves with its data), else absolute.
    stored = str(full.resolve())
    if base_dir is not None:
        with contextlib.suppress(ValueError):
            stored = full.resolve().relative_to(Path(base_dir).resolve()).as_posix()
    location = "root" if kind == "image_folder" else "path"
    return open_data_source({"kind": kind, location: stored, **options}, base_dir).to_dict()
