"""CIFAR-10: the JPEG-archive loader and its cache, the CIFAR ResNet-18, the augmentation hook of
``train_classifier`` and the pretrained specs.

Everything but the ``slow`` test runs on tiny synthetic archives with the real layout
(``cifar10-jpg/{train,test}/<class>/NNNN.jpg``) built in ``tmp_path``.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import unlearnkit.data.cifar10 as cifar10_module
from unlearnkit.components.loop import train_for_epochs
from unlearnkit.data import DataSplit, load_cifar10
from unlearnkit.data.cifar10 import CIFAR10_CLASSES, Cifar10Split, file_md5
from unlearnkit.models.pretrained import (
    DIGITS_RECIPE,
    PRETRAINED,
    build_untrained,
    load_pretrained,
)
from unlearnkit.models.resnet import CIFAR10_MEAN, CIFAR10_STD, CifarResNet18, Normalize
from unlearnkit.models.small_cnn import SmallCNN
from unlearnkit.models.training import TrainRecipe, crop_flip, train_classifier

Image = pytest.importorskip("PIL.Image")

# -- synthetic archives ---------------------------------------------------------------------------


def _jpeg(seed: int, size: int = 32) -> bytes:
    """A random-ish RGB JPEG (smooth gradients plus noise, so JPEG keeps it recognisable)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(1, 1, 3))
    ramp = np.linspace(0, 120, size)[None, :, None] + np.linspace(0, 60, size)[:, None, None]
    pixels = np.clip(base + ramp + rng.normal(0, 10, (size, size, 3)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, format="JPEG", quality=90)
    return out.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _make_archive(
    path: Path,
    *,
    per_class: tuple[int, int] = (3, 1),
    seed: int = 0,
    extra: list[tarfile.TarInfo | tuple[str, bytes]] | None = None,
    skip_class: str | None = None,
) -> dict[str, bytes]:
    """Writes a CIFAR-10-layout ``.tar.gz`` to ``path`` and returns its members' bytes by name.

    Members are added in a shuffled order (the loader must sort them itself).
    """
    members: dict[str, bytes] = {}
    for split, count in zip(("train", "test"), per_class, strict=True):
        for c, cls in enumerate(CIFAR10_CLASSES):
            if cls == skip_class:
                continue
            for i in range(count):
                members[f"cifar10-jpg/{split}/{cls}/{i:04d}.jpg"] = _jpeg(seed * 100_000 + c * 1000 + i * 7 + len(split))
    order = list(members)
    np.random.default_rng(seed).shuffle(order)
    with tarfile.open(path, "w:gz") as tar:
        for directory in ("cifar10-jpg", "cifar10-jpg/train", "cifar10-jpg/test"):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name in order:
            _add(tar, name, members[name])
        for item in extra or []:
            if isinstance(item, tarfile.TarInfo):
                tar.addfile(item)
            else:
                _add(tar, *item)
    return members


def _decoded(data: bytes) -> Tensor:
    """What the loader must produce for one JPEG: CHW float32 in [0, 1]."""
    array = np.array(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array).permute(2, 0, 1).float() / 255.0


@pytest.fixture
def archive(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    path = tmp_path / "cifar10-jpg.tar.gz"
    return path, _make_archive(path)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


# -- decoding ---------------------------------------------------------------------------------------


def test_decodes_the_layout_into_float_chw_in_class_order(
    archive: tuple[Path, dict[str, bytes]], cache: Path
) -> None:
    path, members = archive
    split = load_cifar10(path, cache_dir=cache, progress=False)
    assert isinstance(split, DataSplit) and isinstance(split, Cifar10Split)
    assert split.name == "cifar10" and split.num_classes == 10
    assert split.x_train.shape == (30, 3, 32, 32) and split.x_test.shape == (10, 3, 32, 32)
    assert split.x_train.dtype == torch.float32 and split.y_train.dtype == torch.int64
    assert split.input_shape == (3, 32, 32)
    assert float(split.x_train.min()) >= 0.0 and float(split.x_train.max()) <= 1.0
    assert split.y_train.tolist() == [c for c in range(10) for _ in range(3)]
    assert split.y_test.tolist() == list(range(10))
    # Row 3 * c + i is class c's file i, decoded exactly as Pillow decodes it.
    for c in (0, 4, 9):
        for i in range(3):
            expected = _decoded(members[f"cifar10-jpg/train/{CIFAR10_CLASSES[c]}/{i:04d}.jpg"])
            assert torch.equal(split.x_train[3 * c + i], expected)
    assert torch.equal(split.x_test[7], _decoded(members["cifar10-jpg/test/horse/0000.jpg"]))
    # The split says it is the JPEG re-encode, so results can state it.
    assert split.jpeg_reencode is True and "JPEG re-encode" in split.description
    assert split.archive_md5 == file_md5(path) and split.class_names == CIFAR10_CLASSES


def test_ignores_files_outside_the_layout(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "a.tar.gz"
    _make_archive(path, extra=[("cifar10-jpg/README.txt", b"hello"), ("other/x.jpg", _jpeg(1))])
    split = load_cifar10(path, cache_dir=cache, progress=False)
    assert split.x_train.shape[0] == 30 and split.x_test.shape[0] == 10


def test_limit_train_keeps_a_balanced_prefix_of_every_class(
    archive: tuple[Path, dict[str, bytes]], cache: Path
) -> None:
    path, _ = archive
    full = load_cifar10(path, cache_dir=cache, progress=False)
    small = load_cifar10(path, cache_dir=cache, limit_train=12, progress=False)
    assert small.y_train.tolist() == [0, 0, 1, 1] + [c for c in range(2, 10)]
    assert torch.equal(small.x_train[:2], full.x_train[:2]) and torch.equal(small.x_train[2], full.x_train[3])
    assert torch.equal(small.x_test, full.x_test)  # the test set stays whole
    assert "limited to 12 of 30" in small.description
    for bad in (0, -1, 31, 2.5, True):
        with pytest.raises(ValueError, match="limit_train"):
            load_cifar10(path, cache_dir=cache, limit_train=bad, progress=False)  # type: ignore[arg-type]


# -- the cache -----------------------------------------------------------------------------------------


def test_second_load_hits_the_cache_and_another_md5_decodes_again(
    archive: tuple[Path, dict[str, bytes]], cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = archive
    calls: list[Path] = []
    real_decode = cifar10_module.decode_archive

    def counting_decode(p: Path, **kw: object) -> dict[str, np.ndarray]:
        calls.append(Path(p))
        return real_decode(p, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(cifar10_module, "decode_archive", counting_decode)
    first = load_cifar10(path, cache_dir=cache, progress=False)
    files = sorted(cache.iterdir())
    assert [f.name for f in files] == [f"cifar10-jpg-{file_md5(path)}-v1.npz"]
    with np.load(files[0], allow_pickle=False) as npz:  # uint8 HWC storage, nothing pickled
        assert npz["x_train"].dtype == np.uint8 and npz["x_train"].shape == (30, 32, 32, 3)
    second = load_cifar10(path, cache_dir=cache, progress=False)
    assert len(calls) == 1  # the second load read the cache
    assert torch.equal(first.x_train, second.x_train) and torch.equal(first.y_test, second.y_test)

    other = tmp_path / "other" / "cifar10-jpg.tar.gz"
    other.parent.mkdir()
    _make_archive(other, seed=1)
    assert file_md5(other) != file_md5(path)
    third = load_cifar10(other, cache_dir=cache, progress=False)
    assert len(calls) == 2 and len(list(cache.iterdir())) == 2
    assert not torch.equal(third.x_train, first.x_train)


def test_an_unusable_cache_file_is_decoded_again(
    archive: tuple[Path, dict[str, bytes]], cache: Path
) -> None:
    path, _ = archive
    first = load_cifar10(path, cache_dir=cache, progress=False)
    (cached,) = cache.iterdir()
    good = cached.read_bytes()
    middle = len(good) // 2  # inside x_train's bytes: the zip member's CRC fails
    for damaged in (b"not an npz", good[:middle] + bytes([good[middle] ^ 0x55]) + good[middle + 1 :]):
        cached.write_bytes(damaged)
        with pytest.warns(UserWarning, match="unusable"):
            again = load_cifar10(path, cache_dir=cache, progress=False)
        assert torch.equal(again.x_train, first.x_train)
    with np.load(cached, allow_pickle=False) as npz:  # rewritten
        assert npz["y_train"].shape == (30,)


def test_the_default_cache_is_under_the_unlearnkit_cache_dir(
    archive: tuple[Path, dict[str, bytes]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = archive
    monkeypatch.setenv("UNLEARNKIT_CACHE_DIR", str(tmp_path / "kit-cache"))
    load_cifar10(path, progress=False)
    assert [p.name for p in (tmp_path / "kit-cache" / "data").iterdir()] == [f"cifar10-jpg-{file_md5(path)}-v1.npz"]


# -- refusals ---------------------------------------------------------------------------------------


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("cifar10-jpg/train/cat/../../../../evil.jpg", b"x"), r"'\.\.'"),
        (("../cifar10-jpg/train/cat/0100.jpg", b"x"), r"'\.\.'"),
        (("/etc/cifar10-jpg/train/cat/0100.jpg", b"x"), "absolute"),
        (_link("cifar10-jpg/train/cat/0100.jpg", "/etc/passwd", tarfile.SYMTYPE), "link"),
        (_link("cifar10-jpg/train/cat/0101.jpg", "cifar10-jpg/train/cat/0000.jpg", tarfile.LNKTYPE), "link"),
        (_link("cifar10-jpg/train/cat/fifo", "", tarfile.FIFOTYPE), "not a regular file"),
    ],
)
def test_unsafe_members_are_refused_and_nothing_is_cached(
    tmp_path: Path, cache: Path, extra: tarfile.TarInfo | tuple[str, bytes], message: str
) -> None:
    path = tmp_path / "evil.tar.gz"
    _make_archive(path, extra=[extra])
    with pytest.raises(ValueError, match=message):
        load_cifar10(path, cache_dir=cache, progress=False)
    assert not cache.exists() or list(cache.iterdir()) == []
    assert not (tmp_path / "evil.jpg").exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip-1/3", "flip-1/2", "flip-2/3", "flip-crc"])
def test_a_corrupt_archive_is_a_clear_error_and_leaves_no_cache(
    archive: tuple[Path, dict[str, bytes]], cache: Path, damage: str
) -> None:
    path, _ = archive
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"this is not a gzip file at all" * 10)
    else:
        # One flipped byte: an inflate error, a broken JPEG or, at the latest, the gzip CRC
        # (tarfile's own stream reader does not check it; a flip could pass unnoticed).
        position = {"flip-1/3": len(data) // 3, "flip-1/2": len(data) // 2,
                    "flip-2/3": 2 * len(data) // 3, "flip-crc": len(data) - 6}[damage]
        path.write_bytes(data[:position] + bytes([data[position] ^ 0x55]) + data[position + 1 :])
    with pytest.raises(ValueError, match="not a readable"):
        load_cifar10(path, cache_dir=cache, progress=False)
    assert not cache.exists() or list(cache.iterdir()) == []  # no cache file, no temporary left


def test_bad_images_and_incomplete_layouts_are_refused(tmp_path: Path, cache: Path) -> None:
    cases = {
        "not-jpeg": ({"extra": [("cifar10-jpg/train/cat/0100.jpg", b"\xff\xd8 not really")]}, "not a readable JPEG"),
        "size": ({"extra": [("cifar10-jpg/train/cat/0100.jpg", _jpeg(3, size=16))]}, "16x16, expected 32x32"),
        "class": ({"extra": [("cifar10-jpg/train/unicorn/0000.jpg", _jpeg(3))]}, "unknown class folder"),
        "missing": ({"skip_class": "frog"}, r"no images of \['frog'\]"),
        "twice": ({"extra": [("cifar10-jpg/train/cat/0000.jpg", _jpeg(4))]}, "appears twice"),
    }
    for name, (kwargs, message) in cases.items():
        path = tmp_path / f"{name}.tar.gz"
        _make_archive(path, **kwargs)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=message):
            load_cifar10(path, cache_dir=cache, progress=False)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_a_missing_archive_names_both_places_looked_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(FileNotFoundError, match="not found at"):
        load_cifar10(tmp_path / "absent.tar.gz")
    shared = tmp_path / "shared" / "data"
    monkeypatch.setattr(cifar10_module, "_shared_data_dirs", lambda: [shared])
    env_dir = tmp_path / "env-data"
    env_dir.mkdir()
    monkeypatch.setenv("UNLEARNKIT_DATA_DIR", str(env_dir))
    with pytest.raises(FileNotFoundError) as err:
        load_cifar10()
    text = str(err.value)
    assert str(env_dir / "cifar10-jpg.tar.gz") in text and str(shared / "cifar10-jpg.tar.gz") in text
    assert "UNLEARNKIT_DATA_DIR" in text
    monkeypatch.delenv("UNLEARNKIT_DATA_DIR")
    with pytest.raises(FileNotFoundError, match=r"UNLEARNKIT_DATA_DIR \(not set\)"):
        load_cifar10()


def test_the_archive_is_found_in_the_data_dir_and_in_shared_data(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared" / "data"
    shared.mkdir(parents=True)
    _make_archive(shared / "cifar10-jpg.tar.gz")
    monkeypatch.setattr(cifar10_module, "_shared_data_dirs", lambda: [shared])
    monkeypatch.setenv("UNLEARNKIT_DATA_DIR", str(tmp_path / "empty"))
    assert load_cifar10(cache_dir=cache, progress=False).archive_md5 == file_md5(shared / "cifar10-jpg.tar.gz")
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    _make_archive(env_dir / "cifar10-jpg.tar.gz", seed=2)
    monkeypatch.setenv("UNLEARNKIT_DATA_DIR", str(env_dir))
    assert load_cifar10(cache_dir=cache, progress=False).archive_md5 == file_md5(env_dir / "cifar10-jpg.tar.gz")


# -- the ResNet ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "params"), [(16, 701_466), (64, 11_173_962)])
def test_resnet18_shapes_and_parameter_counts(width: int, params: int) -> None:
    model = CifarResNet18(10, width=width)
    assert sum(p.numel() for p in model.parameters()) == params
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
        assert model.features(torch.rand(2, 3, 32, 32)).shape == (2, 8 * width)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].kernel_size == (3, 3) and convs[0].stride == (1, 1)  # 3x3 stem
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())  # no max-pool
    blocks = [m for m in model.modules() if type(m).__name__ == "BasicBlock"]
    assert len(blocks) == 8
    assert [b.conv1.out_channels for b in blocks] == [width, width, 2 * width, 2 * width,
                                                       4 * width, 4 * width, 8 * width, 8 * width]
    assert isinstance(list(model.modules())[-1], nn.Linear) and model.head.out_features == 10


def test_normalize_is_the_first_layer_and_inputs_stay_in_unit_range() -> None:
    model = CifarResNet18(width=4).eval()
    assert isinstance(model.norm, Normalize)
    assert list(model.children())[0] is model.norm
    assert model.norm.mean.flatten().tolist() == pytest.approx(CIFAR10_MEAN)
    assert model.norm.std.flatten().tolist() == pytest.approx(CIFAR10_STD)
    assert "norm.mean" in model.state_dict() and not any("norm" in n for n, _ in model.named_parameters())
    raw = CifarResNet18(width=4, normalize=False).eval()
    assert isinstance(raw.norm, nn.Identity)
    missing, unexpected = raw.load_state_dict(model.state_dict(), strict=False)
    assert missing == [] and sorted(unexpected) == ["norm.mean", "norm.std"]
    x = torch.rand(3, 3, 32, 32)
    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), raw((x - mean) / std))
    x.requires_grad_(True)  # attacks need input gradients
    model(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="positive"):
        Normalize((0.5,), (0.0,))


def test_channels_last_changes_speed_not_results() -> None:
    torch.manual_seed(0)
    model = CifarResNet18(width=8).eval()
    plain = CifarResNet18(width=8, channels_last=False).eval()
    plain.load_state_dict(model.state_dict())
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x), rtol=1e-4, atol=1e-5)
    assert all(p.is_contiguous() for p in model.parameters())  # weights keep their layout


# -- augmentation and the training recipe -------------------------------------------------------------


def test_crop_flip_is_seeded_and_crops_the_padded_image() -> None:
    x = torch.rand(64, 3, 8, 8)
    out = crop_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.is_contiguous()
    assert torch.equal(out, crop_flip(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(out, crop_flip(x, torch.Generator().manual_seed(1)))
    padded = nn.functional.pad(x, (4, 4, 4, 4))
    flipped = 0
    for i in range(64):  # each output is one 8x8 window of the padded image, maybe mirrored
        windows = [padded[i, :, r : r + 8, c : c + 8] for r in range(9) for c in range(9)]
        plain = any(torch.equal(out[i], w) for w in windows)
        mirrored = any(torch.equal(out[i], w.flip(-1)) for w in windows)
        assert plain or mirrored
        flipped += mirrored and not plain
    assert 10 < flipped < 54  # about half
    unpadded = crop_flip(x, torch.Generator().manual_seed(0), pad=0)  # flips only
    assert all(torch.equal(unpadded[i], x[i]) or torch.equal(unpadded[i], x[i].flip(-1)) for i in range(64))


def _original_train_classifier(model: nn.Module, inputs: Tensor, labels: Tensor, recipe: TrainRecipe) -> nn.Module:
    """``train_classifier`` as it was before the optimizer/augment options (CPU only)."""
    generator = torch.Generator().manual_seed(recipe.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps_per_epoch = -(-inputs.shape[0] // recipe.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.epochs * steps_per_epoch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        train_for_epochs(
            model, optimizer, inputs, labels, epochs=recipe.epochs, batch_size=recipe.batch_size,
            generator=generator, schedule=schedule, schedule_every="step",
        )
    return model.eval()


def _seeded_cnn() -> SmallCNN:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return SmallCNN(1, 10, image_size=8)


def test_without_augmentation_training_is_bit_identical_to_before(digits: DataSplit) -> None:
    recipe = TrainRecipe(epochs=2, batch_size=32, lr=5e-3, seed=0)
    x, y = digits.x_train[:200], digits.y_train[:200]
    before = _original_train_classifier(_seeded_cnn(), x, y, recipe)
    now = train_classifier(_seeded_cnn(), x, y, recipe, augment=None)
    assert all(torch.equal(a, b) for a, b in zip(before.state_dict().values(), now.state_dict().values(), strict=True))


def test_the_augmentation_hook_sees_training_batches_only(digits: DataSplit) -> None:
    seen: list[int] = []

    def hook(batch: Tensor, generator: torch.Generator) -> Tensor:
        assert isinstance(generator, torch.Generator)
        seen.append(batch.shape[0])
        return batch + 0.01 * torch.rand(batch.shape, generator=generator)

    recipe = TrainRecipe(epochs=2, batch_size=32, lr=5e-3, seed=0)
    x, y = digits.x_train[:100], digits.y_train[:100]
    model = train_classifier(_seeded_cnn(), x, y, recipe, augment=hook)
    assert seen == [32, 32, 32, 4] * 2 and not model.training
    assert type(model) is SmallCNN  # the caller's model, not a wrapper
    again = train_classifier(_seeded_cnn(), x, y, recipe, augment=hook)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))
    plain = train_classifier(_seeded_cnn(), x, y, recipe)
    assert not all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), plain.state_dict().values(), strict=True))


def test_recipe_options_sgd_and_named_augmentation(digits: DataSplit) -> None:
    legacy = TrainRecipe()
    assert sorted(legacy.as_dict()) == ["batch_size", "epochs", "lr", "seed", "weight_decay"]
    assert DIGITS_RECIPE.fingerprint() == "70fc1caed2dd"  # the cached digits model's key
    # The safetensors metadata of a cached model is json.dumps(as_dict()): the same bytes as the
    # asdict() of the five-field recipe, so the digits model's file and sha256 are unchanged.
    assert json.dumps(DIGITS_RECIPE.as_dict()) == (
        '{"epochs": 30, "batch_size": 64, "lr": 0.002, "weight_decay": 0.0001, "seed": 0}'
    )
    sgd = TrainRecipe(optimizer="sgd", momentum=0.9, augment="crop-flip")
    assert sgd.as_dict()["optimizer"] == "sgd" and sgd.as_dict()["augment"] == "crop-flip"
    assert len({legacy.fingerprint(), sgd.fingerprint(), replace(sgd, momentum=0.5).fingerprint(),
                replace(sgd, augment=None).fingerprint()}) == 4
    with pytest.raises(ValueError, match="optimizer"):
        TrainRecipe(optimizer="lbfgs")
    with pytest.raises(ValueError, match="augment"):
        TrainRecipe(augment="mixup")
    x, y = digits.x_train[:64], digits.y_train[:64]
    recipe = TrainRecipe(epochs=1, batch_size=32, lr=0.05, optimizer="sgd", augment="crop-flip")
    a = train_classifier(_seeded_cnn(), x, y, recipe)
    b = train_classifier(_seeded_cnn(), x, y, recipe)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


# -- the pretrained specs -----------------------------------------------------------------------------


def test_cifar_specs_exist_and_older_fingerprints_are_unchanged() -> None:
    assert PRETRAINED["digits"].fingerprint() == "digits-smallcnn-70fc1caed2dd"
    assert PRETRAINED["mnist"].fingerprint() == "mnist-smallcnn-4fce070f1aba"
    narrow, full = PRETRAINED["cifar10"], PRETRAINED["cifar10-resnet18-full"]
    assert narrow.load_data is load_cifar10 and full.load_data is load_cifar10
    narrow_model, full_model = build_untrained(narrow), build_untrained(full)
    assert isinstance(narrow_model, CifarResNet18) and narrow_model.width == 16
    assert isinstance(full_model, CifarResNet18) and full_model.width == 64
    assert isinstance(narrow_model.norm, Normalize) and isinstance(full_model.norm, Normalize)
    # The full spec is PROTOCOL section 1's recipe.
    assert (full.recipe.epochs, full.recipe.batch_size, full.recipe.lr, full.recipe.weight_decay) == (200, 128, 0.01, 5e-4)
    assert (full.recipe.optimizer, full.recipe.momentum, full.recipe.augment) == ("sgd", 0.9, "crop-flip")
    assert narrow.recipe.optimizer == "sgd" and narrow.recipe.augment == "crop-flip" and narrow.recipe.epochs <= 20
    assert narrow.fingerprint() != full.fingerprint()


def test_a_cifar_spec_trains_caches_and_reloads(
    archive: tuple[Path, dict[str, bytes]], cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = archive
    spec = replace(
        PRETRAINED["cifar10"],
        load_data=lambda: load_cifar10(path, cache_dir=cache, progress=False),
        recipe=replace(PRETRAINED["cifar10"].recipe, epochs=1, batch_size=16),
    )
    monkeypatch.setitem(PRETRAINED, "cifar10", spec)
    first = load_pretrained("cifar10", directory=tmp_path / "models")
    second = load_pretrained("cifar10", directory=tmp_path / "models")
    assert not first.from_cache and second.from_cache and first.sha256 == second.sha256
    assert first.path.name.startswith("cifar10-resnet18w16-")
    assert isinstance(second.model, CifarResNet18) and second.data.name == "cifar10"
    record = json.loads(first.path.with_suffix(".json").read_text())
    assert "JPEG re-encode" in record["data_description"] and record["recipe"]["augment"] == "crop-flip"
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values(), strict=True))


# -- the real archive -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_real_archive_loads() -> None:
    try:
        split = load_cifar10()
    except FileNotFoundError:
        pytest.skip("cifar10-jpg.tar.gz is not in $UNLEARNKIT_DATA_DIR or ../shared/data")
    assert split.x_train.shape == (50000, 3, 32, 32) and split.x_test.shape == (10000, 3, 32, 32)
    assert split.num_classes == 10 and split.jpeg_reencode
    assert torch.bincount(split.y_train).tolist() == [5000] * 10
    assert torch.bincount(split.y_test).tolist() == [1000] * 10
    assert 0.0 <= float(split.x_train.min()) and float(split.x_train.max()) <= 1.0
    # The channel means of the re-encode are close to the official ones (the recipe's mean).
    torch.testing.assert_close(split.x_train.mean(dim=(0, 2, 3)), torch.tensor(CIFAR10_MEAN), atol=2e-3, rtol=0)
    if split.archive_md5 == cifar10_module.KNOWN_MD5:
        assert split.description == cifar10_module.DESCRIPTION
