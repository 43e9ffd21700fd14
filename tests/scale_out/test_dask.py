"""Issue 6, scale-out on Dask: LocalClusters (one with a worker SIGKILLed mid-unit, one whose
workers always die on a unit, one stopped by Ctrl-C) and a build from S3 to S3, every store
bitwise equal to a one-worker local build; nothing listens on anything but 127.0.0.1; a build
without --dask imports nothing of Dask."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from helpers.processes import descendants, listening, watch_build
from helpers.runs import DEADLINE, HeldFrame
from helpers.scale_out import (
    DASK_HELD_VIDEO,
    LOOPBACK,
    S3,
    SHARD_ARGS,
    assert_same_remote_store,
    dask_videos,
)
from helpers.stores import CLI, assert_same_store, records

from prebake.demo import default_sample, write_sample
from prebake.store.schema import DATA_ARRAYS


def test_listening_sockets_are_seen() -> None:
    """The socket check itself: it sees a loopback listener of this process, and a wildcard one."""
    with socket.socket() as loopback, socket.socket() as wildcard:
        loopback.bind((LOOPBACK, 0))
        loopback.listen()
        wildcard.bind(("0.0.0.0", 0))
        wildcard.listen()
        seen = listening([os.getpid()])
        assert (LOOPBACK, loopback.getsockname()[1]) in seen
        assert ("0.0.0.0", wildcard.getsockname()[1]) in seen


def test_dask_build_from_s3_to_s3_listens_on_loopback_only(
    s3: S3, remote_src: str, local_reference: Path
) -> None:
    """The scale-out case on one machine: Dask workers stream the source from the bucket and
    upload shards; the client commits. Equal to the local build; nothing listens beyond
    127.0.0.1 (the S3 server, the scheduler, the workers and their nannies)."""
    url = "s3://stores/dask.zarr"
    args = ["build", "--src", remote_src, "--out", url, "--dask", "local:2", "-q"]
    result, seen = watch_build([*args, *SHARD_ARGS, "--storage-options", s3.options_json])
    assert result.returncode == 1, result.stderr  # 1: the truncated video failed, as locally
    assert "sav_930001: s3://sources/sav/broken/sav_930001.mp4: " in result.stderr
    assert "Traceback" not in result.stderr
    assert_same_remote_store(s3, url, local_reference)
    assert len(seen) >= 4  # S3, the scheduler, and at least a worker and a nanny
    assert {address for address, _ in seen} == {LOOPBACK}, seen


def test_dask_local_cluster_equals_one_worker(
    dask_src: Path, dask_reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "store.zarr"
    result = subprocess.run(
        dask_build_args(dask_src, out),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert_same_store(out, dask_reference)
    attrs = json.loads((out / "zarr.json").read_text())["attributes"]["prebake"]
    assert attrs["build"]["workers"] == 2


def test_dask_resizes_with_torch_and_checks_the_device_on_the_workers(
    dask_src: Path, dask_reference: Path, tmp_path: Path
) -> None:
    """--resize torch reaches the Dask tasks (same bytes); --device cuda is checked on the
    workers, where the units run, not by the client: refused there before anything is written."""
    import torch

    out = tmp_path / "store.zarr"
    if not torch.cuda.is_available():
        args = [*dask_build_args(dask_src, out), "--resize", "torch", "--device", "cuda"]
        result = subprocess.run(args, capture_output=True, text=True, timeout=180)
        assert result.returncode == 2, result.stderr
        assert re.fullmatch(
            r"prebake: --dask local:2: worker tcp://127\.0\.0\.1:\d+: --device cuda: .*\n",
            result.stderr,
        ), result.stderr
        assert not out.exists()
    args = [*dask_build_args(dask_src, out), "--resize", "torch"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert_same_store(out, dask_reference)
    attrs = json.loads((out / "zarr.json").read_text())["attributes"]["prebake"]
    assert attrs["build"]["resize"] == [f"torch {torch.__version__} on cpu"]


def dask_build_args(src: Path, out: Path) -> list[str]:
    return [
        *CLI,
        "build",
        "--src",
        str(src),
        "--out",
        str(out),
        "--dask",
        "local:2",
        "-q",
        *SHARD_ARGS,
    ]


def test_dask_worker_killed_mid_unit(
    dask_src: Path, dask_reference: Path, tmp_path: Path, dask_held: HeldFrame
) -> None:
    """SIGKILL the Dask worker baking the held unit (blocked reading a frame that never comes):
    Dask reruns the unit on a worker (the nanny restarts the dead one), the build completes
    and the store is identical, so the unit was baked again after the kill."""
    out = tmp_path / "store.zarr"
    process = subprocess.Popen(
        dask_build_args(dask_src, out),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    dask_held.wait_read(process)
    (victim,) = dask_held.wait_readers(process.pid, process)
    dask_held.restore()  # the rerun reads the real frame; the killed worker never got it
    os.kill(victim, signal.SIGKILL)
    _, stderr = process.communicate(timeout=DEADLINE)
    assert process.returncode == 0, stderr
    assert not Path(f"/proc/{victim}").exists()
    assert "Traceback" not in stderr
    assert_same_store(out, dask_reference)
    attrs = json.loads((out / "zarr.json").read_text())["attributes"]["prebake"]
    assert attrs["failures"] == []


def test_dask_unit_whose_worker_always_dies_is_recorded_failed(
    dask_src: Path, dask_reference: Path, tmp_path: Path, dask_held: HeldFrame
) -> None:
    """A video whose worker is killed each time it runs (as a decoder crash would) is recorded
    as failed once it died alone too; the units that only shared its worker are baked."""
    out = tmp_path / "store.zarr"
    # Dask gives up on a unit at its first death here, so units merely queued beside the
    # victim are given up too: they must survive their retry alone.
    env = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}
    args = [*CLI, "build", "--src", str(dask_src), "--out", str(out), "--dask", "local:2", "-q"]
    process = subprocess.Popen(
        [*args, *SHARD_ARGS], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    dask_held.wait_read(process)  # our end stays open: every later reader blocks reading
    killed: set[int] = set()
    deadline = time.monotonic() + DEADLINE
    while process.poll() is None:  # kill every worker that holds the victim's frame
        assert time.monotonic() < deadline, "the build did not end"
        for pid in set(dask_held.readers(process.pid)) - killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        time.sleep(0.01)
    _, stderr = process.communicate(timeout=DEADLINE)
    assert process.returncode == 1, stderr
    assert len(killed) >= 2, "the victim was meant to be killed in the crowd, then alone"
    attrs = json.loads((out / "zarr.json").read_text())["attributes"]["prebake"]
    assert [failure["video_id"] for failure in attrs["failures"]] == [DASK_HELD_VIDEO]
    assert "the worker process baking this video died" in attrs["failures"][0]["reason"]
    assert f"  {DASK_HELD_VIDEO}: " in stderr and "Traceback" not in stderr

    # Every other video's shards are the reference's, bytes and all; the victim left none.
    def shards(store: Path) -> set[Path]:
        return {
            p.relative_to(store)
            for name in DATA_ARRAYS
            for p in (store / name / "c").rglob("*")
            if p.is_file()
        }

    stored, reference = shards(out), shards(dask_reference)
    assert stored and stored < reference
    for relative in stored:
        assert (out / relative).read_bytes() == (dask_reference / relative).read_bytes(), relative


def test_dask_ctrl_c_stops_cleanly_and_resumes(
    dask_src: Path, dask_reference: Path, tmp_path: Path, dask_held: HeldFrame
) -> None:
    """A Ctrl-C reaches the client and the local cluster's workers (one process group): one
    line, exit 130, the cluster stopped; the same command resumes to an identical store."""
    out = tmp_path / "store.zarr"
    args = [*CLI, "build", "--src", str(dask_src), "--out", str(out), "--dask", "local:2", "-q"]
    process = subprocess.Popen(
        [*args, *SHARD_ARGS],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    dask_held.wait_read(process)  # the build cannot end before the Ctrl-C
    workers = descendants(process.pid)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=DEADLINE)
    assert process.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0], stderr
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in workers):
        assert time.monotonic() < deadline, "the cluster's processes outlived the build"
        time.sleep(0.05)
    committed = len(records(out))
    assert committed < len(dask_videos()) + 1, "the held unit was not committed"
    dask_held.restore()
    again = subprocess.run([*args, *SHARD_ARGS], capture_output=True, text=True, timeout=DEADLINE)
    assert again.returncode == 0, again.stderr
    assert_same_store(out, dask_reference)


def test_without_dask_nothing_of_dask_is_imported(tmp_path: Path) -> None:
    """A local build, the reader, verify and info never import distributed or dask."""
    src = write_sample(tmp_path / "src", "train", default_sample()[2:])
    code = f"""
import sys
import prebake.build, prebake.cli, prebake.reader, prebake.verify, prebake.info, prebake.storage
from prebake.build import BuildOptions, build
from prebake.reader import PrebakedDataset
from prebake.verify import verify_store
from prebake.info import store_info
report = build(BuildOptions(src={str(src)!r}, out={str(tmp_path / "s.zarr")!r}, progress=False))
assert report.videos_failed == 0
PrebakedDataset({str(tmp_path / "s.zarr")!r})[0]
assert verify_store({str(tmp_path / "s.zarr")!r}, progress=False).ok
store_info({str(tmp_path / "s.zarr")!r})
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("dask", "distributed"))
print(loaded)
"""
    result = subprocess.run(
        [sys.executable, "-c", "if __name__ == '__main__':\n" + _indent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def _indent(code: str) -> str:
    return "\n".join("    " + line for line in code.strip().splitlines())
