"""Small test videos of many kinds, written with PyAV's encoders (the decoder-parity matrix).

Each `VideoKind` says how one video is encoded and muxed: codec, pixel format, size, colour
tags, B-frames, timestamps (variable frame rate, an edit list), an audio stream ahead of the
video, a display matrix in the track header, a display-orientation SEI in the H.264 bitstream.
`write_video` writes it; the frames hold smooth gradients, saturated corners, fine texture and
an asymmetric marker (so a conversion filter, a chroma siting or a missing rotation shows), and
change from frame to frame (so a dropped or repeated frame shows).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from pycocotools import mask as mask_utils

RATE = 24


@dataclass(frozen=True)
class VideoKind:
    name: str
    codec: str = "libx264"
    pix_fmt: str = "yuv420p"
    width: int = 64
    height: int = 48
    frames: int = 9
    options: dict[str, str] = field(default_factory=dict)  # encoder options
    color_range: str | None = None  # "pc" (full) or "tv" tag on the stream
    colorspace: str | None = None  # matrix tag on the stream: a key of COLORSPACES
    primaries: str | None = None  # a key of PRIMARIES
    transfer: str | None = None  # a key of TRANSFERS ("pq", "hlg": HDR)
    bframes: int = 0
    vfr: bool = False  # irregular timestamps (variable frame rate)
    edit_list: bool = False  # the first frames' timestamps are negative: an edit list hides them
    audio_first: bool = False  # an AAC stream is stream 0, the video stream 1
    rotation: float | None = None  # display matrix: counter-clockwise degrees (PyAV's sign)
    hflip: bool = False  # display matrix mirrored after the rotation
    sei_rotation: int | None = None  # H.264 display-orientation SEI, no container matrix
    container: str = "mp4"

    @property
    def visible_frames(self) -> int:
        """Frames a player (and OpenCV) shows: an edit list hides the first two."""
        return self.frames - 2 if self.edit_list else self.frames

    @property
    def displayed_size(self) -> tuple[int, int]:
        """(width, height) after a quarter-turn display matrix, as OpenCV returns frames."""
        quarter = self.rotation is not None and round(self.rotation) % 180 == 90
        return (self.height, self.width) if quarter else (self.width, self.height)


def picture(width: int, height: int, index: int) -> np.ndarray:
    """uint8 (height, width, 3) RGB test frame number `index`."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    red = xx / max(width - 1, 1) * 255
    green = yy / max(height - 1, 1) * 255
    blue = 128 + 90 * np.sin((xx + 2 * yy + 5 * index) / 3.0)  # fine texture: chroma edges
    image = np.stack([red, green, blue], axis=-1)
    side = max(2, min(width, height) // 5)
    image[:side, :side] = (255, 0, 0)  # saturated, asymmetric corners: orientation shows
    image[-side:, -side:] = (0, 0, 255)
    image[:side, -side:] = (255, 255, 0)
    bar = max(1, (index + 1) * width // (RATE // 2))
    image[height // 2 : height // 2 + 2, :bar] = (0, 255, 0)  # grows frame by frame
    return np.clip(image, 0, 255).astype(np.uint8)


def write_video(path: Path, kind: VideoKind) -> Path:
    """Encode `kind` into `path` (its container from the suffix)."""
    time_base = Fraction(1, 1000) if kind.vfr else Fraction(1, RATE)
    with av.open(str(path), "w", format=kind.container) as container:
        audio = None
        if kind.audio_first:
            audio = container.add_stream("aac", rate=48000)
            audio.layout = "mono"
        stream = container.add_stream(kind.codec, rate=RATE)
        stream.width, stream.height, stream.pix_fmt = kind.width, kind.height, kind.pix_fmt
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        options = dict(kind.options)
        if kind.codec in ("libx264", "libx265"):
            options.setdefault("crf", "16")
            if kind.codec == "libx264":
                options["bf"] = str(kind.bframes)
            else:
                options["x265-params"] = f"log-level=error:bframes={kind.bframes}"
        elif kind.bframes:
            stream.codec_context.max_b_frames = kind.bframes
        if kind.codec == "libvpx-vp9":
            options.setdefault("crf", "20")
            options.setdefault("b", "0")
        stream.options = options
        if kind.color_range is not None:
            stream.codec_context.color_range = {"pc": 2, "tv": 1}[kind.color_range]
        if kind.colorspace is not None:
            stream.codec_context.colorspace = COLORSPACES[kind.colorspace]
        if kind.primaries is not None:
            stream.codec_context.color_primaries = PRIMARIES[kind.primaries]
        if kind.transfer is not None:
            stream.codec_context.color_trc = TRANSFERS[kind.transfer]
        if kind.rotation is not None:
            stream.set_display_rotation(kind.rotation, hflip=kind.hflip)
        pts = _timestamps(kind)
        if audio is not None:
            _mux_audio(container, audio, kind.frames / RATE)
        for index in range(kind.frames):
            frame = av.VideoFrame.from_ndarray(
                picture(kind.width, kind.height, index), format="rgb24"
            )
            frame.pts = pts[index]
            frame.time_base = time_base
            container.mux(stream.encode(frame.reformat(format=kind.pix_fmt)))
        container.mux(stream.encode())
    if kind.sei_rotation is not None:
        _insert_orientation_sei(path, kind.sei_rotation)
    return path


def _insert_orientation_sei(path: Path, degrees: int) -> None:
    """Remux `path` with an H.264 display-orientation SEI (h264_metadata) in its bitstream."""
    source = path.with_name(path.stem + ".plain" + path.suffix)
    path.rename(source)
    with av.open(str(source)) as given, av.open(str(path), "w") as written:
        video = given.streams.video[0]
        out = written.add_stream_from_template(video)
        bsf = av.bitstream.BitStreamFilterContext(
            f"h264_metadata=display_orientation=insert:rotate={degrees}", video, out
        )
        for packet in given.demux(video):
            for filtered in bsf.filter(packet if packet.dts is not None else None):
                filtered.stream = out
                written.mux(filtered)
    source.unlink()


# FFmpeg's AVColorSpace, AVColorPrimaries and AVColorTransferCharacteristic values.
COLORSPACES = {"bt709": 1, "fcc": 4, "bt470bg": 5, "smpte170m": 6, "smpte240m": 7, "bt2020nc": 9}
PRIMARIES = {"bt709": 1, "bt470bg": 5, "smpte170m": 6, "bt2020": 9, "p3": 12}
TRANSFERS = {
    "bt709": 1,
    "gamma22": 4,
    "gamma28": 5,
    "smpte170m": 6,
    "srgb": 13,
    "pq": 16,
    "hlg": 18,
}


def _timestamps(kind: VideoKind) -> list[int]:
    if kind.vfr:  # milliseconds, uneven gaps
        steps = [30, 50, 20, 45, 60, 25, 40, 35, 55, 30, 42, 38]
        times, now = [], 0
        for index in range(kind.frames):
            times.append(now)
            now += steps[index % len(steps)]
        return times
    start = -2 if kind.edit_list else 0
    return list(range(start, start + kind.frames))


def _mux_audio(
    container: av.container.OutputContainer, stream: av.AudioStream, seconds: float
) -> None:
    samples = int(seconds * 48000) + 1024
    tone = (0.1 * np.sin(np.arange(samples) * 2 * np.pi * 440 / 48000)).astype(np.float32)
    for start in range(0, samples, 1024):
        chunk = tone[None, start : start + 1024]
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(chunk), format="fltp", layout="mono"
        )
        frame.sample_rate = 48000
        frame.pts = start
        container.mux(stream.encode(frame))
    container.mux(stream.encode())


def rle(mask: np.ndarray) -> dict[str, object]:
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": encoded["size"], "counts": encoded["counts"].decode("ascii")}


def write_sav_video(
    folder: Path, video_id: str, kind: VideoKind, frames: int | None = None
) -> Path:
    """`<video_id>.mp4` of `kind` and its `<video_id>_manual.json` (one masklet, displayed size).

    `frames` is the annotation's video_frame_count (default: the frames encoded).
    """
    folder.mkdir(parents=True, exist_ok=True)
    write_video(folder / f"{video_id}.mp4", kind)
    width, height = kind.displayed_size
    count = kind.visible_frames if frames is None else frames
    masks = []
    for t in range((count + 3) // 4):
        mask = np.zeros((height, width), np.uint8)
        mask[1 : height // 2, 1 : width // 3 + t] = 1
        masks.append(rle(mask))
    annotation = {
        "video_id": video_id,
        "video_height": float(height),
        "video_width": float(width),
        "video_frame_count": float(count),
        "video_duration": count / RATE,
        "video_resolution": float(height * width),
        "masklet": [[m] for m in masks],
        "masklet_id": [0],
        "masklet_num": 1,
        "masklet_first_appeared_frame": [0.0],
        "masklet_frame_count": [len(masks)],
        "masklet_type": ["manual"],
        "masklet_stability_score": [None],
    }
    (folder / f"{video_id}_manual.json").write_text(json.dumps(annotation))
    return folder / f"{video_id}.mp4"


# -- the decoder-parity matrix ----------------------------------------------------------------

EQUAL = "equal"
NOT_A_QUARTER_TURN = "is not a pure quarter turn"


@dataclass(frozen=True)
class Case:
    """A video of the matrix and what prebake must do with it: bake OpenCV's frames exactly
    (EQUAL), or refuse it with a reason containing `expected`."""

    kind: VideoKind
    expected: str = EQUAL


def _k(name: str, **fields: object) -> VideoKind:
    return VideoKind(name, **fields)  # type: ignore[arg-type]


MATRIX = [
    # 8-bit 4:2:0 H.264, as SA-V is, with the container and timing variations phones produce
    Case(_k("h264_yuv420p")),
    Case(_k("h264_unaligned_70x38", width=70, height=38)),
    Case(_k("h264_1080p", width=1920, height=1080, frames=5)),  # coded 1088 rows
    Case(_k("h264_full_range", color_range="pc")),
    Case(_k("h264_yuvj420p", pix_fmt="yuvj420p")),
    Case(_k("h264_bt709", colorspace="bt709", primaries="bt709", transfer="bt709")),
    Case(_k("h264_bt709_full", colorspace="bt709", color_range="pc")),
    Case(_k("h264_smpte170m", colorspace="smpte170m", primaries="smpte170m", transfer="smpte170m")),
    Case(
        _k(
            "h264_bt470bg",
            colorspace="bt470bg",
            primaries="bt470bg",
            transfer="gamma28",
            color_range="tv",
        )
    ),
    Case(_k("h264_display_p3", colorspace="bt709", primaries="p3", transfer="srgb")),
    Case(_k("h264_bt2020", colorspace="bt2020nc", primaries="bt2020")),
    Case(_k("h264_bframes", bframes=3, frames=12)),
    Case(_k("h264_vfr", vfr=True, frames=12)),
    Case(_k("h264_edit_list", edit_list=True, bframes=2, frames=12)),
    Case(_k("h264_audio_first", audio_first=True)),
    # other chroma layouts and bit depths
    Case(_k("h264_yuv422p", pix_fmt="yuv422p")),
    Case(_k("h264_yuv444p", pix_fmt="yuv444p")),
    Case(_k("h264_yuv420p10", pix_fmt="yuv420p10le")),
    Case(_k("h264_yuv422p10", pix_fmt="yuv422p10le")),
    Case(_k("h264_yuv444p10", pix_fmt="yuv444p10le")),
    Case(_k("hevc_yuv420p", codec="libx265")),
    Case(_k("hevc_yuv420p10", codec="libx265", pix_fmt="yuv420p10le")),
    Case(_k("hevc_yuv422p10", codec="libx265", pix_fmt="yuv422p10le")),
    Case(_k("hevc_yuv420p12", codec="libx265", pix_fmt="yuv420p12le")),
    Case(_k("hevc_yuv444p", codec="libx265", pix_fmt="yuv444p")),
    Case(_k("hevc_gbrp", codec="libx265", pix_fmt="gbrp")),
    # HDR as phones record it: 10-bit HEVC, BT.2020, PQ or HLG (OpenCV tone-maps to BT.709)
    Case(
        _k(
            "hevc_pq",
            codec="libx265",
            pix_fmt="yuv420p10le",
            frames=5,
            colorspace="bt2020nc",
            primaries="bt2020",
            transfer="pq",
        )
    ),
    Case(
        _k(
            "hevc_hlg",
            codec="libx265",
            pix_fmt="yuv420p10le",
            frames=5,
            colorspace="bt2020nc",
            primaries="bt2020",
            transfer="hlg",
        )
    ),
    # odd sizes with subsampled chroma (H.264 cannot be odd)
    Case(_k("vp9_odd_71x39", codec="libvpx-vp9", width=71, height=39)),
    Case(_k("vp9_yuv422p_odd", codec="libvpx-vp9", pix_fmt="yuv422p", width=71, height=39)),
    Case(_k("vp9_yuv444p", codec="libvpx-vp9", pix_fmt="yuv444p")),
    Case(_k("vp9_gbrp", codec="libvpx-vp9", pix_fmt="gbrp")),
    Case(_k("mpeg4_odd_71x39", codec="mpeg4", width=71, height=39)),
    Case(_k("mpeg4_bframes", codec="mpeg4", bframes=2, frames=12)),
    Case(_k("mjpeg_yuvj420p", codec="mjpeg", pix_fmt="yuvj420p")),
    Case(_k("mjpeg_yuvj422p", codec="mjpeg", pix_fmt="yuvj422p")),
    Case(_k("mjpeg_yuvj444p", codec="mjpeg", pix_fmt="yuvj444p")),
    # display matrices: OpenCV turns the frame upright (CAP_PROP_ORIENTATION_AUTO)
    Case(_k("rot90_square", rotation=90, width=48, height=48)),
    Case(_k("rot180_square", rotation=180, width=48, height=48)),
    Case(_k("rot270_square", rotation=270, width=48, height=48)),
    Case(_k("rot90_landscape", rotation=90, width=64, height=40)),
    Case(_k("rot180_landscape", rotation=180, width=64, height=40)),
    Case(_k("rot270_landscape", rotation=270, width=64, height=40)),
    Case(
        _k(
            "rot90_hevc_10bit",
            codec="libx265",
            pix_fmt="yuv420p10le",
            rotation=90,
            width=64,
            height=40,
        )
    ),
    # refused: what OpenCV does here is not what the video shows, or is not proven
    Case(_k("mirror", rotation=0, hflip=True), NOT_A_QUARTER_TURN),
    Case(_k("rot90_mirror", rotation=90, hflip=True), NOT_A_QUARTER_TURN),
    Case(_k("rot45", rotation=45), NOT_A_QUARTER_TURN),
    Case(_k("sei_orientation", sei_rotation=90), "bitstream carries a display orientation (SEI)"),
    Case(_k("av1", codec="libsvtav1", width=64, height=64, frames=5), "codec 'libdav1d'"),
    Case(_k("hevc_gray", codec="libx265", pix_fmt="gray"), "pixel format 'gray'"),
    Case(_k("colorspace_smpte240m", colorspace="smpte240m"), "colour matrix 7"),
    Case(_k("transfer_gamma22", transfer="gamma22"), "transfer characteristic 4"),
]
