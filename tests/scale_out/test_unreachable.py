"""Issue 14: an object store that cannot be used (its endpoint unreachable, a missing bucket, no
credentials) is one line naming the URL and the reason, exit 2, for build (store and source),
verify and info; the reader raises StoreError with that line. Against the moto server (a real
S3 API on loopback): a port where nothing listens, and a bucket that does not exist."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers.scale_out import LOOPBACK, S3, free_port
from helpers.stores import CLI

from prebake.errors import StoreError
from prebake.reader import PrebakedDataset

# botocore retries a refused connection 4 times with backoff (seconds); one attempt keeps the
# test short and raises the same error.
ONE_ATTEMPT = {"config_kwargs": {"retries": {"max_attempts": 1}}}


def commands(store: str, src: str, local: Path) -> list[tuple[str, list[str]]]:
    """(the URL the message must name, the command) for build, verify and info."""
    return [
        (store, ["build", "--src", str(local / "src"), "--out", store, "-q"]),
        (src, ["build", "--src", src, "--out", str(local / "out.zarr"), "-q"]),
        (store, ["verify", store, "-q"]),
        (store, ["info", store]),
    ]


def run_all(
    runs: list[tuple[str, list[str]]], options: dict[str, Any], env: dict[str, str] | None = None
) -> list[tuple[str, subprocess.CompletedProcess[str]]]:
    """The commands at once (each pays the imports of a fresh process)."""
    started = [
        (
            url,
            subprocess.Popen(
                [*CLI, *args, "--storage-options", json.dumps(options)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            ),
        )
        for url, args in runs
    ]
    done = []
    for url, process in started:
        stdout, stderr = process.communicate(timeout=120)
        done.append(
            (url, subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
        )
    return done


def assert_one_line(result: subprocess.CompletedProcess[str], url: str, reason: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"prebake: {url}: {reason}"), result.stderr


def test_unreachable_endpoint(tmp_path: Path) -> None:
    endpoint = f"http://{LOOPBACK}:{free_port()}"  # nothing listens there
    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": endpoint},
        **ONE_ATTEMPT,
    }
    runs = commands("s3://stores/x.zarr", "s3://sources/sav", tmp_path)
    (tmp_path / "src").mkdir()
    for url, result in run_all(runs, options):
        assert_one_line(result, url, "cannot reach the object store")
        assert endpoint in result.stderr
    with pytest.raises(StoreError, match="cannot reach the object store") as error:
        PrebakedDataset("s3://stores/x.zarr", storage_options=options)
    assert str(error.value).startswith("s3://stores/x.zarr: ") and "\n" not in str(error.value)


def test_missing_bucket(s3: S3, tmp_path: Path) -> None:
    runs = commands("s3://nobucket/x.zarr", "s3://nobucket/sav", tmp_path)
    (tmp_path / "src").mkdir()
    for url, result in run_all(runs, s3.options):
        assert_one_line(result, url, "bucket 'nobucket' does not exist")
    assert not s3.fs.exists("nobucket")
    with pytest.raises(
        StoreError, match=r"^s3://nobucket/x\.zarr: bucket 'nobucket' does not exist$"
    ):
        PrebakedDataset("s3://nobucket/x.zarr", storage_options=s3.options)


def test_missing_credentials(s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No key in the options and none where botocore looks: environment, files, metadata."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        HOME=str(home),
        AWS_EC2_METADATA_DISABLED="true",
        AWS_SHARED_CREDENTIALS_FILE=str(home / "none"),
        AWS_CONFIG_FILE=str(home / "none"),
    )
    options = {"client_kwargs": {"endpoint_url": s3.endpoint}}
    runs = commands("s3://stores/x.zarr", "s3://sources/sav", tmp_path)
    (tmp_path / "src").mkdir()
    for url, result in run_all(runs, options, env):
        assert_one_line(result, url, "no credentials for the object store")
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("AWS_") or key == "HOME":
            monkeypatch.setenv(key, value)
    with pytest.raises(StoreError, match=r"^s3://stores/x\.zarr: no credentials for the object"):
        PrebakedDataset("s3://stores/x.zarr", storage_options=options)


def test_local_errors_are_not_taken_for_the_object_store() -> None:
    """A local file's PermissionError or a closed pipe (`prebake info | head`) is not an object
    store's problem; the same from a remote path is."""
    from prebake.storage import storage_problem

    assert storage_problem(BrokenPipeError(32, "Broken pipe")) is None
    assert storage_problem(PermissionError(13, "Permission denied")) is None
    assert storage_problem(FileNotFoundError(2, "No such file")) is None
    remote = storage_problem(PermissionError(13, "Access Denied"), remote=True)
    assert remote is not None and remote.startswith("access denied")
