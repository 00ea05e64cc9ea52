"""Tests of the decode-once image store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from cortexcl.data import images as images_module
from cortexcl.data.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageStore,
    default_cache_dir,
    normalize,
)
from cortexcl.errors import InputError

SIZE = 24


@pytest.fixture
def image_files(tmp_path) -> list[Path]:
    """Seven small images in several modes and shapes (one not square)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    paths = []
    for i in range(4):
        pixels = rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
        paths.append(folder / f"rgb-{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    rgba = rng.integers(0, 256, size=(30, 30, 4), dtype=np.uint8)
    rgba[..., 3] = 255  # opaque: transparency has its own test
    paths.append(folder / "rgba.png")
    Image.fromarray(rgba, "RGBA").save(paths[-1])
    paths.append(folder / "gray.png")
    Image.fromarray(rng.integers(0, 256, size=(48, 48), dtype=np.uint8), "L").save(paths[-1])
    paths.append(folder / "wide-palette.png")
    wide = Image.fromarray(rng.integers(0, 256, size=(20, 50, 3), dtype=np.uint8))
    wide.convert("P").save(paths[-1])
    return paths


def reference(path: Path, size: int = SIZE) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))


def test_array_matches_direct_pil_and_torchvision_resize(image_files, tmp_path):
    store = ImageStore(image_files, size=SIZE, cache_dir=tmp_path / "cache", progress=False)
    array = store.array()
    assert len(store) == 7 and array.shape == (7, SIZE, SIZE, 3) and array.dtype == np.uint8
    assert not array.flags.writeable
    resize = transforms.Resize((SIZE, SIZE), antialias=True)
    for i, path in enumerate(image_files):
        np.testing.assert_array_equal(array[i], reference(path))
        with Image.open(path) as image:
            np.testing.assert_array_equal(array[i], np.asarray(resize(image.convert("RGB"))))


def test_tensor_matches_torchvision_pipeline(image_files, tmp_path):
    store = ImageStore(image_files, size=SIZE, cache_dir=tmp_path / "cache", progress=False)
    pipeline = transforms.Compose(
        [
            transforms.Resize((SIZE, SIZE), antialias=True),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    indices = [5, 0, 3, 3]
    batch = store.tensor(indices)
    assert batch.shape == (4, 3, SIZE, SIZE) and batch.dtype == torch.float32
    for row, i in enumerate(indices):
        with Image.open(image_files[i]) as image:
            expected = pipeline(image.convert("RGB"))
        torch.testing.assert_close(batch[row], expected, rtol=0, atol=1e-6)
    raw = store.uint8(indices)
    assert raw.dtype == torch.uint8 and raw.shape == (4, 3, SIZE, SIZE)
    np.testing.assert_array_equal(raw[1].permute(1, 2, 0).numpy(), reference(image_files[0]))


def test_normalize_matches_torchvision_normalize():
    batch = torch.randint(0, 256, (3, 3, 5, 5), dtype=torch.uint8)
    expected = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)(batch.float() / 255)
    torch.testing.assert_close(normalize(batch), expected, rtol=0, atol=1e-6)
    assert batch.dtype == torch.uint8
    with pytest.raises(ValueError, match="uint8"):
        normalize(batch.float())


def test_batches_cover_indices_in_order(image_files, tmp_path):
    store = ImageStore(image_files, size=SIZE, cache_dir=tmp_path / "cache", progress=False)
    indices = np.array([6, 2, 4, 0, 1])
    batches = list(store.batches(indices, batch_size=2))
    assert [b.shape[0] for b in batches] == [2, 2, 1]
    torch.testing.assert_close(torch.cat(batches), store.tensor(indices), rtol=0, atol=0)
    with pytest.raises(IndexError):
        store.uint8([7])


def test_cache_is_built_once_and_reused(image_files, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = ImageStore(image_files, size=SIZE, cache_dir=cache, progress=False)
    expected = np.array(first.array())
    assert sorted(p.name for p in cache.iterdir()) == [f"{first.key}.npy"]

    def no_decoding(path, size, fit):
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(images_module, "_decode_image", no_decoding)
    second = ImageStore(list(image_files), size=SIZE, cache_dir=cache, progress=False)
    assert second.key == first.key
    np.testing.assert_array_equal(second.array(), expected)
    # another size is another cache, and needs decoding
    with pytest.raises(AssertionError, match="decoded"):
        ImageStore(image_files, size=SIZE + 1, cache_dir=cache, progress=False).array()
    assert sorted(p.name for p in cache.iterdir()) == [f"{first.key}.npy"]


def test_default_cache_location(image_files, monkeypatch, tmp_path):
    monkeypatch.setenv("CORTEXCL_CACHE", str(tmp_path / "env-cache"))
    assert default_cache_dir() == tmp_path / "env-cache"
    store = ImageStore(image_files[:2], size=8, progress=False)
    store.array()
    assert store.cache_path == tmp_path / "env-cache" / "images" / f"{store.key}.npy"
    assert store.cache_path.is_file()
    monkeypatch.delenv("CORTEXCL_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "cortexcl"


def test_key_depends_on_content_names_order_and_size(image_files, tmp_path):
    def key(paths, size=SIZE):
        return ImageStore(paths, size=size, cache_dir=tmp_path, progress=False).key

    base = key(image_files)
    assert key(image_files) == base
    assert key(image_files, size=SIZE + 1) != base
    assert key(image_files[::-1]) != base
    # a copy elsewhere with the same names and bytes shares the key (the cache is relocatable)
    copy_dir = tmp_path / "copy"
    copy_dir.mkdir()
    copies = []
    for path in image_files:
        copies.append(copy_dir / path.name)
        copies[-1].write_bytes(path.read_bytes())
    assert key(copies) == base
    # same name and byte size, one byte of content changed
    data = bytearray(copies[2].read_bytes())
    data[-1] ^= 0xFF
    copies[2].write_bytes(bytes(data))
    assert copies[2].stat().st_size == image_files[2].stat().st_size
    assert key(copies) != base
    # same content under another name
    renamed = copy_dir / "renamed.png"
    renamed.write_bytes(image_files[0].read_bytes())
    assert key([renamed, *image_files[1:]]) != base


@pytest.mark.parametrize("damage", ["truncated", "not an image", "bad chunk"])
def test_corrupt_image_raises_and_writes_nothing(image_files, tmp_path, damage):
    victim = image_files[3]
    data = victim.read_bytes()
    victim.write_bytes(
        {
            "truncated": data[: len(data) // 2],
            "not an image": b"hello, this is text",
            "bad chunk": data[:40] + bytes(b ^ 0x5A for b in data[40:80]) + data[80:],
        }[damage]
    )
    cache = tmp_path / "cache"
    store = ImageStore(image_files, size=SIZE, cache_dir=cache, workers=2, progress=False)
    with pytest.raises(InputError, match="rgb-3.png: cannot decode image") as error:
        store.array()
    assert "\n" not in str(error.value)
    assert list(cache.iterdir()) == []


def test_interrupted_build_leaves_no_cache(image_files, tmp_path, monkeypatch):
    real_decode = images_module._decode_image

    def interrupted(path, size, fit):
        if path.name == "gray.png":
            raise KeyboardInterrupt
        return real_decode(path, size, fit)

    monkeypatch.setattr(images_module, "_decode_image", interrupted)
    cache = tmp_path / "cache"
    store = ImageStore(image_files, size=SIZE, cache_dir=cache, workers=1, progress=False)
    with pytest.raises(KeyboardInterrupt):
        store.array()
    assert list(cache.iterdir()) == []
    monkeypatch.setattr(images_module, "_decode_image", real_decode)
    np.testing.assert_array_equal(store.array()[5], reference(image_files[5]))


def test_damaged_cache_file_is_rebuilt(image_files, tmp_path):
    cache = tmp_path / "cache"
    store = ImageStore(image_files, size=SIZE, cache_dir=cache, progress=False)
    cache.mkdir()
    np.save(store.cache_path, np.zeros((2, 2), dtype=np.uint8))
    np.testing.assert_array_equal(store.array()[0], reference(image_files[0]))


def test_bad_arguments(image_files, tmp_path):
    with pytest.raises(InputError, match="no image files"):
        ImageStore([], cache_dir=tmp_path)
    with pytest.raises(InputError, match="missing.png: image file not found"):
        ImageStore([*image_files, tmp_path / "missing.png"], cache_dir=tmp_path)
    with pytest.raises(InputError, match="image size"):
        ImageStore(image_files, size=0, cache_dir=tmp_path)
    store = ImageStore(image_files, size=SIZE, cache_dir=tmp_path, progress=False)
    with pytest.raises(InputError, match="batch size"):
        next(store.batches([0], batch_size=0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_match_cpu(image_files, tmp_path):
    store = ImageStore(image_files, size=SIZE, cache_dir=tmp_path / "cache", progress=False)
    indices = [6, 1, 1, 3]
    on_gpu = store.tensor(indices, device="cuda")
    assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.float32
    torch.testing.assert_close(on_gpu.cpu(), store.tensor(indices), rtol=0, atol=1e-6)
    gpu_batches = torch.cat(list(store.batches(indices, 3, device="cuda"))).cpu()
    torch.testing.assert_close(gpu_batches, store.tensor(indices), rtol=0, atol=1e-6)


def test_crop_fit_keeps_the_aspect_ratio(image_files, tmp_path):
    stretched = ImageStore(image_files, size=SIZE, cache_dir=tmp_path / "cache", progress=False)
    cropped = ImageStore(image_files, size=SIZE, cache_dir=tmp_path / "cache", progress=False,
                         fit="crop")
    assert cropped.key != stretched.key
    crop = transforms.Compose([transforms.Resize(SIZE), transforms.CenterCrop(SIZE)])
    for i, path in enumerate(image_files):
        with Image.open(path) as image:
            expected = np.asarray(crop(image.convert("RGB")))
        np.testing.assert_array_equal(cropped.array()[i], expected)
    wide = image_files.index(next(p for p in image_files if p.name.startswith("wide")))
    assert not np.array_equal(cropped.array()[wide], stretched.array()[wide])
    with pytest.raises(InputError, match="image fit"):
        ImageStore(image_files, size=SIZE, fit="pad")


def _grey_picture() -> np.ndarray:
    """A 16 × 16 8-bit grey picture whose mean grey is about 155."""
    return np.random.default_rng(3).integers(110, 201, size=(16, 16)).astype(np.uint8)


def _save(path: Path, image: Image.Image, **options) -> Path:
    image.save(path, **options)
    return path


@pytest.mark.parametrize("mode", ["L", "I;16", "I", "F", "P", "LA", "RGBA", "RGB"])
def test_every_mode_decodes_to_the_picture_a_viewer_shows(tmp_path, mode):
    grey = _grey_picture()
    if mode == "I;16":  # a 16-bit greyscale PNG of the same picture
        wide = grey.astype(np.uint16) * 257
        image, name = Image.fromarray(wide), "grey16.png"
    elif mode == "I":
        image, name = Image.fromarray(grey.astype(np.int32) * 257), "grey32.tif"
    elif mode == "F":
        image, name = Image.fromarray(grey.astype(np.float32) / 255), "float.tif"
    elif mode == "P":
        image, name = Image.fromarray(grey, "L").convert("P"), "palette.png"
    elif mode in ("LA", "RGBA"):  # opaque alpha: the picture itself
        image = Image.fromarray(grey, "L").convert(mode)
        name = f"{mode}.png"
    else:
        image, name = Image.fromarray(grey, "L").convert(mode), f"{mode}.png"
    path = _save(tmp_path / name, image)
    with Image.open(path) as opened:
        assert opened.mode == mode or (mode, opened.mode) == ("I;16", "I")  # older Pillow
    decoded = images_module._decode_image(path, 16)
    expected = np.repeat(grey[..., None], 3, axis=2)
    assert np.abs(decoded.astype(int) - expected).max() <= 1, mode
    assert abs(decoded.mean() - grey.mean()) < 0.5


def test_transparency_is_composited_over_white(tmp_path):
    rgb = np.random.default_rng(4).integers(0, 256, size=(8, 8, 3)).astype(np.uint8)
    alpha = np.tile(np.array([0, 64, 128, 255], dtype=np.uint8), (8, 2))
    path = _save(tmp_path / "rgba.png", Image.fromarray(np.dstack([rgb, alpha]), "RGBA"))
    decoded = images_module._decode_image(path, 8).astype(float)
    a = alpha[..., None] / 255.0
    np.testing.assert_allclose(decoded, a * rgb + (1 - a) * 255, atol=1)
    assert (decoded[alpha == 0] == 255).all()  # fully transparent pixels are white


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((10, 20, 3), dtype=np.uint8)
    pixels[:, :10] = 255  # left half white
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    path = _save(tmp_path / "turned.png", image, exif=exif)
    with Image.open(path) as opened:
        shown = np.asarray(images_module.to_rgb8(opened))
    assert shown.shape == (20, 10, 3)
    assert (shown[:10] == 255).all() and (shown[10:] == 0).all()  # white on top


@pytest.mark.parametrize("values", [np.full((4, 4), 2.0, np.float32),
                                    np.full((4, 4), np.nan, np.float32)])
def test_float_image_outside_unit_range_is_refused(tmp_path, values):
    path = _save(tmp_path / "bad.tif", Image.fromarray(values))
    with pytest.raises(InputError, match=r"bad\.tif: cannot decode image \(float image"):
        images_module._decode_image(path, 4)
