"""Data in object storage: fsspec URLs as source and audio paths, and reads that retry.

A source path (or a manifest's audio path) may be any fsspec URL: ``s3://bucket/prefix/``,
``gs://...``, ``hf://datasets/...``, ``file:///...``. Listing and opening go through
``fsspec.core.url_to_fs`` with the source's ``storage_options``; when those are empty the backend's
own configuration applies (for ``s3://``, botocore's: ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN`` or ``AWS_PROFILE``, ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL`` for an S3-compatible server, ``AWS_DEFAULT_REGION``).

Faults: a read that fails with an I/O or connection error is retried with exponential backoff
(:class:`RetryPolicy`). What happens after the last attempt is the caller's decision (a source
skips the file, see :class:`granite_train.data.sources.SourceReader`); an endpoint that cannot be
reached at all becomes a :class:`DataError` naming the URL and the settings to check.

Audio named by a URL is read by :func:`read_url` (installed as
:func:`granite_train.audio.io.set_url_reader` when this module is imported) with the storage
options of the source that named it: :func:`register_storage` records them per URL prefix when a
reader starts, in the process (or DataLoader worker) that reads, so credentials never enter
records or checkpoints.
"""

from __future__ import annotations

import copy
import fnmatch
import logging
import posixpath
import re
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from granite_train.audio import io as audio_io
from granite_train.data.errors import DataError

log = logging.getLogger(__name__)

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_GLOB_CHARS = ("*", "?", "[")

# the package that provides each protocol's fsspec backend, for the "pip install" hint
BACKENDS = {
    "s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
    "abfss": "adlfs", "hf": "huggingface_hub", "http": "aiohttp", "https": "aiohttp",
}  # fmt: skip
# where each backend takes its credentials and endpoint from, for the error of an unreachable URL
SETTINGS = {
    "s3": "storage_options (key, secret, endpoint_url) or the environment: AWS_ACCESS_KEY_ID, "
    "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL for an "
    "S3-compatible server",
    "gs": "storage_options (token, project) or GOOGLE_APPLICATION_CREDENTIALS",
    "az": "storage_options (account_name, account_key / sas_token) or AZURE_STORAGE_CONNECTION_STRING",
    "hf": "HF_TOKEN, and HF_ENDPOINT for a mirror",
}
SETTINGS.update(s3a=SETTINGS["s3"], gcs=SETTINGS["gs"], abfs=SETTINGS["az"], abfss=SETTINGS["az"])


def is_url(path: Any) -> bool:
    """Whether ``path`` is an fsspec URL (``protocol://...``) rather than a local path."""
    return isinstance(path, str) and bool(_URL.match(path))


def protocol_of(url: str) -> str:
    return url.split("://", 1)[0].lower()


def has_glob(path: str) -> bool:
    return any(c in path for c in _GLOB_CHARS)


def settings_hint(url: str) -> str:
    """What configures access to ``url``'s storage (credentials, endpoint)."""
    return SETTINGS.get(protocol_of(url), "the storage_options of the source")


def check_backend(url: str, what: str = "") -> None:
    """A :class:`DataError` saying which package to install when ``url``'s protocol has no backend."""
    import fsspec

    protocol = protocol_of(url)
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError as err:
        package = BACKENDS.get(protocol, f"the fsspec backend for {protocol}://")
        raise DataError(
            f"{what or 'path'} {url!r}: reading {protocol}:// URLs needs {package}: pip install {package} ({err})"
        ) from err
    except ValueError as err:  # fsspec: "Protocol not known"
        raise DataError(
            f"{what or 'path'} {url!r}: fsspec knows no protocol {protocol!r} (e.g. s3://, gs://, hf://, "
            "file://); fix the URL or give a local path"
        ) from err


def filesystem(url: str, storage_options: Mapping[str, Any] | None = None, what: str = ""):
    """``(fs, path)`` for ``url`` through ``fsspec.core.url_to_fs``; a missing backend is a
    :class:`DataError` naming the package to install."""
    from fsspec.core import url_to_fs

    check_backend(url, what)
    return url_to_fs(url, **dict(storage_options or {}))


def _full(fs, path: str, like: str) -> str:
    """``path`` as listed by ``fs`` back as a URL with the protocol the user wrote (``s3a://``)."""
    if is_url(path):
        return path
    return f"{protocol_of(like)}://{path.lstrip('/') if protocol_of(like) != 'file' else path}"


def url_parent(url: str) -> str:
    """The folder of a file URL (``s3://b/x/m.csv`` -> ``s3://b/x``)."""
    protocol, rest = url.split("://", 1)
    return f"{protocol}://{posixpath.dirname(rest.rstrip('/'))}"


def join_url(base: str, relative: str) -> str:
    """``relative`` resolved against the folder URL ``base`` (``..`` and ``./`` normalised)."""
    protocol, rest = base.rstrip("/").split("://", 1)
    joined = posixpath.normpath(posixpath.join("/" + rest, relative)).lstrip("/")
    if protocol == "file":
        joined = "/" + joined
    return f"{protocol}://{joined}"


def list_files(url: str, pattern: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Files of ``url`` matching ``pattern`` (a basename glob such as ``*.parquet``), sorted: a glob
    URL's matches, every matching file under a prefix (recursively), or the file itself."""
    fs, path = filesystem(url, storage_options)
    if has_glob(path):
        found = fs.glob(path, detail=True)
        files = [p for p, info in found.items() if info.get("type") == "file"]
    elif fs.isdir(path):
        files = [p for p in fs.find(path) if fnmatch.fnmatch(posixpath.basename(p), pattern)]
    elif fs.isfile(path):
        files = [path]
    else:
        files = []
    return sorted(_full(fs, p, url) for p in files)


def url_kind(url: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """The source kind of a URL prefix, from a listing: ``audiofolder`` when it has a
    ``metadata.csv`` / ``metadata.jsonl``, ``parquet`` when it holds parquet files."""
    fs, path = filesystem(url, storage_options)
    try:
        names = {posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False)}
        if names & {"metadata.csv", "metadata.jsonl"}:
            return "audiofolder"
        if any(p.endswith(".parquet") for p in fs.find(path)):
            return "parquet"
    except FileNotFoundError:
        names = set()
    raise DataError(
        f"{url!r}: found neither parquet files nor a metadata.csv / metadata.jsonl under this prefix"
        f"{' (it lists: ' + ', '.join(sorted(names)[:8]) + ')' if names else ' (nothing is there)'}: "
        "give a parquet prefix or glob, a .csv / .tsv / .jsonl manifest URL, or set kind="
    )


def metadata_url(url: str, split: str, storage_options: Mapping[str, Any] | None = None) -> str | None:
    """The ``metadata.csv`` / ``metadata.jsonl`` of an audiofolder in object storage
    (``<url>/<split>/`` first), or ``None``."""
    fs, path = filesystem(url, storage_options)
    for folder in (posixpath.join(path, split), path):
        for name in ("metadata.csv", "metadata.jsonl"):
            if fs.isfile(posixpath.join(folder, name)):
                return _full(fs, posixpath.join(folder, name), url)
    return None


def read_head(url: str, size: int, storage_options: Mapping[str, Any] | None = None) -> bytes:
    """The first ``size`` bytes of the file at ``url``."""
    fs, path = filesystem(url, storage_options)
    with fs.open(path, "rb") as f:
        return f.read(size)


# -- faults ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a failed read is tried again.

    Attributes:
        attempts: Tries of one read in all (1: no retry).
        backoff: Seconds to wait before the first retry; each further retry waits twice as long.
        backoff_max: The longest wait between two tries, in seconds.
    """

    attempts: int = 6
    backoff: float = 1.0
    backoff_max: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.backoff < 0 or self.backoff_max < self.backoff:
            raise ValueError(
                f"need read_attempts >= 1 and 0 <= retry_backoff <= retry_backoff_max, got {self.attempts}, "
                f"{self.backoff}, {self.backoff_max}"
            )

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failed try in a row."""
        return min(self.backoff * 2 ** max(failures - 1, 0), self.backoff_max)


# top-level modules whose exceptions are I/O of some kind (HTTP clients, storage SDKs)
_IO_MODULES = {
    "botocore", "aiobotocore", "aiohttp", "urllib3", "requests", "httpx", "httpcore", "fsspec", "s3fs",
    "gcsfs", "adlfs", "google", "azure", "huggingface_hub",
}  # fmt: skip
# exceptions that say the server could not be reached or did not answer (not a problem of one file)
_UNREACHABLE = {
    "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
    "ClientConnectorError", "ClientConnectionError", "ServerDisconnectedError", "ServerTimeoutError",
    "ConnectError", "ConnectTimeout", "ReadTimeout", "ProxyConnectionError", "ConnectionError",
}  # fmt: skip


def _chain(err: BaseException, implicit: bool = True) -> Iterator[BaseException]:
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or (err.__context__ if implicit else None)


def is_transient(err: BaseException) -> bool:
    """Whether ``err`` is an I/O or connection fault worth retrying, not a bug in the data (a
    :class:`DataError`, a parse error, a missing column) that the next try would hit again."""
    if isinstance(err, DataError):
        return False
    for e in _chain(err, implicit=False):
        if isinstance(e, OSError) or type(e).__module__.split(".")[0] in _IO_MODULES:
            return True
    return False


def is_unreachable(err: BaseException) -> bool:
    """Whether ``err`` says the server was unreachable or silent (connection refused, DNS, timeout)
    rather than that one file cannot be read (missing, access denied)."""
    for e in _chain(err):
        if (
            isinstance(e, (ConnectionError, TimeoutError, socket.gaierror))
            or type(e).__name__ in _UNREACHABLE
        ):
            return True
    return False


def describe(err: BaseException) -> str:
    """``Type: message`` on one line (botocore's messages span several)."""
    text = " ".join(str(err).split()) or repr(err)
    return f"{type(err).__name__}: {text[:300]}"


def unreachable_error(what: str, url: str, err: BaseException, attempts: int) -> DataError:
    """The error for a URL whose server did not answer in ``attempts`` tries."""
    return DataError(
        f"{what}: cannot reach {url!r} ({describe(err)}) after {attempts} attempt(s); check the endpoint and "
        f"credentials: {settings_hint(url)}; raise read_attempts / retry_backoff to wait longer. A training "
        "run stopped by this resumes from its last checkpoint."
    )


def open_error(what: str, url: str, err: BaseException, attempts: int) -> DataError:
    """The error for a source in object storage that could not be opened (listed, its schema read)."""
    if is_unreachable(err):
        return unreachable_error(what, url, err, attempts)
    return DataError(
        f"{what}: cannot open {url!r} after {attempts} attempt(s): {describe(err)}; check that it exists "
        f"and that these credentials may read it: {settings_hint(url)}"
    )


# -- storage options of audio URLs -----------------------------------------------------------------

_STORAGE: dict[str, tuple[dict[str, Any], RetryPolicy]] = {}


def _bucket_of(url: str) -> str:
    protocol, rest = url.split("://", 1)
    return f"{protocol}://{rest.split('/', 1)[0]}"


def register_storage(url: str, options: Mapping[str, Any], policy: RetryPolicy, prefix: bool = True) -> None:
    """Read URLs under the folder ``url`` (``prefix``) and, unless another source claimed it first,
    anywhere in its bucket with ``options`` and ``policy``."""
    entry = (dict(options), policy)
    if prefix:
        _STORAGE[url.rstrip("/")] = entry
    _STORAGE.setdefault(_bucket_of(url), entry)


def storage_for(url: str) -> tuple[dict[str, Any], RetryPolicy]:
    """The storage options and retry policy registered for the longest prefix of ``url``."""
    matches = [k for k in _STORAGE if url == k or url.startswith(k + "/")]
    if not matches:
        return {}, RetryPolicy()
    return _STORAGE[max(matches, key=len)]


_LAST: tuple[str, bytes] | None = None  # header, then samples: one download per file
_CACHE_BYTES = 64 << 20


def read_url(url: str) -> bytes:
    """The bytes of the file at ``url``, with the storage options registered for it; I/O faults are
    retried by its source's :class:`RetryPolicy`. A missing file is not retried (it is a data
    problem: the caller counts it); after the last attempt the error is raised, or a
    :class:`DataError` when the server was unreachable."""
    global _LAST
    if _LAST is not None and _LAST[0] == url:
        return _LAST[1]
    options, policy = storage_for(url)
    failures = 0
    while True:
        try:
            fs, path = filesystem(url, options, "audio")
            with fs.open(path, "rb") as f:
                data = f.read()
            break
        except FileNotFoundError:
            raise
        except Exception as err:
            if not is_transient(err):
                raise
            failures += 1
            if failures >= policy.attempts:
                if is_unreachable(err):
                    raise unreachable_error("audio", url, err, failures) from err
                raise
            wait = policy.delay(failures)
            log.warning("audio %s: read failed (%s); retry %d of %d in %.1f s", url, describe(err),
                        failures, policy.attempts - 1, wait)  # fmt: skip
            time.sleep(wait)
    _LAST = (url, data) if len(data) <= _CACHE_BYTES else None
    return data


# audio named by a URL is decoded in granite_train.audio.io, which may not import this module
audio_io.set_url_reader(read_url)


# -- skipping a dead file in a datasets stream -----------------------------------------------------

# the examples iterables whose resume state :func:`skip_shard` knows how to move past a file
_SKIPPABLE = {
    "ArrowExamplesIterable",
    "ExamplesIterable",
    "StepExamplesIterable",
    "RebatchedArrowExamplesIterable",
}


def live_state(state: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The same stream position, loaded so that the stream's state stays live in every layer.

    ``RebatchedArrowExamplesIterable`` (``.iter(batch_size=1)``) resumes by loading its
    ``previous_state`` into the iterable below it, which replaces that iterable's state object: its
    own ``examples_iterable`` entry then goes stale, and the position of a failed read cannot be
    told from the stream's state. Moving ``previous_state`` into ``examples_iterable`` (loaded in
    place, from the top) gives the same position with every layer live.
    """
    if state is None:
        return None
    new = copy.deepcopy(dict(state))
    node = new.get("examples_iterable")
    while isinstance(node, dict):
        if node.get("previous_state"):
            node["examples_iterable"] = node["previous_state"]
            node["previous_state"] = None
        node = node.get("examples_iterable")
    return new


def skip_shard(state: Mapping[str, Any]) -> tuple[dict[str, Any], int] | None:
    """A live ``datasets`` stream state (see :func:`live_state`) moved to the start of the file
    after the one it is in, and that file's index in the stream; ``None`` for a stream layout this
    does not know.

    The state is a chain of examples iterables: the innermost (``ArrowExamplesIterable``) records
    ``shard_idx`` (the file) and ``shard_example_idx`` (the row in it); ``StepExamplesIterable``
    (an example-level split between readers) counts rows modulo the step, restarted at 0 on the
    next file (every reader skips the same file the same way, so the shares stay disjoint); and
    ``RebatchedArrowExamplesIterable`` (``.iter(batch_size=1)``) starts at its inner position with
    no chunk to skip.
    """
    new = copy.deepcopy(dict(state))
    chain, node = [], new.get("examples_iterable")
    while isinstance(node, dict):
        if node.get("type") not in _SKIPPABLE:
            return None
        chain.append(node)
        if "shard_idx" in node:
            break
        node = node.get("examples_iterable")
    if not chain or "shard_idx" not in chain[-1]:
        return None
    leaf = chain[-1]
    shard = int(leaf["shard_idx"])
    leaf["shard_idx"], leaf["shard_example_idx"] = shard + 1, 0
    for node in chain[:-1]:
        if "stepped" in node:
            node["stepped"] = 0
        if "previous_state" in node:
            node["previous_state"] = None
            node["num_chunks_since_previous_state"] = 0
            node["cropped_chunk_length"] = 0
    return new, shard


def shard_files(files: list[str], num_streams: int, index: int, num_shards: int) -> list[str] | None:
    """The files behind the shard indices of one reader's stream, as ``split_dataset_by_node``
    shares them: every ``num_shards``-th file when they divide evenly, else all files (an
    example-level split); ``None`` when the stream is not one shard per file."""
    if not files or num_streams != len(files):
        return None
    if num_shards > 1 and len(files) % num_shards == 0:
        return files[index::num_shards]
    return list(files)


def failing_file(err: BaseException, files: list[str]) -> str | None:
    """Which of ``files`` the error ``err`` is about (its ``filename`` or a path in its message)."""
    for e in _chain(err):
        names = [getattr(e, "filename", None), str(e)]
        text = " ".join(str(n) for n in names if n)
        hits = [f for f in files if f in text or (is_url(f) and f.split("://", 1)[1] in text)]
        if hits:
            return max(hits, key=len)
    return None


__all__ = [
    "RetryPolicy",
    "check_backend",
    "describe",
    "failing_file",
    "filesystem",
    "has_glob",
    "live_state",
    "is_transient",
    "is_unreachable",
    "is_url",
    "join_url",
    "list_files",
    "metadata_url",
    "open_error",
    "read_head",
    "read_url",
    "register_storage",
    "settings_hint",
    "shard_files",
    "skip_shard",
    "storage_for",
    "unreachable_error",
    "url_kind",
    "url_parent",
]
