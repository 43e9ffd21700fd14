"""Where prebake's files are: a local path (`pathlib.Path`) or an fsspec URL (`RemotePath`).

One seam for both. A plain path or a `file://` URL stays a `pathlib.Path`, so everything local
runs exactly as before (`pread` of rows, flock, `os.replace` commits). Any other URL (`s3://bucket/
key`, `gs://...`, `memory://...`) becomes a `RemotePath`: the few `pathlib` methods prebake
uses (join, name, open, read, list, exists, unlink), answered by fsspec. Code that only reads
and lists (sources, verify, info) therefore runs unchanged on both; the places where local and
remote must differ (commits, shard uploads, the lock, byte-range reads of rows) ask
`isinstance(path, RemotePath)`.

fsspec is imported only for URLs. Storage options (endpoint, credentials) travel beside a path,
never inside a plan, a record or a store's attributes.

Errors of the object store's client (botocore, aiohttp, ...) that say the storage cannot be
used at all (an endpoint that cannot be reached, no or refused credentials, access denied, a
missing bucket) become one-line `StoreError`s naming the URL, here and only here
(`storage_problem`): every `RemotePath` method raises them, and the command line's last resort
asks `storage_problem` too.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import posixpath
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, TypeVar

from prebake.errors import PrebakeError, StoreError, one_line

StorageOptions = dict[str, Any]
Result = TypeVar("Result")

_UNREACHABLE = {  # class names (botocore, aiobotocore, aiohttp): the endpoint cannot be reached
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ProxyConnectionError",
    "ConnectionClosedError",
    "ClientConnectorError",
    "ServerDisconnectedError",
    "ServerTimeoutError",
}
_NO_CREDENTIALS = {"NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError"}
_CREDENTIALS_REFUSED = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "AuthFailure",
}
_ACCESS_DENIED = {"AccessDenied", "AllAccessDisabled", "Forbidden", "403"}
_CLIENT_MODULES = {
    "botocore",
    "aiobotocore",
    "s3fs",
    "aiohttp",
    "gcsfs",
    "google",
    "adlfs",
    "azure",
}


def storage_problem(error: BaseException, *, remote: bool = False) -> str | None:
    """Why an object store cannot be used, as one line, when `error` (raised by fsspec or its
    storage client) says so: the endpoint cannot be reached, credentials are missing or refused,
    access is denied, the bucket does not exist. None for any other error (a missing object, a
    damaged file: the caller's to handle). `remote`: `error` certainly came from an object
    store, so a bare PermissionError or ConnectionError is its own (not a local file's or pipe's)."""
    chain = [error]
    if error.__cause__ is not None:  # s3fs raises OSErrors caused by botocore's ClientError
        chain.append(error.__cause__)
    names = {cls.__name__ for cause in chain for cls in type(cause).__mro__}
    text = one_line(str(error)) or type(error).__name__
    code, bucket = _client_error(chain)
    if names & _NO_CREDENTIALS:
        return (
            f"no credentials for the object store ({text}); give them in --storage-options "
            "(storage_options=) or where its client looks (for S3: AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, an instance role)"
        )
    network = isinstance(error, ConnectionError | TimeoutError | socket.gaierror)
    if names & _UNREACHABLE or (remote and network):  # a local broken pipe is no network's
        return (
            f"cannot reach the object store ({text}); check the endpoint (endpoint_url in "
            "--storage-options) and the network"
        )
    if code == "NoSuchBucket":
        return f"bucket {bucket!r} does not exist" if bucket else "the bucket does not exist"
    if code in _CREDENTIALS_REFUSED:
        return f"the object store refused the credentials ({code}: {text})"
    if code in _ACCESS_DENIED or (remote and isinstance(error, PermissionError)):
        return f"access denied ({text}); check the credentials and the bucket's permissions"
    if isinstance(error, OSError) and code is None:
        return None  # missing objects, full disks, local files...: the caller's
    if type(error).__module__.split(".")[0] in _CLIENT_MODULES:
        return f"the object store failed: {type(error).__name__}: {text}"
    return None


def _client_error(chain: list[BaseException]) -> tuple[str | None, str | None]:
    """(error code, bucket) of a botocore ClientError in `chain`."""
    for cause in chain:
        response = getattr(cause, "response", None)
        if isinstance(response, dict) and isinstance(response.get("Error"), dict):
            details = response["Error"]
            return str(details.get("Code")), details.get("BucketName")
    return None, None


def _translated(method: Callable[..., Result]) -> Callable[..., Result]:
    """A `RemotePath` method whose storage errors (`storage_problem`) are one-line
    StoreErrors naming its URL."""

    @functools.wraps(method)
    def translated(self: RemotePath, *args: Any, **kwargs: Any) -> Result:
        try:
            return method(self, *args, **kwargs)
        except PrebakeError:
            raise
        except Exception as error:
            reason = storage_problem(error, remote=True)
            if reason is None:
                raise
            raise StoreError(f"{self.url}: {reason}") from None

    return translated


def missing(path: Path | RemotePath, what: str) -> str:
    """Why `path`, which does not exist, is missing, for a message: `no such <what>`, or that
    its bucket does not exist. Ask after `path.exists()`, which raises when the object store
    cannot be reached (an unreachable bucket only looks missing)."""
    if isinstance(path, RemotePath):
        bucket = path.bucket()
        if bucket is not None and not path.bucket_exists():
            return f"bucket {bucket!r} does not exist"
    return f"no such {what}"


def is_url(text: str) -> bool:
    """`proto://...` (fsspec URL) rather than a plain path."""
    scheme, separator, _ = text.partition("://")
    return bool(separator) and scheme.replace("+", "").replace("-", "").isalnum()


def as_path(
    location: str | Path | RemotePath, storage_options: Mapping[str, Any] | None = None
) -> Path | RemotePath:
    """A plain path or `file://` URL as a `Path`; any other fsspec URL as a `RemotePath`."""
    if isinstance(location, Path | RemotePath):
        return location
    text = str(location)
    if not is_url(text):
        return Path(text)
    if text.startswith("file://"):
        return Path(text.removeprefix("file://"))
    options = dict(storage_options or {})
    try:
        import fsspec

        fs, path = fsspec.core.url_to_fs(text, **options)
    except ImportError as error:  # e.g. s3:// without s3fs
        raise PrebakeError(
            f"{text}: {error}; install it (s3fs comes with pip install 'prebake[dask]')"
        ) from None
    except (ValueError, TypeError) as error:  # unknown protocol, bad storage options
        raise PrebakeError(f"{text}: {' '.join(str(error).split())}") from None
    return RemotePath(fs, path, options)


def listed(path: Path | RemotePath) -> Path | RemotePath:
    """`path` with everything under it listed once (one fs.find), so that `is_file`, `is_dir`,
    `iterdir`, `glob` and `rglob` below it ask the object store nothing more. Local: `path`."""
    return path.listed() if isinstance(path, RemotePath) else path


def location_text(path: Path | RemotePath) -> str:
    """How a store or source is named in settings and messages: an absolute path, or its URL."""
    return str(path.resolve())


def relative_location(path: str, root: str) -> str:
    """`path` relative to `root` (both as `location_text` gives them)."""
    if is_url(root):
        scheme = root.partition("://")[0] + "://"
        return posixpath.relpath(path.removeprefix(scheme), root.removeprefix(scheme))
    return os.path.relpath(path, root)


def parse_storage_options(text: str | None) -> StorageOptions:
    """`--storage-options` JSON: an object, passed to fsspec as keyword arguments."""
    if not text:
        return {}
    try:
        options = json.loads(text)
    except ValueError as error:
        raise PrebakeError(f"--storage-options is not valid JSON ({error})") from None
    if not isinstance(options, dict):
        raise PrebakeError("--storage-options must be a JSON object, e.g. '{\"anon\": true}'")
    return options


def read_range(path: Path | RemotePath, offset: int, nbytes: int) -> bytes:
    """`nbytes` bytes of a file from `offset` (fewer at its end); remote: one ranged GET."""
    if isinstance(path, RemotePath):
        return path.read_range(offset, offset + nbytes)
    with path.open("rb") as handle:
        handle.seek(offset)
        return handle.read(nbytes)


def read_tail(path: Path | RemotePath, nbytes: int) -> bytes:
    """The last `nbytes` bytes of a file (all of it when shorter); remote: one ranged GET."""
    if isinstance(path, RemotePath):
        return path.read_range(-nbytes, None)
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - nbytes))
        return handle.read(nbytes)


def storage_options_of(path: Path | RemotePath) -> StorageOptions | None:
    return path.storage_options if isinstance(path, RemotePath) else None


def relative_name(path: Path | RemotePath, root: Path | RemotePath) -> str:
    """`path` below `root`, for messages (`g_pixel_values/c/3/0/0/0`)."""
    if isinstance(path, RemotePath) and isinstance(root, RemotePath):
        return str(path.relative_to(root))
    assert isinstance(path, Path) and isinstance(root, Path), "both local or both remote"
    return str(path.relative_to(root))


def list_names(folder: Path | RemotePath) -> list[str]:
    """Names of the entries of `folder` (`os.listdir`)."""
    if isinstance(folder, RemotePath):
        return [child.name for child in folder.iterdir()]
    return os.listdir(folder)


def tree_bytes(folder: Path | RemotePath, skip: str) -> tuple[int, int]:
    """(bytes, files) under `folder`, leaving out any folder named `skip`."""
    if isinstance(folder, RemotePath):
        listed_files, _ = folder.listing_entries()
        kept = [
            size
            for name, (size, _) in listed_files.items()
            if skip not in PurePosixPath(name).relative_to(folder.path).parts[:-1]
        ]
        return sum(kept), len(kept)
    total = files = 0
    for parent, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if d != skip]
        for name in names:
            total += os.path.getsize(os.path.join(parent, name))
            files += 1
    return total, files


def zarr_store(path: Path | RemotePath, *, read_only: bool = True) -> Any:
    """What zarr-python opens: the `Path` itself (a LocalStore), or an `FsspecStore`."""
    if not isinstance(path, RemotePath):
        return path
    from zarr.storage import FsspecStore

    return FsspecStore.from_url(path.url, storage_options=path.storage_options, read_only=read_only)


def _version(info: dict[str, Any]) -> str:
    """What changes when an object is rewritten: its ETag (S3, GCS), else its modification time."""
    for key in ("ETag", "etag", "md5Hash", "LastModified", "last_modified", "mtime", "created"):
        if info.get(key) is not None:
            return str(info[key])
    return ""


@dataclass(frozen=True)
class RemoteStat:
    st_size: int


@dataclass
class _Listing:
    """Everything under `root`, from one fs.find: file sizes and folder names."""

    root: str
    files: dict[str, int]
    folders: set[str]
    versions: dict[str, str]  # ETag, or else modification time, of each file (as listed)

    def covers(self, path: str) -> bool:
        return path == self.root or path.startswith(self.root + "/")

    def children(self, path: str) -> list[str]:
        prefix = path + "/"
        found = {
            prefix + name[len(prefix) :].split("/", 1)[0]
            for name in (*self.files, *self.folders)
            if name.startswith(prefix)
        }
        return sorted(found)


class RemotePath:
    """A file or folder on an fsspec filesystem, with the `pathlib` methods prebake uses.

    Object stores have no folders: a folder exists when some object's key starts with it,
    `mkdir` does nothing, and writing one object (`write_bytes`, `upload`) is atomic.
    """

    def __init__(
        self,
        fs: Any,
        path: str,
        storage_options: Mapping[str, Any] | None = None,
        listing: _Listing | None = None,
    ) -> None:
        self.fs = fs
        self.path = path.rstrip("/") or path
        self.storage_options: StorageOptions = dict(storage_options or {})
        self._listing = listing if listing is not None and listing.covers(self.path) else None
        pure = PurePosixPath(self.path)  # the names pathlib gives, computed once
        self.parts, self.name, self.stem, self.suffix = (
            pure.parts,
            pure.name,
            pure.stem,
            pure.suffix,
        )

    # -- names ---------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return str(self.fs.unstrip_protocol(self.path))

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"RemotePath({self.url!r})"

    def __reduce__(self) -> tuple[Any, ...]:  # travels as (URL, options): fs objects need not
        return (as_path, (self.url, self.storage_options))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and self.url == other.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __lt__(self, other: RemotePath) -> bool:  # as pathlib sorts: part by part
        return self.parts < other.parts

    def _at(self, path: str) -> RemotePath:
        return RemotePath(self.fs, path, self.storage_options, self._listing)

    def __truediv__(self, name: str) -> RemotePath:
        return self._at(posixpath.join(self.path, name))

    @property
    def parent(self) -> RemotePath:
        return self._at(posixpath.dirname(self.path))

    def with_name(self, name: str) -> RemotePath:
        return self._at(str(PurePosixPath(self.path).with_name(name)))

    def relative_to(self, other: RemotePath) -> PurePosixPath:
        return PurePosixPath(self.path).relative_to(other.path)

    def resolve(self) -> RemotePath:
        return self

    def bucket(self) -> str | None:
        """The bucket (container) of an object store's path; None where paths have a root
        folder instead (memory://, ...)."""
        if getattr(self.fs, "root_marker", "/") != "":
            return None
        return self.path.split("/", 1)[0] or None

    # -- asking ----------------------------------------------------------------------------------
    def _fresh(self) -> Any:
        """The filesystem, its cached listings of this path dropped: other processes (workers,
        another build) write here, and a stale listing would hide their objects."""
        self.fs.invalidate_cache(self.path)
        return self.fs

    @_translated
    def listed(self) -> RemotePath:
        found = self._fresh().find(self.path, detail=True, withdirs=True)
        files = {
            name.rstrip("/"): int(info.get("size") or 0)
            for name, info in found.items()
            if info.get("type") != "directory"
        }
        versions = {
            name.rstrip("/"): _version(info)
            for name, info in found.items()
            if info.get("type") != "directory"
        }
        folders = {
            name.rstrip("/") for name, info in found.items() if info.get("type") == "directory"
        }
        derived: set[str] = set()  # object stores list folders partly or not at all: derive
        for name in files:
            parent = posixpath.dirname(name)
            while parent not in derived and self._under(parent):
                derived.add(parent)
                parent = posixpath.dirname(parent)
        folders |= derived
        if files or folders:
            folders.add(self.path)
        return RemotePath(
            self.fs, self.path, self.storage_options, _Listing(self.path, files, folders, versions)
        )

    def listing_entries(self) -> tuple[dict[str, tuple[int, str]], set[str]]:
        """Everything under this folder as listed (by `listed`): {file: (size, version)} and
        the folders, as filesystem paths."""
        tree = self if self._listing is not None else self.listed()
        assert tree._listing is not None
        listing = tree._listing
        files = {
            name: (size, listing.versions.get(name, ""))
            for name, size in listing.files.items()
            if self._under(name)
        }
        return files, {name for name in listing.folders if self._under(name)}

    def _under(self, path: str) -> bool:
        return path == self.path or path.startswith(self.path + "/")

    @_translated
    def exists(self) -> bool:
        if self._listing is not None:
            return self.path in self._listing.files or self.path in self._listing.folders
        return bool(self._fresh().exists(self.path))

    @_translated
    def is_file(self) -> bool:
        if self._listing is not None:
            return self.path in self._listing.files
        return bool(self._fresh().isfile(self.path))

    @_translated
    def is_dir(self) -> bool:
        if self._listing is not None:
            return self.path in self._listing.folders
        return bool(self._fresh().isdir(self.path))

    @_translated
    def stat(self) -> RemoteStat:
        if self._listing is not None and self.path in self._listing.files:
            return RemoteStat(self._listing.files[self.path])
        return RemoteStat(int(self._fresh().info(self.path)["size"]))

    @_translated
    def iterdir(self) -> Iterator[RemotePath]:
        if self._listing is not None:
            names = self._listing.children(self.path)
        else:
            try:
                listing = self._fresh().ls(self.path, detail=False)
                names = sorted(name.rstrip("/") for name in listing)
            except FileNotFoundError:
                names = []
        return iter([self._at(name) for name in names if name.rstrip("/") != self.path])

    def glob(self, pattern: str) -> Iterator[RemotePath]:
        """Children whose name matches `pattern` (one level, as prebake's patterns need)."""
        return iter([p for p in self.iterdir() if fnmatch.fnmatchcase(p.name, pattern)])

    @_translated
    def bucket_exists(self) -> bool:
        bucket = self.bucket()
        return bucket is None or bool(self._fresh().exists(bucket))

    # -- reading and writing --------------------------------------------------------------------
    @_translated
    def read_range(self, start: int, end: int | None) -> bytes:
        """Bytes `start` to `end` of the object (negative: from its end); one ranged GET."""
        return bytes(self.fs.cat_file(self.path, start=start, end=end))

    @_translated
    def open(self, mode: str = "r", **options: Any) -> IO[Any]:
        # Fresh: an object rewritten since it was listed (a store that grew) must not be
        # opened by a cached ETag, which S3 refuses.
        return self._fresh().open(self.path, mode, **options)

    @_translated
    def read_bytes(self) -> bytes:
        return bytes(self.fs.cat_file(self.path))

    def read_text(self) -> str:
        return self.read_bytes().decode()

    @_translated
    def write_bytes(self, data: bytes, *, exclusive: bool = False) -> None:
        """One PUT: the object appears whole or not at all. `exclusive` refuses to replace an
        existing object (FileExistsError): atomic on S3 (If-None-Match), checked elsewhere."""
        self.fs.pipe_file(self.path, data, mode="create" if exclusive else "overwrite")

    @_translated
    def upload(self, local: Path) -> None:
        """Put a local file here as one object (a multipart upload is atomic too)."""
        self.fs.put_file(str(local), self.path)

    @_translated
    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.rm_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    @_translated
    def rmtree(self) -> None:
        if self._fresh().exists(self.path):
            self.fs.rm(self.path, recursive=True)

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to do: an object store makes folders of keys."""


AnyPath = Path | RemotePath  # a local path or a remote one, as `as_path` gives them
