"""`prebake.transforms.bicubic_resize` against the real Pillow: 13.0 (installed) for rule 13, 12.3
(a subprocess, tests/reference/pillow12.py) for rule 12, bit for bit, on noise (the worst case for rounding)
and natural frames, from 1 x 1 to 3840 x 2160."""

from __future__ import annotations

import numpy as np
import PIL
import pytest
import torch
from helpers.stores import REAL_SAV, REAL_VIDEO
from PIL import Image
from reference import mp4_frames
from reference.pillow12 import resize_with_pillow12

from prebake.transforms import bicubic_resize, torch_bicubic, vertical_first

# (width, height) of the inputs: tiny, odd, near-square, portrait and landscape (SA-V's sizes
# among them), and over 100 times taller than wide (Pillow 12's special case) or wider than tall.
INPUTS = [
    (1, 1), (1, 7), (7, 1), (2, 3), (3, 2), (5, 5), (53, 37), (37, 53), (101, 100), (100, 101),
    (2, 301), (3, 500), (500, 3), (480, 848), (848, 480), (1280, 720), (1401, 1037),
]  # fmt: skip


def targets(width: int, height: int) -> list[tuple[int, int]]:
    """Output sizes for one input: the two reference sizes, down, up, mixed, one axis kept."""
    return [
        (1024, 1024),
        (448, 448),
        (1, 1),
        (width, height),
        (width, max(1, height // 2)),
        (2 * width + 1, height),
        (max(1, width // 3), 2 * height + 1),
        (width + 1, height + 1),
        (max(1, width - 1), max(1, height - 1)),
        (max(1, width // 7), max(1, height // 5)),
    ]


CASES = [(size, out) for size in INPUTS for out in targets(*size)]


def noise(width: int, height: int, frames: int = 1, seed: int = 0) -> np.ndarray:
    """uint8 (frames, height, width, 3) uniform noise."""
    rng = np.random.default_rng([width, height, frames, seed])
    return rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def pillow13(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    assert PIL.__version__.startswith("13.0."), PIL.__version__  # what rule 13 is proven against
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))


def assert_same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    wrong = got != want
    if wrong.any():
        diff = np.abs(got.astype(int) - want.astype(int)).max()
        pytest.fail(f"{what}: {wrong.sum()} of {wrong.size} values differ (up to {diff})")


@pytest.mark.parametrize("size", INPUTS, ids=[f"{w}x{h}" for w, h in INPUTS])
def test_noise_equals_pillow13(size: tuple[int, int]) -> None:
    images = noise(*size, frames=2)
    for out in targets(*size):
        got = bicubic_resize(torch.from_numpy(images), out).numpy()
        for i, image in enumerate(images):
            assert_same(got[i], pillow13(image, out), f"{size} -> {out}, frame {i}")


def test_the_size_matrix_takes_both_pass_orders() -> None:
    """Both orders, and their difference between the rules, are exercised (else the matrix is weak)."""
    both_passes = [(i, o) for i, o in CASES if i[0] != o[0] and i[1] != o[1]]
    for rule in (13, 12):
        orders = {vertical_first(i, o, rule) for i, o in both_passes}
        assert orders == {True, False}, rule
    assert any(vertical_first(i, o, 13) != vertical_first(i, o, 12) for i, o in both_passes)


def test_noise_equals_pillow12() -> None:
    """Rule 12 against the real Pillow 12, every case of the matrix in one subprocess."""
    images = [noise(*size)[0] for size, _ in CASES]
    sizes = [out for _, out in CASES]
    wanted = resize_with_pillow12(images, sizes)
    differs = 0
    for image, (size, out), want in zip(images, CASES, wanted, strict=True):
        got = bicubic_resize(torch.from_numpy(image)[None], out, pillow=12)[0].numpy()
        assert_same(got, want, f"rule 12: {size} -> {out}")
        differs += not np.array_equal(want, pillow13(image, out))
    assert differs > 0  # the rules do differ on this matrix: the test can tell them apart


def test_4k_equals_pillow13() -> None:
    image = noise(3840, 2160)
    for out in [(1024, 1024), (448, 448)]:
        got = bicubic_resize(torch.from_numpy(image), out)[0].numpy()
        assert_same(got, pillow13(image[0], out), f"3840x2160 -> {out}")


def natural_frames() -> list[np.ndarray]:
    """Decoded frames of the real clips (landscape 1280 x 720 and a portrait SA-V video)."""
    clips = [REAL_VIDEO, REAL_SAV / "sav_000" / "sav_000001.mp4"]
    present = [clip for clip in clips if clip.is_file()]
    if not present:
        pytest.skip("the real video fixtures in ../shared/fixtures are absent")
    return [np.array(frame) for clip in present for frame in mp4_frames(clip, [0, 4, 40]).values()]


NATURAL_SIZES = [(1024, 1024), (448, 448), (320, 180), (1500, 900)]


def test_natural_frames_equal_pillow13_and_pillow12() -> None:
    frames = natural_frames()
    cases = [(frame, out) for frame in frames for out in NATURAL_SIZES]
    wanted12 = resize_with_pillow12([frame for frame, _ in cases], [out for _, out in cases])
    for (frame, out), want12 in zip(cases, wanted12, strict=True):
        batch = torch.from_numpy(frame)[None]
        what = f"{frame.shape[1]}x{frame.shape[0]} -> {out}"
        assert_same(bicubic_resize(batch, out)[0].numpy(), pillow13(frame, out), what)
        assert_same(bicubic_resize(batch, out, 12)[0].numpy(), want12, f"rule 12: {what}")


@pytest.mark.parametrize("chunk_bytes", [1, 3000, 1 << 28])
@pytest.mark.parametrize("block_bytes", [1, 700, 20_000, 1 << 24])
def test_any_chunking_and_blocking_gives_pillows_result(
    monkeypatch: pytest.MonkeyPatch, chunk_bytes: int, block_bytes: int
) -> None:
    """Frames in chunks (N > chunk) and blocks of columns or of several frames, partial last ones
    included: the path a GPU takes (many frames per block) is the CPU's with a larger budget."""
    monkeypatch.setattr(torch_bicubic, "CHUNK_BYTES", chunk_bytes)
    monkeypatch.setitem(torch_bicubic.CPU_BLOCK_BYTES, "horizontal", block_bytes)
    monkeypatch.setitem(torch_bicubic.CPU_BLOCK_BYTES, "vertical", block_bytes)
    images = noise(37, 29, frames=7)
    for out in [(23, 19), (50, 11), (9, 61)]:
        got = bicubic_resize(torch.from_numpy(images), out).numpy()
        for i, image in enumerate(images):
            assert_same(got[i], pillow13(image, out), f"{out}, frame {i}")


def test_strided_and_empty_batches() -> None:
    images = noise(64, 48, frames=4)
    for view in [torch.from_numpy(images)[::2, :, 1::2], torch.from_numpy(images).transpose(1, 2)]:
        assert not view.is_contiguous()
        expected = [pillow13(np.ascontiguousarray(image), (30, 20)) for image in view.numpy()]
        got = bicubic_resize(view, (30, 20))
        assert got.is_contiguous()
        assert_same(got.numpy(), np.stack(expected), f"view of strides {view.stride()}")
    empty = bicubic_resize(torch.empty((0, 48, 64, 3), dtype=torch.uint8), (30, 20))
    assert empty.shape == (0, 20, 30, 3)


def test_output_is_new_even_when_nothing_changes() -> None:
    images = torch.from_numpy(noise(13, 11, frames=2))
    same = bicubic_resize(images, (13, 11))
    assert torch.equal(same, images)
    assert same.data_ptr() != images.data_ptr()


def test_weights_are_computed_once_per_axis_size_pair() -> None:
    cache = torch_bicubic._axis_taps
    assert cache.cache_parameters()["maxsize"] == torch_bicubic.WEIGHT_CACHE_SIZE
    cache.cache_clear()
    images = torch.from_numpy(noise(71, 43, frames=3))
    bicubic_resize(images, (30, 20))
    assert cache.cache_info().misses == 2  # one per axis
    bicubic_resize(images[:1], (30, 20))
    bicubic_resize(images, (30, 20), pillow=12)
    info = cache.cache_info()
    assert info.misses == 2 and info.hits >= 4
    bicubic_resize(images, (30, 21))
    assert cache.cache_info().misses == 3  # only the new height's


@pytest.mark.parametrize(
    ("images", "size", "pillow", "error", "message"),
    [
        (np.zeros((1, 4, 4, 3), np.uint8), (2, 2), 13, TypeError, "torch.Tensor"),
        (torch.zeros((1, 4, 4, 3)), (2, 2), 13, TypeError, "uint8"),
        (torch.zeros((1, 4, 4, 3), dtype=torch.int16), (2, 2), 13, TypeError, "uint8"),
        (torch.zeros((4, 4, 3), dtype=torch.uint8), (2, 2), 13, ValueError, "(N, H, W, 3)"),
        (torch.zeros((1, 4, 4, 4), dtype=torch.uint8), (2, 2), 13, ValueError, "(N, H, W, 3)"),
        (torch.zeros((1, 0, 4, 3), dtype=torch.uint8), (2, 2), 13, ValueError, "H, W >= 1"),
        (torch.zeros((1, 4, 4, 3), dtype=torch.uint8), (0, 2), 13, ValueError, "at least (1, 1)"),
        (torch.zeros((1, 4, 4, 3), dtype=torch.uint8), (2.5, 2), 13, ValueError, "integers"),
        (torch.zeros((1, 4, 4, 3), dtype=torch.uint8), (2, 2, 2), 13, ValueError, "integers"),
        (torch.zeros((1, 4, 4, 3), dtype=torch.uint8), (2, 2), 11, ValueError, "pillow rule"),
    ],
)
def test_bad_arguments_are_refused_clearly(
    images: object, size: object, pillow: int, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        bicubic_resize(images, size, pillow)  # type: ignore[arg-type]


def test_a_cpu_call_runs_on_one_thread_and_restores_torchs_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Many small ops: on busy cores, intra-op threads made a frame 30 x slower (the docstring)."""
    seen: list[int] = []
    resize_into = torch_bicubic._resize_into

    def spy(*args: object) -> None:
        seen.append(torch.get_num_threads())
        if len(seen) == 2:
            raise RuntimeError("inside the call")
        resize_into(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(torch_bicubic, "_resize_into", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        images = torch.from_numpy(noise(9, 7))
        bicubic_resize(images, (5, 4))
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError, match="inside the call"):
            bicubic_resize(images, (5, 4))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 1]


def test_importing_transforms_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, prebake.transforms; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert out.stdout.strip() == "False"


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@cuda
def test_cuda_equals_pillow13_and_pillow12() -> None:
    sizes = [(1, 1), (2, 3), (53, 37), (480, 848), (1401, 1037), (3840, 2160), (2, 301)]
    images, outs = [], []
    for size in sizes:
        for out in [(1024, 1024), (448, 448), (max(1, size[0] - 1), max(1, size[1] // 3))]:
            image = noise(*size, frames=3)
            got = bicubic_resize(torch.from_numpy(image).cuda(), out)
            assert got.device.type == "cuda" and got.dtype == torch.uint8
            for i in range(3):
                assert_same(got[i].cpu().numpy(), pillow13(image[i], out), f"cuda {size} -> {out}")
            images.append(image[0])
            outs.append(out)
    for image, out, want in zip(images, outs, resize_with_pillow12(images, outs), strict=True):
        got = bicubic_resize(torch.from_numpy(image)[None].cuda(), out, pillow=12)
        assert_same(got[0].cpu().numpy(), want, f"cuda rule 12: {image.shape} -> {out}")


@cuda
def test_cuda_batch_of_4k_frames_in_chunks() -> None:
    images = torch.from_numpy(noise(3840, 2160, frames=12)).cuda()
    got = bicubic_resize(images, (1024, 1024))
    for i in (0, 11):
        want = pillow13(images[i].cpu().numpy(), (1024, 1024))
        assert_same(got[i].cpu().numpy(), want, f"cuda 4K frame {i}")
    assert torch.equal(got[5:6], bicubic_resize(images[5:6].cpu(), (1024, 1024)).cuda())
