"""The object store (s3://, any S3-compatible server) that every node of a cluster reaches: an
experiment there (Remote), its lock (ObjectLock), and the bounds on every request.

On an object store the launch works in a private mirror of the experiment (every file but the
checkpoints), writes back what it changed, and lets Ray Tune write the trials straight to the
store (RunConfig's storage_path and storage_filesystem); `status` and `report` read a mirror in
the cache. Files move between the store and a mirror with pyarrow.fs.copy_files. An S3 URI may
carry pyarrow's options, e.g. s3://bucket/runs?endpoint_override=10.0.0.1:9000&scheme=http, or
take the endpoint from AWS_ENDPOINT_URL; credentials come from the usual AWS variables or files.

The lock (locks.py's protocol, held with its one heartbeat): the lock object is created with
`If-None-Match: *` and a stale one (same test) is replaced with `If-Match: <its ETag>`: the store
accepts exactly one of any number of racing writes. The holder rewrites it every 20 s with
`If-Match` on its own ETag, so a holder that was taken over (paused > 120 s) learns it at its next
heartbeat and says so; it does not stop its trials (their files are per trial and idempotent).
Staleness is judged by the server's own clock (Date vs Last-Modified), so clock skew between hosts
does not matter. Needs a store with conditional writes (AWS S3 since 2024, MinIO, moto) and boto3.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from urllib.parse import parse_qs

from ..errors import GridrunError
from . import locks
from .layout import LOCK


def split_uri(uri: str) -> tuple[str, str]:
    base, _, query = uri.partition("?")
    return base.rstrip("/"), query


# Bounds on every request to an object store, so that a refused connection, missing credentials or
# an endpoint that accepts and never answers is one line within 30 s (the SDK's defaults retried for
# 100-190 s). The request timeout is a stall limit (no byte for that long), not a cap on a transfer.
S3_CONNECT_S, S3_REQUEST_S, S3_ATTEMPTS = 5.0, 8.0, 2
S3_OPTIONS = ("endpoint_override", "scheme", "region", "allow_bucket_creation", "allow_bucket_deletion",
              "tls_ca_file_path")  # the URI's ?options (pyarrow's names)


def _filesystem(storage: str):
    """(pyarrow S3FileSystem with the bounds above, bucket/prefix) for an s3:// URI."""
    import pyarrow.fs as pafs

    base, query = split_uri(storage)
    q = {k: v[-1] for k, v in parse_qs(query).items()}
    bad = sorted(set(q) - set(S3_OPTIONS))
    if bad:
        raise GridrunError(f"--storage {storage}: unknown option {bad[0]!r}: an s3:// URI takes "
                           f"{', '.join(S3_OPTIONS)}")
    flags = {k: q[k].lower() in ("1", "true", "yes") for k in ("allow_bucket_creation", "allow_bucket_deletion") if k in q}
    root = base[len("s3://"):].strip("/")
    if not root:
        raise GridrunError(f"--storage {storage}: name a bucket (s3://bucket/prefix)")
    region = q.get("region") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region and not q.get("endpoint_override") and not os.environ.get("AWS_ENDPOINT_URL"):
        try:  # AWS itself: the bucket's region, as from_uri found it
            region = pafs.resolve_s3_region(root.split("/")[0])
        except (OSError, ValueError) as e:
            raise unreachable(storage, e) from None
    fs = pafs.S3FileSystem(endpoint_override=q.get("endpoint_override"), scheme=q.get("scheme"), region=region,
                           tls_ca_file_path=q.get("tls_ca_file_path"), connect_timeout=S3_CONNECT_S,
                           request_timeout=S3_REQUEST_S, **flags,
                           retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=S3_ATTEMPTS))
    return fs, root


def _reason(e: Exception) -> str:
    """Why a store could not be reached, in words (the SDK's text is a paragraph)."""
    text = str(e)
    if "curlCode: 7" in text or "Could not connect" in text or "Connection refused" in text:
        return "connection refused"
    if "curlCode: 28" in text or "Timeout" in text or "timed out" in text.lower():
        return f"no answer within {S3_REQUEST_S:g}s"
    if "ACCESS_DENIED" in text or "AccessDenied" in text or "InvalidAccessKeyId" in text or "SignatureDoesNotMatch" in text:
        return "access denied: check the credentials"
    return (text.strip().splitlines() or [type(e).__name__])[0][:160]


def unreachable(storage: str, e: Exception) -> GridrunError:
    return GridrunError(f"--storage {storage}: cannot reach the object store ({_reason(e)}): check the endpoint "
                        f"(endpoint_override= or AWS_ENDPOINT_URL), the network and the AWS credentials")


def _check_credentials(storage: str) -> None:
    """Credentials must be found (environment, profile or instance role) before any request: without
    them the SDK signs nothing and the store's refusal reads as something else."""
    try:
        import botocore.session
    except ImportError:  # pyarrow alone: its own error will say it
        return
    try:
        found = botocore.session.get_session().get_credentials()
    except Exception as e:  # a broken profile file
        raise GridrunError(f"--storage {storage}: cannot read the AWS credentials ({str(e)[:160]})") from None
    if found is None:
        raise GridrunError(f"--storage {storage}: no AWS credentials found: set AWS_ACCESS_KEY_ID and "
                           f"AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) for the object store")


class Remote:
    """One experiment in an object store: its path there, Ray's view of it, a local mirror."""

    def __init__(self, storage: str, name: str):
        base, self.query = split_uri(storage)
        self.fs, root = _filesystem(storage)
        self.root, self.name = root.rstrip("/"), name
        self.path = f"{self.root}/{name}"
        self.uri = f"{base}/{name}"
        self.storage = storage
        _check_credentials(storage)
        try:  # one request now: an unreachable store is said here, not deep inside a command
            self.fs.get_file_info(self.root)
        except OSError as e:
            raise unreachable(storage, e) from None

    def exists(self, path: str | None = None) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(path or self.path).type != pafs.FileType.NotFound

    def files(self, path: str | None = None) -> list:
        import pyarrow.fs as pafs

        sel = pafs.FileSelector(path or self.path, recursive=True, allow_not_found=True)
        return [i for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.File]

    def pull(self, dest: Path) -> Path:
        """Mirror the experiment into `dest` (every file but checkpoints, each with the store's
        modification time; a checkpoint is mirrored as its empty folder, which says it exists);
        files gone from the store go from the mirror too."""
        dest.mkdir(parents=True, exist_ok=True)
        keep = set()
        for info in self.files():
            rel = info.path[len(self.path) + 1:]
            parts = rel.split("/")
            if any(p.startswith("checkpoint_") for p in parts):
                at = next(i for i, p in enumerate(parts) if p.startswith("checkpoint_"))
                (dest / "/".join(parts[:at + 1])).mkdir(parents=True, exist_ok=True)
                continue
            local, mtime = dest / rel, info.mtime.timestamp() if info.mtime else time.time()
            keep.add(local)
            if local.is_file() and local.stat().st_size == info.size and local.stat().st_mtime == mtime:
                continue
            local.parent.mkdir(parents=True, exist_ok=True)
            self._copy(info.path, local, down=True)
            os.utime(local, (mtime, mtime))
        for f in [p for p in dest.rglob("*") if p.is_file() and p not in keep]:
            f.unlink()
        return dest

    def push(self, src: Path, names: list[str]) -> None:
        """Write files of the mirror's top level back to the store."""
        for n in names:
            if (src / n).is_file():
                self._copy(src / n, f"{self.path}/{n}")

    def upload(self, src: Path) -> int:
        """Every regular file under the folder `src` to the experiment's path (restore); returns how many."""
        n = 0
        for f in sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink()):
            self._copy(f, f"{self.path}/{f.relative_to(src).as_posix()}")
            n += 1
        return n

    def _copy(self, src, dst, down: bool = False) -> None:
        """One file between a local path and a path in the store (`down`: store -> local)."""
        import pyarrow.fs as pafs

        here = pafs.LocalFileSystem()
        pafs.copy_files(str(src), str(dst), source_filesystem=self.fs if down else here,
                        destination_filesystem=here if down else self.fs)

    def set_aside(self, out) -> None:
        """--fresh: the experiment's files move to NAME.prev-N (copied, then deleted; the caller
        holds the lock, which stays where it is)."""
        k = 1
        while self.exists(f"{self.path}.prev-{k}"):
            k += 1
        moved = 0
        for info in self.files():
            rel = info.path[len(self.path) + 1:]
            if rel == LOCK:
                continue
            self.fs.copy_file(info.path, f"{self.path}.prev-{k}/{rel}")
            self.fs.delete_file(info.path)
            moved += 1
        if moved:
            out(f"--fresh: the previous experiment is kept as {self.uri}.prev-{k}")

    def lock(self, heartbeat_s: float = locks.HEARTBEAT_S):
        """One launch per experiment (locks.held: the heartbeat the folder lock has too)."""
        return locks.held(ObjectLock(self, f"{self.path}/{LOCK}"), heartbeat_s)


def _s3_client(remote: Remote):
    try:
        import boto3
    except ImportError:
        raise GridrunError("s3:// storage needs boto3 for its lock (conditional writes): pip install boto3") from None
    q = {k: v[-1] for k, v in parse_qs(remote.query).items()}
    endpoint = q.get("endpoint_override")
    if endpoint and "://" not in endpoint:
        endpoint = f"{q.get('scheme', 'https')}://{endpoint}"
    from botocore.config import Config

    bounds = Config(connect_timeout=S3_CONNECT_S, read_timeout=S3_REQUEST_S,
                    retries={"max_attempts": S3_ATTEMPTS, "mode": "standard"})
    return boto3.client("s3", endpoint_url=endpoint or None, region_name=q.get("region") or None, config=bounds)


class ObjectLock:
    """The experiment's lock as an S3 object, taken and renewed by conditional writes (the
    module's docstring says what that guarantees)."""

    def __init__(self, remote: Remote, path: str):
        self.remote, self.client = remote, _s3_client(remote)
        self.bucket, _, self.key = path.partition("/")
        self.me, self.etag, self.beats = locks.lock_owner(), None, 0

    def _put(self, **cond) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        body = json.dumps({**self.me, "beat": self.beats}).encode()
        try:
            r = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=body, **cond)
        except BotoCoreError as e:  # no connection, no credentials, no answer
            raise unreachable(self.remote.storage, e) from None
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict", "412",
                                                           "409", "NoSuchKey"):
                return False
            raise GridrunError(f"cannot write the lock s3://{self.bucket}/{self.key} ({e})") from None
        self.etag = r["ETag"]
        return True

    def _holder(self) -> tuple[dict | None, str | None]:
        """The current lock object: (its holder if alive, its ETag); (None, None) when there is none."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            r = self.client.get_object(Bucket=self.bucket, Key=self.key)
            body = r["Body"].read(65536)
        except BotoCoreError as e:
            raise unreachable(self.remote.storage, e) from None
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None, None
            raise GridrunError(f"cannot read the lock s3://{self.bucket}/{self.key} ({e})") from None
        try:
            info = json.loads(body)
            info = info if isinstance(info, dict) else {}
        except ValueError:
            info = {}
        from email.utils import parsedate_to_datetime

        date = r["ResponseMetadata"].get("HTTPHeaders", {}).get("date")
        now = parsedate_to_datetime(date).timestamp() if date else time.time()
        age = now - r["LastModified"].timestamp()
        alive = info and not locks.dead_here(info) and age < locks.STALE_S
        return (info if alive else None), r["ETag"]

    def acquire(self) -> None:
        for _ in range(5):
            if self._put(IfNoneMatch="*"):
                return
            holder, etag = self._holder()
            if holder:
                raise GridrunError(locks.holder_line(self.remote.uri, holder))
            if etag and self._put(IfMatch=etag):  # exactly one taker of this stale version wins
                return
        raise GridrunError(f"cannot take the lock s3://{self.bucket}/{self.key}: other launches keep taking it")

    def beat(self) -> None:
        self.beats += 1
        try:
            kept = not self.etag or self._put(IfMatch=self.etag)
        except GridrunError as e:  # one heartbeat lost to the network: the next one tries again
            print(f"gridrun: warning: {e}", flush=True)
            return
        if not kept:
            print(f"gridrun: warning: the lock s3://{self.bucket}/{self.key} was taken over by another launch "
                  f"(this one looked dead for {locks.STALE_S:.0f}s)", flush=True)
            self.etag = None

    def release(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        if self.etag:
            try:
                self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self.etag)
            except (ClientError, BotoCoreError):
                pass  # no longer ours (leave it to its holder), or the store is gone: it goes stale
