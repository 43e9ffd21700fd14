"""Decoding mp4 frames as the reference trainers see them: OpenCV's FFmpeg backend, bit for bit.

SAM 2 (`sav_dataset/utils/sav_utils.py`) and Sa2VA (`ReSAM2_Dataset.py`) read SA-V videos with
`cv2.VideoCapture` and flip BGR to RGB. For each decoded frame, OpenCV's FFmpeg backend
(`modules/videoio/src/cap_ffmpeg_impl.hpp`) converts to BGR24 with swscale's BICUBIC filter,
and turns it upright by the video track's display matrix (`CAP_PROP_ORIENTATION_AUTO`, on by
default), in quarter turns. Measured with OpenCV 5.0 (FFmpeg 8): the colours come out as
swscale converts the tagged frame to an untagged BGR24 one, whose tags it infers
(`ff_infer_colors` in libswscale/format.c): the primaries stay when they are BT.709 or an SD set
(BT.470M, BT.470BG, SMPTE 170M, SMPTE 240M), else become BT.709 (a gamut conversion); the
transfer stays unless it is unspecified or HDR (PQ, HLG), which becomes BT.709 (tone mapping).

prebake decodes with PyAV, which drives the same FFmpeg libraries, streams from any fsspec file
object, and can refuse damaged data (`err_detect=explode`, where OpenCV conceals it):
`reformat(format="bgr24", interpolation=BICUBIC)` with those inferred transfer and primaries
asked for explicitly (`output_colors`), the BGR bytes read as RGB, and the same quarter turn give
OpenCV's frame exactly, on every kind of video the test matrix (tests/sources/test_decoding.py) covers;
docs/decoding.md has the measurements.

What the matrix does not prove equal is refused with a one-line reason, never guessed: a codec,
pixel format or colour tag outside the lists below; a display matrix that is not a pure quarter
turn (a mirror, another angle; OpenCV applies only the rotation part); a display orientation
carried in an H.264/HEVC bitstream (SEI), which OpenCV ignores and players apply.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import av
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter
from PIL import Image

from prebake.errors import SourceError
from prebake.storage import RemotePath

# The conversion OpenCV's FFmpeg backend applies (see the module docstring), recorded in a store.
OPENCV_CONVERSION = {
    "pixel_format": "bgr24",
    "channels": "reversed to RGB",
    "interpolation": "bicubic",
    "color_transfer": "bt709 from unspecified or HDR, else kept",
    "color_primaries": "bt709 unless bt709 or an SD set",
    "rotation": "display matrix, quarter turns",
}
# What prebake did before it matched OpenCV (PyAV's to_ndarray("rgb24") at its default filter,
# no rotation): a store without decoding settings was baked so. Kept to bake such a store on
# purpose (tests of `verify --src`), never chosen by a command.
LEGACY_CONVERSION = {
    "pixel_format": "rgb24",
    "channels": "as converted",
    "interpolation": "bilinear",
    "color_transfer": "as tagged",
    "color_primaries": "as tagged",
    "rotation": "none",
}
CONVERSIONS = {"opencv": OPENCV_CONVERSION, "legacy": LEGACY_CONVERSION}

# Proven equal to OpenCV by the test matrix; anything else is refused. Codecs by FFmpeg's decoder
# name (OpenCV's FFmpeg has no AV1 decoder, so an AV1 video gives a trainer no frames at all).
SUPPORTED_CODECS = frozenset({"h264", "hevc", "vp9", "mpeg4", "mjpeg"})
SUPPORTED_PIXEL_FORMATS = frozenset(
    {
        "yuv420p",
        "yuvj420p",
        "yuv422p",
        "yuvj422p",
        "yuv444p",
        "yuvj444p",
        "yuv420p10le",
        "yuv422p10le",
        "yuv444p10le",
        "yuv420p12le",
        "gbrp",
    }
)
# FFmpeg's AVColorSpace, AVColorRange, AVColorTransferCharacteristic, AVColorPrimaries values.
SUPPORTED_COLORSPACES = {0: "rgb", 1: "bt709", 2: "unspecified", 5: "bt470bg", 6: "smpte170m", 9: "bt2020nc"}  # fmt: skip
SUPPORTED_COLOR_RANGES = {0: "unspecified", 1: "tv", 2: "pc"}
SUPPORTED_TRANSFERS = {1: "bt709", 2: "unspecified", 5: "gamma28", 6: "smpte170m", 13: "iec61966-2-1", 16: "smpte2084", 18: "arib-std-b67"}  # fmt: skip
SUPPORTED_PRIMARIES = {1: "bt709", 2: "unspecified", 5: "bt470bg", 6: "smpte170m", 9: "bt2020", 12: "smpte432"}  # fmt: skip
# What swscale makes of an untagged output (ff_infer_colors): primaries kept, else BT.709;
# transfers turned into BT.709.
_KEPT_PRIMARIES = frozenset({1, 4, 5, 6, 7})  # BT.709, BT.470M, BT.470BG, SMPTE 170M, 240M
_BT709_TRANSFER_FROM = frozenset({2, 16, 18})  # unspecified, PQ, HLG
_BT709 = 1
# Codecs whose bitstream may carry a display orientation (H.264/HEVC SEI), which FFmpeg puts on
# the frame as a display matrix, over the container's.
SEI_ORIENTATION_CODECS = frozenset({"h264", "hevc"})

# The display matrix (FFmpeg's 3 x 3, 16.16 fixed point, row-major a b u / c d v / x y w) of each
# pure rotation, as (a, b, c, d) -> counter-clockwise quarter turns (av_display_rotation_get's
# sense, and PIL's Transpose.ROTATE_90 is counter-clockwise).
_ONE = 1 << 16
_QUARTER_TURNS = {
    (_ONE, 0, 0, _ONE): 0,
    (0, -_ONE, _ONE, 0): 1,
    (-_ONE, 0, 0, -_ONE): 2,
    (0, _ONE, -_ONE, 0): 3,
}
_TRANSPOSE = {
    1: Image.Transpose.ROTATE_90,
    2: Image.Transpose.ROTATE_180,
    3: Image.Transpose.ROTATE_270,
}


def decoding_settings(conversion: str = "opencv") -> dict[str, Any]:
    """How mp4 frames are decoded, as a store records it (part of its build settings)."""
    return {
        "decoder": "pyav",
        "pyav": av.__version__,
        "ffmpeg": {
            name: ".".join(str(part) for part in version)
            for name, version in sorted(av.library_versions.items())
            if name in ("libavcodec", "libavformat", "libavutil", "libswscale")
        },
        "conversion": conversion,
        **CONVERSIONS[conversion],
    }


# What a store built before decoding settings were recorded holds (schema v1 allows it).
LEGACY_DECODING: dict[str, Any] = {"decoder": "pyav", "conversion": "legacy", **LEGACY_CONVERSION}


def describe(decoding: Mapping[str, Any] | None) -> str:
    """One line for `info`: decoder, versions and conversion."""
    decoding = dict(decoding or LEGACY_DECODING)
    versions = f" {decoding['pyav']}" if "pyav" in decoding else ""
    ffmpeg_versions = decoding.get("ffmpeg")
    ffmpeg = ffmpeg_versions.get("libavcodec") if isinstance(ffmpeg_versions, dict) else None
    libraries = f" (libavcodec {ffmpeg})" if ffmpeg else ""
    recorded = (
        "" if "pyav" in decoding else " (not recorded: a store built before prebake recorded it)"
    )
    # .get: a damaged store is still described (`prebake verify` names what is missing)
    return (
        f"{decoding.get('decoder')}{versions}{libraries}, {decoding.get('pixel_format')} "
        f"{decoding.get('interpolation')}, rotation: {decoding.get('rotation')}{recorded}"
    )


class FrameConverter:
    """Converts decoded PyAV frames into RGB PIL images as OpenCV's `read()` + BGR2RGB does.

    One per video: the swscale context is kept from frame to frame. `path` names the video in
    the one-line errors (SourceError) that refuse what the test matrix does not cover.
    """

    def __init__(self, path: str, stream: Any, conversion: str = "opencv") -> None:
        if conversion not in CONVERSIONS:
            raise ValueError(f"unknown decoder conversion {conversion!r}")
        self.path = path
        self.conversion = conversion
        self.codec = stream.codec_context.name
        self.reformatter = VideoReformatter()
        self.turns: int | None = None  # quarter turns of the first converted frame
        self.rotation = 0  # and its `frame.rotation`, which later frames must repeat
        if conversion == "opencv" and self.codec not in SUPPORTED_CODECS:
            raise SourceError(path, f"{self.refusal} codec {self.codec!r}")

    @property
    def refusal(self) -> str:
        return "cannot be decoded as OpenCV (the trainer's decoder) decodes it:"

    def __call__(self, frame: Any) -> Image.Image:
        if self.conversion == "legacy":
            return Image.fromarray(frame.to_ndarray(format="rgb24"))
        self._check(frame)
        turns = self._quarter_turns(frame)
        transfer, primaries = output_colors(frame.color_trc, frame.color_primaries)
        converted = self.reformatter.reformat(
            frame,
            format="bgr24",
            interpolation=Interpolation.BICUBIC,
            dst_color_trc=transfer,
            dst_color_primaries=primaries,
            threads=1,  # as the decoder: a build already runs one worker per core
        )
        plane = converted.planes[0]
        size = (converted.width, converted.height)
        image = Image.frombuffer(
            "RGB",
            size,
            np.frombuffer(memoryview(plane), np.uint8),
            "raw",
            "BGR",
            plane.line_size,
            1,
        )
        return image.transpose(_TRANSPOSE[turns]) if turns else image

    def _check(self, frame: Any) -> None:
        """Refuse a frame whose conversion the test matrix does not cover."""
        checks = (
            ("pixel format", frame.format.name, None),
            ("colour matrix", frame.colorspace, SUPPORTED_COLORSPACES),
            ("colour range", frame.color_range, SUPPORTED_COLOR_RANGES),
            ("transfer characteristic", frame.color_trc, SUPPORTED_TRANSFERS),
            ("colour primaries", frame.color_primaries, SUPPORTED_PRIMARIES),
        )
        for what, value, known in checks:
            supported = value in SUPPORTED_PIXEL_FORMATS if known is None else value in known
            if not supported:
                raise SourceError(self.path, f"{self.refusal} {what} {value!r}")

    def _quarter_turns(self, frame: Any) -> int:
        """Counter-clockwise quarter turns of the frame's display matrix (0 without one).

        The whole matrix is read from the first converted frame; later frames must give the
        same rotation (`frame.rotation`). Reading `frame.side_data` ties the frame to its side
        data in a reference cycle, so that every frame read so would stay in memory until the
        garbage collector runs (measured: 270 MB more on a 289-frame 720p clip).
        """
        if self.turns is None:
            self.turns = 0
            matrix = display_matrix(frame)
            if matrix is not None:
                a, b, u, c, d, v, _, _, w = matrix
                exact = (u, v, w) == (0, 0, 1 << 30)
                turns = _QUARTER_TURNS.get((a, b, c, d)) if exact else None
                if turns is None:
                    raise SourceError(
                        self.path,
                        f"{self.refusal} its display matrix {list(matrix)} is not a pure quarter "
                        "turn (a mirror or another angle: OpenCV applies only the rotation part)",
                    )
                self.turns = turns
            self.rotation = frame.rotation
        elif frame.rotation != self.rotation:
            raise SourceError(self.path, f"{self.refusal} its display matrix changes mid-video")
        return self.turns


def output_colors(transfer: int, primaries: int) -> tuple[int, int]:
    """The (transfer, primaries) swscale gives an untagged BGR24 output of a frame tagged so."""
    return (
        _BT709 if transfer in _BT709_TRANSFER_FROM else transfer,
        primaries if primaries in _KEPT_PRIMARIES else _BT709,
    )


def display_matrix(frame: Any) -> tuple[int, ...] | None:
    """The frame's DISPLAYMATRIX side data as 9 int32 (FFmpeg's layout), or None."""
    for side_data in frame.side_data:
        if side_data.type.name == "DISPLAYMATRIX":
            return tuple(int(x) for x in np.frombuffer(bytes(side_data), "<i4"))
    return None


class OrientationProbe:
    """Finds a display orientation carried in an H.264/HEVC bitstream (SEI), before it is baked.

    FFmpeg puts such an orientation on the decoded frame as a display matrix (over the
    container's); OpenCV rotates by the container's matrix alone. A second decoder without the
    container's side data decodes the first frame: any display matrix it gives came from the
    bitstream, and the video is refused.
    """

    def __init__(self, path: str, stream: Any) -> None:
        self.path = path
        self.context: Any = None
        name = stream.codec_context.name
        if name in SEI_ORIENTATION_CODECS:
            self.context = av.CodecContext.create(name, "r")
            self.context.extradata = stream.codec_context.extradata
            self.context.thread_type = "NONE"

    def feed(self, packet: Any) -> None:
        """Decode `packet` until the first frame, then stop probing."""
        if self.context is None:
            return
        frames = self.context.decode(packet if packet.size else None)
        if frames:
            if display_matrix(frames[0]) is not None:
                raise SourceError(
                    self.path,
                    "cannot be decoded as OpenCV (the trainer's decoder) decodes it: its "
                    "bitstream carries a display orientation (SEI), which OpenCV ignores",
                )
            self.context = None


# -- the reference decoder, for `prebake verify --src` and the tests ---------------------------


def opencv_version() -> str:
    import cv2

    return str(cv2.__version__)


def opencv_frames(
    path: str,
    indices: list[int],
    storage_options: Mapping[str, Any] | None = None,
) -> Iterator[tuple[int, Image.Image]]:
    """(t, frame) for the 24 fps frame indices[t] of the mp4 `path`, as SAM 2 and Sa2VA read it.

    `cv2.VideoCapture(path)`, `read()` and `cvtColor(BGR2RGB)`: the reference decoder, whatever
    it gives (OpenCV conceals damaged data). A remote video (fsspec URL) is copied to a
    temporary file first. Raises SourceError when OpenCV cannot open the video or it ends early.
    """
    import cv2

    with _local_copy(path, storage_options) as local:
        capture = cv2.VideoCapture(str(local), cv2.CAP_FFMPEG)
        try:
            if not capture.isOpened():
                raise SourceError(path, "OpenCV cannot open the video")
            wanted = dict((index, t) for t, index in enumerate(indices))
            last = max(indices, default=-1)
            for index in range(last + 1):
                if index not in wanted:
                    if not capture.grab():
                        break
                    continue
                ok, bgr = capture.read()
                if not ok:
                    break
                yield wanted[index], Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            else:
                return
            raise SourceError(
                path, f"OpenCV's decoding ends after {index} frames; frame {last} is needed"
            )
        finally:
            capture.release()


@contextmanager
def _local_copy(path: str, storage_options: Mapping[str, Any] | None) -> Iterator[Path]:
    from prebake.storage import as_path

    source = as_path(path, storage_options)
    if not isinstance(source, RemotePath):
        yield source
        return
    with tempfile.TemporaryDirectory(prefix="prebake-verify-") as folder:
        local = Path(folder) / source.name
        with source.open("rb") as remote, local.open("wb") as copy:
            shutil.copyfileobj(remote, copy, 8 * 1024 * 1024)
        yield local
