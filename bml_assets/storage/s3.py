"""The lake on S3-compatible object storage (``s3://bucket/prefix``): boto3 writes, pyarrow reads.

What belongs here: ``S3Store`` and its ``S3Staged``, the ``Store`` protocol
(``store.py``) over one bucket and key prefix, at AWS or at any S3-compatible endpoint
(MinIO, moto: ``BML_S3_ENDPOINT_URL``); the check that the server honours conditional
writes; the mapping of the server's answers to the store's errors. What stays out:
locks (advisory locks in PostgreSQL, ``locks.py``), parquet and partitions (``lake/``).

The write: ``stage`` keeps the bytes in memory (nothing is visible in the bucket);
``publish`` is one PUT carrying the condition (``If-None-Match: *`` for ``ABSENT``,
``If-Match: <ETag>`` for a version), the object's sha256 in its user metadata
(``x-amz-meta-sha256``) and as ``x-amz-checksum-sha256``, so the server refuses bytes
damaged on the way. A refused condition (HTTP 412, or 409 ``ConditionalRequestConflict``
when another conditional write to the key is in flight) is ``PreconditionFailed``; the
object is unchanged. The version token is the ETag; ``mtime_ns`` is ``Last-Modified``
(whole seconds, as HEAD reports it), read back by a HEAD after the PUT so the commit
records exactly what ``stat`` later sees.

Reads: ``sha256`` downloads and hashes the bytes (the truth: the scan never trusts the
metadata, which a copy may carry over unchanged); ``source`` opens the object through
``pyarrow.fs.S3FileSystem`` for pyarrow's readers. Credentials come from the standard AWS
chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile), read by boto3 and
pyarrow themselves; the region is boto3's, else us-east-1.

Failures: botocore retries throttling, 5xx and connection errors (``standard`` mode,
``max_attempts`` in all, exponential backoff with jitter) within bounded connect and read
timeouts; what still fails is ``StoreUnavailable`` naming the object's URL, the endpoint
and the attempts. A PUT whose response was lost may have landed: if a retried conditional
PUT is refused and the object holds our sha256, it was our own first attempt, and the
publication stands.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import uuid
from typing import Any, Final, Self
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from bml_assets.domain.redaction import redact_url
from bml_assets.storage.store import (
    ABSENT,
    Expect,
    ObjectStat,
    ParquetSource,
    PreconditionFailed,
    PublishIncomplete,
    StoreError,
    StoreNotWritable,
    UnsupportedStore,
    _Absent,
    check_condition,
    checked_key,
)

try:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
except ImportError as exc:  # the optional extra ``s3``
    raise ImportError(f"an S3 lake needs boto3, which is not installed ({exc}): pip install 'bml-assets[s3]'") from exc

DEFAULT_MAX_ATTEMPTS: Final = 5
DEFAULT_CONNECT_TIMEOUT_S: Final = 5.0
DEFAULT_READ_TIMEOUT_S: Final = 60.0
DEFAULT_REGION: Final = "us-east-1"
SHA256_METADATA: Final = "sha256"
# Keys ``ensure_writable`` writes and removes at the root; ``list`` leaves a stray one out.
_PROBE_PREFIX: Final = ".bml_write_check_"
_BLOCK: Final = 1 << 20
_REFUSED: Final = (412, 409)  # 409: ConditionalRequestConflict (a concurrent conditional write)


class StoreUnavailable(StoreError):
    """The server did not answer (timeouts, refused connections) or kept failing (5xx,
    throttling) through every attempt."""


class ConditionalWritesUnsupported(StoreNotWritable):
    """The server accepted a write its condition should have refused: it ignores
    ``If-None-Match``/``If-Match``, so concurrent writers could overwrite each other."""


def parse_root(root: str) -> tuple[str, str]:
    """(bucket, key prefix without slashes at either end) of ``s3://bucket/prefix``."""
    parts = urlsplit(root)
    if parts.scheme != "s3" or not parts.netloc:
        raise UnsupportedStore(f"lake root {root!r}: expected s3://bucket/prefix")
    prefix = parts.path.strip("/")
    if prefix:
        checked_key(prefix)
    return parts.netloc, prefix


def _seconds_ns(moment: Any) -> int:
    """``Last-Modified`` in ns, cut to whole seconds (HEAD's resolution; a listing has ms)."""
    return int(moment.timestamp()) * 1_000_000_000


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _attempts(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)) + 1


def _refused(exc: ClientError) -> bool:
    return _status(exc) in _REFUSED or _code(exc) in ("PreconditionFailed", "ConditionalRequestConflict")


def _missing(exc: ClientError) -> bool:
    return _status(exc) == 404 or _code(exc) in ("NoSuchKey", "404", "NotFound")


def _expected(expect: Expect) -> str:
    return "no object" if isinstance(expect, _Absent) else f"version {expect}"


def _found(current: ObjectStat | None) -> str:
    return "no object" if current is None else f"version {current.version}"


class S3Staged:
    """Bytes held in memory for ``key`` until ``publish`` PUTs them (``S3Store.stage``)."""

    def __init__(self, store: S3Store, key: str, data: bytes) -> None:
        self.key = key
        self._store = store
        self._data = data
        self._done = False

    @property
    def location(self) -> str:
        return f"{self._store.location(self.key)} (staged in memory)"

    def source(self) -> ParquetSource:
        return pa.BufferReader(pa.py_buffer(self._data))

    def sha256(self) -> str:
        # The staged bytes are these very bytes; the PUT's x-amz-checksum-sha256 makes the
        # server check that what it stores has this hash.
        return hashlib.sha256(self._data).hexdigest()

    def publish(self, *, expect: Expect) -> ObjectStat:
        if self._done:
            raise StoreError(f"{self.location}: already published or discarded")
        published = self._store.put_bytes(self.key, self._data, expect=expect)
        self.discard()
        return published

    def discard(self) -> None:
        self._done = True
        self._data = b""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


class S3Store:
    """One bucket and key prefix of an S3-compatible server (see the module docstring)."""

    def __init__(
        self,
        root: str,
        *,
        endpoint_url: str = "",
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
        read_timeout: float = DEFAULT_READ_TIMEOUT_S,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        self.bucket, self.prefix = parse_root(root)
        self.endpoint_url = endpoint_url.rstrip("/")
        self.max_attempts = max_attempts
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._root = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self._key_prefix = f"{self.prefix}/" if self.prefix else ""
        session = boto3.session.Session()
        self.region = session.region_name or DEFAULT_REGION
        config = Config(
            # total_max_attempts counts the first attempt too (botocore's max_attempts does not).
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            # Path-style for a custom endpoint: MinIO and moto on an IP have no bucket subdomains.
            s3={"addressing_style": "path"} if self.endpoint_url else None,
        )
        self._client = session.client(
            "s3", endpoint_url=self.endpoint_url or None, region_name=self.region, config=config
        )
        self._filesystem: pafs.S3FileSystem | None = None
        self._conditional_delete = True  # until the server says it does not implement it

    def __repr__(self) -> str:
        at = f", endpoint_url={redact_url(self.endpoint_url)!r}" if self.endpoint_url else ""
        return f"S3Store({self._root!r}{at})"

    @property
    def root(self) -> str:
        return self._root

    @property
    def endpoint(self) -> str:
        """The server, for messages."""
        return redact_url(self.endpoint_url) if self.endpoint_url else "AWS S3"

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key_prefix}{key}"

    def _key(self, key: str) -> str:
        return self._key_prefix + checked_key(key)

    # ---- errors

    def _failure(self, verb: str, where: str, exc: Exception) -> StoreError:
        """The store's error for a request that failed after botocore's retries."""
        if isinstance(exc, NoCredentialsError):
            return StoreError(
                f"{verb} {where}: no AWS credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile)"
            )
        if isinstance(exc, ClientError):
            status, code, attempts = _status(exc), _code(exc), _attempts(exc)
            message = exc.response.get("Error", {}).get("Message", "")
            if status >= 500 or status == 429 or code in ("SlowDown", "Throttling", "RequestTimeout"):
                return StoreUnavailable(
                    f"{verb} {where}: {self.endpoint} answered HTTP {status} {code} {message}".rstrip()
                    + f"; gave up after {attempts} attempts"
                )
            return StoreError(f"{verb} {where}: {self.endpoint} answered HTTP {status} {code} {message}".rstrip())
        return StoreUnavailable(
            f"{verb} {where}: {self.endpoint} did not answer ({type(exc).__name__}: {exc}); "
            f"gave up after {self.max_attempts} attempts"
        )

    # ---- writing

    def stage(self, key: str, data: bytes) -> S3Staged:
        checked_key(key)
        return S3Staged(self, key, bytes(data))

    def put(self, key: str, data: bytes, *, expect: Expect = None) -> ObjectStat:
        with self.stage(key, data) as staged:
            return staged.publish(expect=expect)

    def put_bytes(self, key: str, data: bytes, *, expect: Expect) -> ObjectStat:
        """One conditional PUT of ``data`` at ``key`` (``S3Staged.publish``), then its stat."""
        where = self.location(key)
        digest = hashlib.sha256(data)
        request: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self._key(key),
            "Body": data,
            "Metadata": {SHA256_METADATA: digest.hexdigest()},
            "ChecksumSHA256": base64.b64encode(digest.digest()).decode("ascii"),
        }
        if isinstance(expect, _Absent):
            request["IfNoneMatch"] = "*"
        elif expect is not None:
            request["IfMatch"] = expect
        try:
            etag = self._client.put_object(**request)["ETag"]
        except ClientError as exc:
            # If-Match on a key with no object: S3 answers 404 NoSuchKey, a refused condition too.
            if not (_refused(exc) or ("IfMatch" in request and _missing(exc))):
                raise self._failure("PUT", where, exc) from exc
            current = self._head(key)
            if _attempts(exc) > 1 and current is not None and current[1] == digest.hexdigest():
                # The first attempt landed and its answer was lost; the retry then met our own object.
                return current[0]
            raise PreconditionFailed(where, _expected(expect), _found(current[0] if current else None)) from None
        except BotoCoreError as exc:
            raise self._failure("PUT", where, exc) from exc
        try:
            landed = self._head(key)
        except StoreError as exc:
            raise PublishIncomplete(where, exc) from exc
        if landed is None or landed[0].version != etag:
            # Only a writer ignoring the partition's lock could replace it this fast.
            found = "no object" if landed is None else f"version {landed[0].version}"
            raise PublishIncomplete(
                where, StoreError(f"the PUT returned ETag {etag}, a HEAD right after finds {found}")
            )
        return landed[0]

    def delete(self, key: str, *, expect: Expect = None) -> bool:
        where = self.location(key)
        full = self._key(key)
        # The condition is checked with a HEAD first: it covers ABSENT, and servers without a
        # conditional DELETE; it is atomic against writers holding the partition's lock (every
        # writer does). Where the server has If-Match on DELETE, the server checks it again.
        current = self.stat(key)
        check_condition(where, expect, current)
        if current is None:
            return False
        request: dict[str, Any] = {"Bucket": self.bucket, "Key": full}
        if isinstance(expect, str) and self._conditional_delete:
            request["IfMatch"] = expect
        try:
            self._client.delete_object(**request)
        except ClientError as exc:
            if _refused(exc):
                raise PreconditionFailed(where, _expected(expect), _found(self.stat(key))) from None
            if "IfMatch" in request and (_status(exc) == 501 or _code(exc) == "NotImplemented"):
                self._conditional_delete = False  # checked by the HEAD above, under the lock
                return self.delete(key, expect=expect)
            raise self._failure("DELETE", where, exc) from exc
        except BotoCoreError as exc:
            raise self._failure("DELETE", where, exc) from exc
        return True

    def temp_files(self, folder: str) -> list[str]:
        return []  # staging is in memory: a dead writer leaves nothing in the bucket

    # ---- reading

    def _head(self, key: str) -> tuple[ObjectStat, str | None] | None:
        """The object's stat and the sha256 its writer recorded, or None when there is none."""
        where = self.location(key)
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _missing(exc):
                return None
            raise self._failure("HEAD", where, exc) from exc
        except BotoCoreError as exc:
            raise self._failure("HEAD", where, exc) from exc
        st = ObjectStat(int(head["ContentLength"]), _seconds_ns(head["LastModified"]), head["ETag"])
        return st, head.get("Metadata", {}).get(SHA256_METADATA)

    def stat(self, key: str) -> ObjectStat | None:
        found = self._head(key)
        return found[0] if found is not None else None

    def recorded_sha256(self, key: str) -> str | None:
        """The sha256 the object's writer put in its metadata (None: no object, or none
        recorded). What the writer meant, not proof of the bytes: ``sha256`` is."""
        found = self._head(key)
        return found[1] if found is not None else None

    def _get(self, key: str) -> Any:
        where = self.location(key)
        try:
            return self._client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except ClientError as exc:
            if _missing(exc):
                raise FileNotFoundError(errno.ENOENT, "no object", where) from None
            raise self._failure("GET", where, exc) from exc
        except BotoCoreError as exc:
            raise self._failure("GET", where, exc) from exc

    def read(self, key: str) -> bytes:
        body = self._get(key)
        try:
            return body.read()
        except BotoCoreError as exc:  # the connection broke mid-body
            raise self._failure("GET", self.location(key), exc) from exc
        finally:
            body.close()

    def sha256(self, key: str) -> str:
        body = self._get(key)
        digest = hashlib.sha256()
        try:
            for block in body.iter_chunks(_BLOCK):
                digest.update(block)
        except BotoCoreError as exc:
            raise self._failure("GET", self.location(key), exc) from exc
        finally:
            body.close()
        return digest.hexdigest()

    def filesystem(self) -> pafs.S3FileSystem:
        """pyarrow's view of the same server (credentials from the AWS chain, like boto3)."""
        if self._filesystem is None:
            options: dict[str, Any] = {
                "region": self.region,
                "connect_timeout": self.connect_timeout,
                "request_timeout": self.read_timeout,
                "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=self.max_attempts),
            }
            if self.endpoint_url:
                parts = urlsplit(self.endpoint_url)
                host = parts.hostname or ""
                options["endpoint_override"] = f"{host}:{parts.port}" if parts.port else host
                options["scheme"] = parts.scheme
            self._filesystem = pafs.S3FileSystem(**options)
        return self._filesystem

    def source(self, key: str) -> ParquetSource:
        return self.filesystem().open_input_file(f"{self.bucket}/{self._key(key)}")

    def list(self, prefix: str) -> list[str]:
        folder = prefix.strip("/")
        wanted = self._key_prefix + (checked_key(folder) + "/" if folder else "")
        keys: list[str] = []
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=wanted):
                for item in page.get("Contents", ()):
                    key = item["Key"][len(self._key_prefix) :]
                    if not key.rpartition("/")[2].startswith(_PROBE_PREFIX):
                        keys.append(key)
        except (ClientError, BotoCoreError) as exc:
            raise self._failure("LIST", f"s3://{self.bucket}/{wanted}", exc) from exc
        return sorted(keys)

    # ---- start-up

    def ensure_writable(self) -> str:
        """The bucket exists and takes writes, and the server honours conditional writes:
        a probe PUT with ``If-None-Match: *`` over an existing probe, and one with an
        ``If-Match`` that cannot hold, must both be refused (``ConditionalWritesUnsupported``
        otherwise: the lake is refused at start-up, never used silently unsafe)."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _missing(exc) or _code(exc) == "NoSuchBucket":
                raise StoreNotWritable(
                    self._root, f"no bucket {self.bucket!r} at {self.endpoint}; create it first"
                ) from None
            raise StoreNotWritable(self._root, str(self._failure("HEAD bucket", self._root, exc))) from None
        except BotoCoreError as exc:
            raise StoreNotWritable(self._root, str(self._failure("HEAD bucket", self._root, exc))) from None
        probe = f"{_PROBE_PREFIX}{uuid.uuid4().hex}"
        try:
            self.put(probe, b"first", expect=ABSENT)
            ignored = self._ignored_condition(probe)
            self.delete(probe)  # a probe left by a failure here is left out of ``list``
        except StoreError as exc:
            raise StoreNotWritable(self._root, str(exc)) from None
        if ignored is not None:
            raise ConditionalWritesUnsupported(
                self._root,
                f"{self.endpoint} accepted a PUT whose {ignored} condition did not hold: it ignores "
                "conditional writes, so two writers of a partition could overwrite each other unseen; "
                "use a server with conditional PUTs (AWS S3, or a compatible one)",
            )
        return self._root

    def _ignored_condition(self, probe: str) -> str | None:
        """The first condition the server let pass over the existing ``probe``, or None."""
        for header, expect in (("If-None-Match: *", ABSENT), ("If-Match", '"bml-no-such-etag"')):
            try:
                self.put(probe, b"second", expect=expect)
            except PreconditionFailed:
                continue
            return header
        return None
