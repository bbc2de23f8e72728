"""The storage root every node of a cluster reads and writes: a directory (local, or a shared mount
such as NFS/EFS) or an object store prefix `s3://bucket/prefix`.

    <root>/shards/<sha256>.tar      training shards, content-addressed: written once, never replaced
    <root>/runs/<run name>/...      Ray Train checkpoints of each task

A shard's name is its digest, so a reader checks the bytes it got against the name before the first
sample is used (`local_shards`), and publishing the same shard twice is a no-op (`publish_shards`).

S3 settings come from the standard AWS environment: AWS_ENDPOINT_URL (e.g. the team stack's
SeaweedFS, http://127.0.0.1:PORT), AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION.
Everything goes through pyarrow's filesystems, the ones Ray Train itself writes checkpoints with.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from pyarrow import fs as pafs

SHARD_NAME = re.compile(r"^([0-9a-f]{64})\.tar$")
CONTENT_NAME = re.compile(r"^([0-9a-f]{64})\.\w+$")  # any published file: <sha256>.<suffix>
_CHUNK = 1 << 20


class StorageError(RuntimeError):
    """A storage root that cannot be read or written, or a shard whose bytes differ from its name."""


def is_uri(root: str) -> bool:
    return "://" in root


def filesystem(root: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) of a storage root or of any path below one."""
    if root.startswith("s3://"):
        parsed = urlparse(root)
        return s3_filesystem(), f"{parsed.netloc}{parsed.path}".rstrip("/")
    if is_uri(root):
        raise StorageError(f"storage root {root!r}: only a directory or s3://bucket/prefix is supported")
    if not os.path.isabs(root):
        raise StorageError(f"storage root {root!r} must be an absolute path (Ray workers change directory)")
    return pafs.LocalFileSystem(), root.rstrip("/") or "/"


def s3_filesystem() -> pafs.S3FileSystem:
    """S3 from the AWS environment; an AWS_ENDPOINT_URL (any S3-compatible store) is addressed path-style."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    kw: dict = {"region": os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"}
    if endpoint:
        url = urlparse(endpoint)
        kw.update(endpoint_override=url.netloc or url.path, scheme=url.scheme or "https")
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        kw.update(access_key=key, secret_key=secret, session_token=os.environ.get("AWS_SESSION_TOKEN"))
    return pafs.S3FileSystem(**kw)


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def shard_url(root: str, sha256: str) -> str:
    return join(root, "shards", f"{sha256}.tar")


def publish_shards(files: list[tuple[str, str]], root: str, folder: str = "shards") -> list[str]:
    """Copy local files `(path, sha256)` into `root/<folder>/<sha256><suffix>` (shards: `.tar`), each
    at most once; returns their URLs in order. A file already there is kept (its name is its
    content). On a directory the copy lands under a temporary name and is renamed into place; an S3
    PUT is atomic by itself. So a reader never sees half a file."""
    store, base = filesystem(root)
    store.create_dir(f"{base}/{folder}", recursive=True)
    urls = []
    for path, sha in files:
        name = f"{sha}{Path(path).suffix}"
        target = f"{base}/{folder}/{name}"
        if store.get_file_info(target).type == pafs.FileType.NotFound:
            if isinstance(store, pafs.LocalFileSystem):
                tmp = f"{target}.{os.getpid()}.tmp"
                pafs.copy_files(path, tmp, destination_filesystem=store)
                os.replace(tmp, target)
            else:
                pafs.copy_files(path, target, destination_filesystem=store)
        urls.append(join(root, folder, name))
    return urls


def publish_file(path: str, root: str, folder: str) -> str:
    """`publish_shards` for one file (e.g. the classifier the search measures with)."""
    return publish_shards([(path, sha256_of(path))], root, folder)[0]


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def local_shards(shards: list[str], cache_dir: str | None = None) -> list[str]:
    """Local, verified files for a list of shard paths/URLs, in order.

    - `s3://…/<sha256>.tar`: downloaded once per node into `cache_dir` (default
      $LIFELONG_CACHE or <tmp>/lifelong-cache), checked against the digest in its name, then renamed
      into place; a cached file is trusted because only verified bytes are ever renamed there.
    - a path named `<sha256>.tar` (a storage root on a shared mount): checked in place, again whenever
      its size or mtime changed.
    - any other path (the repo's own data/shards, verified by the stage against its manifest): as is.
    A mismatch is a StorageError naming the shard; nothing partial is left in the cache.
    """
    out = []
    for shard in shards:
        name = shard.rsplit("/", 1)[-1]
        match = SHARD_NAME.match(name)
        if shard.startswith("s3://"):
            if not match:
                raise StorageError(f"{shard}: a shard URL must end in <sha256>.tar (written by publish_shards)")
            out.append(_fetch(shard, match.group(1), Path(cache_dir or default_cache_dir()) / "shards"))
        elif is_uri(shard):
            raise StorageError(f"{shard}: only paths and s3:// URLs are supported")
        else:
            if match:
                try:
                    st = os.stat(shard)
                except OSError as err:
                    raise StorageError(f"shard {shard} cannot be read ({err}); was it published?") from None
                seen = (shard, st.st_mtime_ns, st.st_size)
                if seen not in _VERIFIED:
                    _check(shard, match.group(1), shard)
                    _VERIFIED.add(seen)
            out.append(shard)
    return out


_VERIFIED: set[tuple[str, int, int]] = set()  # (path, mtime_ns, size) of checked shards


def local_file(path_or_url: str, cache_dir: str | None = None) -> str:
    """A local copy of one file of the storage root (a checkpoint's model file, a published
    classifier): s3:// is downloaded once into the cache (checked against its name when it was
    published by content; checkpoint files are never rewritten under the same name); a path is
    returned as it is."""
    if not path_or_url.startswith("s3://"):
        if is_uri(path_or_url):
            raise StorageError(f"{path_or_url}: only paths and s3:// URLs are supported")
        return path_or_url
    name = path_or_url.rsplit("/", 1)[-1]
    if match := CONTENT_NAME.match(name):  # published by content: fetched and checked like a shard
        return _fetch(path_or_url, match.group(1), Path(cache_dir or default_cache_dir()) / "files")
    key = hashlib.sha256(path_or_url.encode()).hexdigest()[:24]
    return _download(path_or_url, Path(cache_dir or default_cache_dir()) / "files" / key / name)


def url_of(checkpoint_path: str, filesystem_: pafs.FileSystem) -> str:
    """A Ray Train checkpoint's (path, filesystem) as the URL every node can open."""
    return f"s3://{checkpoint_path}" if isinstance(filesystem_, pafs.S3FileSystem) else checkpoint_path


def default_cache_dir() -> str:
    return os.environ.get("LIFELONG_CACHE") or os.path.join(tempfile.gettempdir(), "lifelong-cache")


def _fetch(url: str, sha: str, cache: Path) -> str:
    """A content-addressed file (`<sha256>.<suffix>`) into `cache`, checked against its name."""
    return _download(url, cache / url.rsplit("/", 1)[-1], sha=sha)


def _download(url: str, target: Path, sha: str | None = None) -> str:
    """`url` into `target` once: written under a temporary name, checked against `sha` when given,
    then renamed into place, so the cache only ever holds whole (and, with `sha`, verified) files."""
    if target.is_file():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    store, path = filesystem(url)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with store.open_input_stream(path) as src:
                    while chunk := src.read(_CHUNK):
                        out.write(chunk)
            except OSError as err:
                hint = ("; was it published? (the train stage publishes a task's shards before training)"
                        if sha else "")
                raise StorageError(f"{'shard ' if sha else ''}{url} cannot be read ({err}){hint}") from None
        if sha:
            _check(tmp, sha, url)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return str(target)


def _check(path: str, sha: str, name: str) -> None:
    try:
        got = sha256_of(path)
    except OSError as err:
        raise StorageError(f"shard {name} cannot be read ({err})") from None
    if got != sha:
        raise StorageError(f"shard {name} is corrupt: its sha256 is {got[:12]}…, its name says {sha[:12]}…; "
                           "delete it from the storage root and re-run the stage (it is published again)")
