"""Archives in object storage: ``s3://`` and ``gs://`` sources, straight from the bucket.

- **listing**: :func:`iter_objects` streams the audio objects under a prefix page by page (one
  page in memory at a time), skipping hidden keys, with each object's size and version (S3
  ETag, GCS generation) for ``--rescan-changed``.
- **preflight**: :func:`check_source` lists one key so a missing bucket, denied access or
  missing credentials stop the run (exit 2) before any transcription request.
- **sending** (:class:`CloudSender`, used by the engine): with ``model=pulse`` an item goes as
  URL input with a presigned GET URL, signed afresh for every attempt and valid for the whole
  request; otherwise (``pulse-pro``, or ``--via-client``) the object's GET body is streamed to
  the API chunk by chunk, never touching the disk.
- **secrets**: a signed URL is a credential. It only ever lives in a request body: records name
  the ``s3://`` object, and :func:`scrub` (also applied by every output line's Redactor) cuts the
  signature out of any text that might echo one.

Libraries (the ``cloud`` extra): aiobotocore for S3 and S3-compatible stores, gcloud-aio-storage
for GCS; both are aiohttp-based like the engine and use each cloud's standard credential chain
and endpoint override (``AWS_ENDPOINT_URL``, ``STORAGE_EMULATOR_HOST``). They are imported
lazily: importing this module costs nothing on the base install.

The synchronous entry points (listing, preflight, stat, dry-run durations) run the async
clients on one private event-loop thread, so they work from the engine's reader thread, the
dry run's worker threads and the event loop's own thread alike.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from batchscribe.errors import CloudConfigError, CloudError
from batchscribe.items import SCHEMES, is_cloud_uri
from batchscribe.pulse import (
    AUDIO_EXTENSIONS,
    MAX_PAYLOAD,
    Outcome,
    Verdict,
    content_type_for,
    scrub,
    scrub_outcome,
)
from batchscribe.results.record import fingerprint

__all__ = [
    "SCHEMES",
    "CloudConfigError",
    "CloudError",
    "CloudSender",
    "ObjectInfo",
    "check_source",
    "header_duration",
    "is_cloud_uri",
    "iter_objects",
    "live_fingerprint",
    "scrub",
    "scrub_outcome",
    "stat",
]

#: Seconds a signed URL stays valid beyond ``--timeout``: the service may fetch the audio at
#: any point of the request, and clocks differ (AWS allows 15 min of skew; 5 min is plenty).
SIGN_MARGIN = 300.0
MAX_SIGN_SECONDS = 7 * 24 * 3600  # both clouds' limit for a presigned URL
PAGE_SIZE = 1000  # keys per listing request (both clouds' maximum)
HEADER_BYTES = 256 * 1024  # read for a dry-run duration
STREAM_CHUNK = 256 * 1024
_EXTRA_HINT = "install the cloud extra: pip install 'batchscribe[cloud]'"

T = TypeVar("T")


# ------------------------------------------------------------------------------- names


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """A parsed ``s3://bucket/key`` or ``gs://bucket/key``."""

    scheme: str  # "s3" or "gs"
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.key}"


def parse_uri(uri: str) -> ObjectRef:
    """Split a cloud URI; raise CloudConfigError when it names no bucket."""
    scheme, _, rest = uri.partition("://")
    bucket, _, key = rest.partition("/")
    if scheme not in ("s3", "gs") or not bucket:
        raise CloudConfigError(f"{uri}: expected s3://BUCKET/PREFIX or gs://BUCKET/PREFIX")
    return ObjectRef(scheme, bucket, key)


def _folder(key: str) -> str:
    """A prefix read as a folder: ``a/b`` lists ``a/b/...``, never ``a/bc``."""
    return key if not key or key.endswith("/") else key + "/"


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """An audio object found under a prefix: its URI, its key relative to the prefix (the
    item id), its size in bytes and its version (S3 ETag or GCS generation)."""

    uri: str
    rel: str
    size: int
    version: str


def version_field(uri: str) -> str:
    """The record field holding an object's version: ``etag`` (S3) or ``generation`` (GCS)."""
    return "generation" if uri.startswith("gs://") else "etag"


# ------------------------------------------------------------------------------- errors


def _error_kind(exc: BaseException) -> tuple[str, str]:
    """(kind, one-line reason) of a storage failure; kinds: missing_bucket, missing, denied,
    credentials, network, other."""
    name = type(exc).__name__
    status: int | None = None
    code = ""
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):  # botocore.exceptions.ClientError
        error = response.get("Error") or {}
        code = str(error.get("Code") or "")
        meta = response.get("ResponseMetadata") or {}
        status = meta.get("HTTPStatusCode")
    elif isinstance(status_of := getattr(exc, "status", None), int):  # aiohttp (GCS)
        status = status_of
    if name in ("NoCredentialsError", "PartialCredentialsError", "NoRegionError"):
        return "credentials", str(exc)
    if code == "NoSuchBucket":
        return "missing_bucket", "no such bucket"
    if code in ("NoSuchKey", "404", "NotFound") or status == 404:
        return "missing", "not found"
    if status in (401, 403) or code in (
        "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
        "InvalidToken", "AllAccessDisabled",
    ):  # fmt: skip
        return "denied", f"access denied ({code or status})"
    if status is not None and status >= 500:
        return "network", f"storage answered {code or status}"
    if isinstance(exc, (OSError, asyncio.TimeoutError)) or name in (
        "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
        "ClientConnectorError", "ServerDisconnectedError", "ClientOSError", "ClientPayloadError",
        "ResponseStreamingError",
    ):  # fmt: skip
        return "network", " ".join(str(exc).split())[:200] or name
    text = " ".join(str(exc).split())[:200]
    return "other", f"{name}: {text}" if text else name


def _item_outcome(exc: BaseException, uri: str) -> Outcome:
    """What a storage failure means for one item."""
    kind, reason = _error_kind(exc)
    if kind == "network":
        return Outcome(Verdict.RETRY, None, "network", scrub(f"storage: {reason}"))
    if kind in ("missing", "missing_bucket"):
        return Outcome(Verdict.FAIL, None, "missing", f"{uri}: {reason}")
    return Outcome(Verdict.FAIL, None, "4xx", scrub(f"{uri}: {reason}"))


def _config_error(exc: BaseException, uri: str) -> CloudConfigError:
    """A preflight failure as one line that says how to fix it."""
    kind, reason = _error_kind(exc)
    bucket = parse_uri(uri).bucket
    if kind in ("missing_bucket", "missing"):
        return CloudConfigError(f"{uri}: bucket {bucket!r} does not exist")
    if kind == "denied":
        return CloudConfigError(
            f"{uri}: {reason}: check the credentials and the bucket's permissions"
        )
    if kind == "credentials" or (uri.startswith("gs://") and "credentials" in reason.lower()):
        hint = (
            "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile in ~/.aws, or run with an "
            "instance role"
            if uri.startswith("s3://")
            else "set GOOGLE_APPLICATION_CREDENTIALS or run `gcloud auth application-default login`"
        )
        return CloudConfigError(f"{uri}: no credentials found: {hint}")
    return CloudConfigError(f"{uri}: cannot list the bucket: {scrub(reason)}")


# ------------------------------------------------------------------------------- backends

Page = tuple[list[tuple[str, int, str]], str | None]  # [(key, size, version)], next token
# (size, chunks); a generator, so a body not read to its end can be closed (its connection freed)
Opened = tuple[int, AsyncGenerator[bytes, None]]


def _endpoint_override() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


class _S3:
    """S3 and S3-compatible stores through aiobotocore (botocore's credential chain)."""

    def __init__(self) -> None:
        self._stack = contextlib.AsyncExitStack()
        self._session: Any = None
        self._clients: dict[str | None, Any] = {}
        self._regions: dict[str, str | None] = {}

    async def _client(self, region: str | None = None) -> Any:
        client = self._clients.get(region)
        if client is None:
            try:
                from aiobotocore.session import get_session
                from botocore.config import Config
            except ImportError:
                raise CloudConfigError(f"s3:// sources need aiobotocore: {_EXTRA_HINT}") from None
            if self._session is None:
                self._session = get_session()
            options: dict[str, Any] = {"signature_version": "s3v4"}
            if _endpoint_override():
                options["s3"] = {"addressing_style": "path"}  # MinIO, R2, emulators
            client = await self._stack.enter_async_context(
                self._session.create_client("s3", region_name=region, config=Config(**options))
            )
            self._clients[region] = client
        return client

    async def _client_for(self, bucket: str) -> Any:
        """The client for the bucket's own region (a presigned URL must name it)."""
        default = await self._client()
        if _endpoint_override():
            return default
        if bucket not in self._regions:
            region = None
            try:
                answer = await default.head_bucket(Bucket=bucket)
                headers = answer["ResponseMetadata"]["HTTPHeaders"]
            except Exception as exc:
                headers = (getattr(exc, "response", None) or {}).get("ResponseMetadata", {})
                headers = headers.get("HTTPHeaders", {})
            region = headers.get("x-amz-bucket-region")
            self._regions[bucket] = region
        region = self._regions[bucket]
        if region is None or region == default.meta.region_name:
            return default
        return await self._client(region)

    async def list_page(self, bucket: str, prefix: str, token: str | None, size: int) -> Page:
        client = await self._client_for(bucket)
        args: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": size}
        if token:
            args["ContinuationToken"] = token
        page = await client.list_objects_v2(**args)
        found = [
            (o["Key"], int(o["Size"]), str(o.get("ETag", ""))) for o in page.get("Contents", ())
        ]
        return found, page.get("NextContinuationToken") if page.get("IsTruncated") else None

    async def head(self, bucket: str, key: str) -> tuple[int, str] | None:
        client = await self._client_for(bucket)
        try:
            answer = await client.head_object(Bucket=bucket, Key=key)
        except Exception as exc:
            if _error_kind(exc)[0] == "missing":
                return None
            raise
        return int(answer["ContentLength"]), str(answer.get("ETag", ""))

    async def sign(self, bucket: str, key: str, seconds: int) -> str:
        client = await self._client_for(bucket)
        url: str = await client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=seconds
        )
        return url

    async def open(self, bucket: str, key: str, first: int | None = None) -> Opened:
        client = await self._client_for(bucket)
        args: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if first is not None:
            args["Range"] = f"bytes=0-{first - 1}"
        answer = await client.get_object(**args)
        size = int(answer["ContentLength"])
        if first is not None:
            total = str(answer.get("ContentRange", "")).rpartition("/")[2]
            size = int(total) if total.isdigit() else size
        body = answer["Body"]

        async def chunks() -> AsyncGenerator[bytes, None]:
            try:
                while chunk := await body.read(STREAM_CHUNK):
                    yield chunk
            finally:
                body.close()

        return size, chunks()

    async def close(self) -> None:
        await self._stack.aclose()
        self._clients.clear()


class _GCS:
    """Google Cloud Storage through gcloud-aio-storage (application default credentials)."""

    def __init__(self) -> None:
        self._storage: Any = None

    def _client(self) -> Any:
        if self._storage is None:
            try:
                from gcloud.aio.storage import Storage
            except ImportError:
                raise CloudConfigError(
                    f"gs:// sources need gcloud-aio-storage: {_EXTRA_HINT}"
                ) from None
            self._storage = Storage()
        return self._storage

    async def list_page(self, bucket: str, prefix: str, token: str | None, size: int) -> Page:
        params = {"prefix": prefix, "maxResults": str(size)}
        if token:
            params["pageToken"] = token
        page = await self._client().list_objects(bucket, params=params)
        found = [
            (o["name"], int(o.get("size", 0)), str(o.get("generation", "")))
            for o in page.get("items", ())
        ]
        return found, page.get("nextPageToken") or None

    async def head(self, bucket: str, key: str) -> tuple[int, str] | None:
        try:
            meta = await self._client().download_metadata(bucket, key)
        except Exception as exc:
            if _error_kind(exc)[0] == "missing":
                return None
            raise
        return int(meta.get("size", 0)), str(meta.get("generation", ""))

    async def sign(self, bucket: str, key: str, seconds: int) -> str:
        storage = self._client()
        blob = storage.get_bucket(bucket).new_blob(key)
        try:
            url: str = await blob.get_signed_url(seconds)
        except Exception as exc:
            raise CloudError(
                Outcome(
                    Verdict.ABORT, None, "4xx",
                    "cannot sign gs:// URLs with these credentials (URL input needs a service "
                    f"account key or IAM signBlob): {type(exc).__name__}; use --via-client to "
                    "stream the objects instead",
                )
            ) from None  # fmt: skip
        # gcloud-aio writes https://$STORAGE_EMULATOR_HOST even when that is an http:// URL.
        from gcloud.aio.storage import blob as blob_module

        host = f"https://{blob_module.HOST}"
        emulator = os.environ.get("STORAGE_EMULATOR_HOST")
        if emulator and url.startswith(host):
            base = emulator if emulator.startswith("http") else f"http://{emulator}"
            url = base.rstrip("/") + url[len(host) :]
        return url

    async def open(self, bucket: str, key: str, first: int | None = None) -> Opened:
        storage = self._client()
        headers = {"Range": f"bytes=0-{first - 1}"} if first is not None else None
        stream = await storage.download_stream(bucket, key, headers=headers)
        response = stream._response  # the aiohttp response, to release it when done
        size = stream.content_length
        if first is not None:
            total = response.headers.get("Content-Range", "").rpartition("/")[2]
            size = int(total) if total.isdigit() else size

        async def chunks() -> AsyncGenerator[bytes, None]:
            try:
                while chunk := await stream.read(STREAM_CHUNK):
                    yield chunk
            finally:
                response.release()

        return size, chunks()

    async def close(self) -> None:
        if self._storage is not None:
            await self._storage.close()
            self._storage = None


class _Clients:
    """The clients of one event loop, made on first use."""

    def __init__(self) -> None:
        self._s3: _S3 | None = None
        self._gcs: _GCS | None = None

    def backend(self, scheme: str) -> _S3 | _GCS:
        if scheme == "s3":
            if self._s3 is None:
                self._s3 = _S3()
            return self._s3
        if self._gcs is None:
            self._gcs = _GCS()
        return self._gcs

    async def close(self) -> None:
        for backend in (self._s3, self._gcs):
            if backend is not None:
                with contextlib.suppress(Exception):
                    await backend.close()
        self._s3 = self._gcs = None


# ------------------------------------------------------------------------------- sync facade


class _Bridge:
    """One daemon thread running an event loop for the synchronous entry points."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._clients = _Clients()

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="batchscribe-cloud", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
                atexit.register(self.shutdown)
            return self._loop

    def run(self, call: Callable[[_Clients], Awaitable[T]]) -> T:
        """Run ``call(clients)`` on the bridge's loop and wait for its result."""
        loop = self._start()

        async def job() -> T:
            return await call(self._clients)

        return asyncio.run_coroutine_threadsafe(job(), loop).result()

    def shutdown(self) -> None:
        """Close the clients and stop the thread (idempotent; also run at exit)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._clients.close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        self._clients = _Clients()


_BRIDGE = _Bridge()
shutdown = _BRIDGE.shutdown


def check_source(uri: str) -> None:
    """Raise CloudConfigError unless the bucket exists and the prefix can be listed (1 key)."""
    ref = parse_uri(uri)
    try:
        _BRIDGE.run(
            lambda c: c.backend(ref.scheme).list_page(ref.bucket, _folder(ref.key), None, 1)
        )
    except CloudConfigError:
        raise
    except Exception as exc:
        raise _config_error(exc, uri) from None


@dataclass
class Listing:
    """A streamed listing of the audio objects under a prefix; ``pages`` counts requests."""

    uri: str
    page_size: int = PAGE_SIZE
    pages: int = 0

    def __iter__(self) -> Iterator[ObjectInfo]:
        ref = parse_uri(self.uri)
        prefix = _folder(ref.key)
        base = f"{ref.scheme}://{ref.bucket}/"
        token: str | None = None
        while True:
            try:
                found, token = _BRIDGE.run(self._page(ref, prefix, token))
            except CloudConfigError:
                raise
            except Exception as exc:
                raise _config_error(exc, self.uri) from None
            self.pages += 1
            for key, size, version in found:
                rel = key[len(prefix) :]
                name = rel.rpartition("/")[2]
                if not name or name[0] == ".":
                    continue  # a folder marker or a hidden object
                if os.path.splitext(name)[1].lower() not in AUDIO_EXTENSIONS:
                    continue
                yield ObjectInfo(base + key, rel, size, version)
            if not token:
                return

    def _page(
        self, ref: ObjectRef, prefix: str, token: str | None
    ) -> Callable[[_Clients], Awaitable[Page]]:
        size = self.page_size
        return lambda c: c.backend(ref.scheme).list_page(ref.bucket, prefix, token, size)


def iter_objects(uri: str, *, page_size: int = PAGE_SIZE) -> Iterator[ObjectInfo]:
    """Stream the audio objects under a prefix (keys ending in an audio extension, hidden
    ones skipped), one listing page in memory at a time.

    Args:
        uri: ``s3://BUCKET/PREFIX`` or ``gs://BUCKET/PREFIX``; the prefix is read as a folder.
        page_size: keys per listing request.

    Raises CloudConfigError when the bucket cannot be listed.
    """
    return iter(Listing(uri, page_size))


def stat(uri: str) -> tuple[int, str] | None:
    """(size, version) of one object, or None when it does not exist."""
    ref = parse_uri(uri)
    return _BRIDGE.run(lambda c: c.backend(ref.scheme).head(ref.bucket, ref.key))


def live_fingerprint(uri: str, size: int | None, version: str | None) -> int | None:
    """The results fingerprint of an object as it is now (None when it is gone).

    ``size``/``version`` come from the listing; an object named in a manifest is looked up.
    """
    if size is None or version is None:
        try:
            found = stat(uri)
        except Exception:
            return None
        if found is None:
            return None
        size, version = found
    return fingerprint(size, version)


def header_duration(uri: str) -> tuple[int, float | None]:
    """(size, seconds of audio) of an object from a ranged GET of its first bytes."""
    from batchscribe.audio import head_duration

    ref = parse_uri(uri)

    async def read(c: _Clients) -> tuple[int, bytes]:
        size, chunks = await c.backend(ref.scheme).open(ref.bucket, ref.key, HEADER_BYTES)
        head = b"".join([chunk async for chunk in chunks])
        return size, head

    try:
        size, head = _BRIDGE.run(read)
    except Exception:
        return 0, None
    return size, head_duration(head, size)


# ------------------------------------------------------------------------------- the engine's side


class CloudSender:
    """Builds the request body of each attempt at a cloud item; lives in the engine's loop.

    Args:
        timeout: the per-request timeout; a signed URL is valid for that plus
            :data:`SIGN_MARGIN`, so it cannot expire while the service may still fetch it.
        via_client: stream objects through this machine even for ``model=pulse``.
        margin: seconds of validity beyond ``timeout``.
    """

    def __init__(self, *, timeout: float, via_client: bool, margin: float = SIGN_MARGIN) -> None:
        self.via_client = via_client
        self.expires = int(min(MAX_SIGN_SECONDS, max(1.0, timeout + margin)))
        self._clients = _Clients()
        self.signed = 0  # URLs signed so far (one per URL-mode attempt)

    def sends_url(self, model: str) -> bool:
        """Whether items of this model go as URL input (else the bytes are streamed)."""
        return model == "pulse" and not self.via_client

    async def prepare(
        self, item: Any, record: dict[str, Any], *, model: str, oversize_ok: bool = False
    ) -> Outcome | None:
        """Put the object's size and version in ``record``; an outcome when it cannot be sent.

        An item from a listing already knows both; one named in a manifest is looked up.
        ``oversize_ok``: an object over 250 MB whose bytes flow through here is not refused
        (the audio stage makes it smaller: ``--transcode`` other than off).
        """
        ref = parse_uri(item.source)
        size, version = item.size, item.version
        if size is None or version is None:
            try:
                found = await self._clients.backend(ref.scheme).head(ref.bucket, ref.key)
            except CloudConfigError as exc:
                return Outcome(Verdict.ABORT, None, "invalid", str(exc))
            except Exception as exc:
                return _item_outcome(exc, item.source)
            if found is None:
                return Outcome(Verdict.FAIL, None, "missing", "object not found")
            size, version = found
        record["size"] = size
        record[version_field(item.source)] = version
        if size == 0:
            return Outcome(Verdict.FAIL, None, "invalid", "empty object")
        if size > MAX_PAYLOAD and not (oversize_ok or self.sends_url(model)):
            return Outcome(
                Verdict.FAIL, None, "too_large",
                f"object is {size / 1e6:.0f} MB, over the API's 250 MB limit",
            )  # fmt: skip
        return None

    async def request(self, item: Any, *, model: str) -> tuple[Any, dict[str, str]]:
        """The body and headers of one attempt: a URL signed now, or the object's GET body.

        Raises CloudError when the object cannot be signed or opened.
        """
        ref = parse_uri(item.source)
        backend = self._clients.backend(ref.scheme)
        try:
            if self.sends_url(model):
                url = await backend.sign(ref.bucket, ref.key, self.expires)
                self.signed += 1
                return orjson.dumps({"url": url}), {"Content-Type": "application/json"}
            size, chunks = await backend.open(ref.bucket, ref.key)
        except (CloudError, CloudConfigError) as exc:
            if isinstance(exc, CloudError):
                raise
            raise CloudError(Outcome(Verdict.ABORT, None, "invalid", str(exc))) from None
        except Exception as exc:
            raise CloudError(_item_outcome(exc, item.source)) from None
        headers = {"Content-Type": content_type_for(ref.key), "Content-Length": str(size)}
        return _counted(chunks, size), headers

    async def read(self, item: Any, first: int | None = None) -> AsyncIterator[bytes]:
        """The object's GET body (``first``: its first bytes only, a ranged GET), checked
        against its length as it streams (:class:`CloudError` to retry when it ends short).
        Raises CloudError when it cannot be opened."""
        ref = parse_uri(item.source)
        try:
            size, chunks = await self._clients.backend(ref.scheme).open(ref.bucket, ref.key, first)
        except CloudConfigError as exc:
            raise CloudError(Outcome(Verdict.ABORT, None, "invalid", str(exc))) from None
        except Exception as exc:
            raise CloudError(_item_outcome(exc, item.source)) from None
        return _counted(chunks, size if first is None else min(first, size))

    async def close(self) -> None:
        await self._clients.close()

    def __repr__(self) -> str:
        return f"<CloudSender via_client={self.via_client} expires={self.expires}s>"


async def _counted(chunks: AsyncGenerator[bytes, None], size: int) -> AsyncIterator[bytes]:
    """The chunks of a GET body; CloudError (retry) when it ends short or runs long."""
    sent = 0
    try:
        async for chunk in chunks:
            sent += len(chunk)
            if sent > size:
                break
            yield chunk
    except Exception as exc:
        raise CloudError(
            Outcome(Verdict.RETRY, None, "network", f"storage: {_error_kind(exc)[1]}")
        ) from None
    finally:
        with contextlib.suppress(Exception):
            await chunks.aclose()
    if sent != size:
        raise CloudError(
            Outcome(Verdict.RETRY, None, "network", "object body ended early or changed")
        )
