"""Cloud-storage client libraries compared on the local emulators: listing and streaming speed.

Starts moto's S3 server and gcp-storage-emulator on loopback, fills a bucket with N small
objects and one large one, then times for each candidate library:
  list   every key under the prefix (streamed page by page; nothing else is done per key)
  stream the large object's GET body, chunk by chunk (what batchscribe forwards to Pulse)
Each figure is the best of --repeat runs. Run: python benchmarks/cloud_libraries.py
(needs the `test` extra plus the candidates: obstore, aiobotocore, gcloud-aio-storage, s3fs).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

BUCKET = "bench"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_servers(n: int, big_mb: int) -> tuple[str, str]:
    """Start and fill both emulators; return (S3 endpoint URL, GCS emulator host URL)."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    from gcp_storage_emulator import storage as gstorage
    from gcp_storage_emulator.server import create_server
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    from moto.server import ThreadedMotoServer

    s3_port, gcs_port = _free_port(), _free_port()
    ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False).start()
    # The emulator rewrites its whole metadata file on every upload (quadratic); in memory
    # nothing reads it back, so filling skips it.
    gstorage.Storage._write_config_to_file = lambda self: None  # type: ignore[method-assign]
    create_server("127.0.0.1", gcs_port, in_memory=True, default_bucket=BUCKET).start()
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    backend.create_bucket(BUCKET, "us-east-1")
    small = b"RIFF\x00\x00\x00\x00WAVE" + bytes(100)
    big = os.urandom(big_mb * 1024 * 1024)
    for i in range(n):
        backend.put_object(BUCKET, f"many/{i:05d}.wav", small)
    backend.put_object(BUCKET, "big/big.wav", big)
    import requests

    with requests.Session() as http:
        upload = f"http://127.0.0.1:{gcs_port}/upload/storage/v1/b/{BUCKET}/o"
        for i in range(n):
            http.post(upload, params={"uploadType": "media", "name": f"many/{i:05d}.wav"},
                      data=small).raise_for_status()  # fmt: skip
        http.post(upload, params={"uploadType": "media", "name": "big/big.wav"},
                  data=big).raise_for_status()  # fmt: skip
    return f"http://127.0.0.1:{s3_port}", f"http://127.0.0.1:{gcs_port}"


# ------------------------------------------------------------------------------ obstore
def obstore_s3(endpoint: str) -> Any:
    from obstore.store import S3Store

    return S3Store(BUCKET, endpoint=endpoint, region="us-east-1",
                   client_options={"allow_http": True})  # fmt: skip


def obstore_gcs(host: str) -> Any:
    from obstore.store import GCSStore

    return GCSStore(BUCKET, base_url=host, skip_signature=True,
                    client_options={"allow_http": True})  # fmt: skip


def obstore_list(store: Any) -> int:
    import obstore

    return sum(len(batch) for batch in obstore.list(store, "many/", chunk_size=1000))


async def obstore_stream(store: Any) -> int:
    import obstore

    result = await obstore.get_async(store, "big/big.wav")
    total = 0
    async for chunk in result.stream(min_chunk_size=256 * 1024):
        total += len(chunk)
    return total


# ------------------------------------------------------------------------------ aiobotocore
async def aiobotocore_list(client: Any) -> int:
    total = 0
    async for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix="many/"
    ):
        total += len(page.get("Contents", ()))
    return total


async def aiobotocore_stream(client: Any) -> int:
    response = await client.get_object(Bucket=BUCKET, Key="big/big.wav")
    total = 0
    async with response["Body"] as body:
        async for chunk in body.iter_chunks(256 * 1024):
            total += len(chunk)
    return total


async def aiobotocore_both(endpoint: str, repeat: int, n: int, size: int) -> tuple[float, float]:
    """Both timings with one client (made outside the timed part, as a run makes one)."""
    from aiobotocore.session import get_session

    async with get_session().create_client("s3", endpoint_url=endpoint,
                                           region_name="us-east-1") as client:  # fmt: skip
        return (await abest(repeat, lambda: aiobotocore_list(client), n),
                await abest(repeat, lambda: aiobotocore_stream(client), size))  # fmt: skip


async def abest(repeat: int, fn: Callable[[], Awaitable[int]], expect: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        got = await fn()
        times.append(time.perf_counter() - start)
        assert got == expect, (got, expect)
    return min(times)


# ------------------------------------------------------------------------------ gcloud-aio
async def gcloud_list(storage: Any) -> int:
    total, token = 0, None
    while True:
        params = {"prefix": "many/", "maxResults": "1000"}
        if token:
            params["pageToken"] = token
        page = await storage.list_objects(BUCKET, params=params)
        total += len(page.get("items", ()))
        token = page.get("nextPageToken")
        if not token:
            return total


async def gcloud_stream(storage: Any) -> int:
    stream = await storage.download_stream(BUCKET, "big/big.wav")
    total = 0
    while chunk := await stream.read(256 * 1024):
        total += len(chunk)
    return total


async def gcloud_both(host: str, repeat: int, n: int, size: int) -> tuple[float, float]:
    from gcloud.aio.storage import Storage

    async with Storage(api_root=host) as storage:
        return (await abest(repeat, lambda: gcloud_list(storage), n),
                await abest(repeat, lambda: gcloud_stream(storage), size))  # fmt: skip


# ------------------------------------------------------------------------------ fsspec
async def fsspec_list(endpoint: str) -> int:
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=endpoint, asynchronous=True, skip_instance_cache=True)
    found = await fs._find(f"{BUCKET}/many/")  # collects the whole listing: no streaming API
    return len(found)


async def fsspec_stream(endpoint: str) -> int:
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=endpoint, asynchronous=True, skip_instance_cache=True)
    stream = await fs.open_async(f"{BUCKET}/big/big.wav", "rb")
    total = 0
    while chunk := await stream.read(256 * 1024):
        total += len(chunk)
    await stream.close()
    return total


def best(repeat: int, fn: Callable[[], Any], expect: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        got = fn()
        times.append(time.perf_counter() - start)
        assert got == expect, (got, expect)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=5000)
    parser.add_argument("--big-mb", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=["obstore", "aio", "fsspec"])
    ns = parser.parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1")  # fmt: skip
    start = time.perf_counter()
    s3, gcs = start_servers(ns.objects, ns.big_mb)
    print(f"filled in {time.perf_counter() - start:.1f} s: {ns.objects} objects + "
          f"{ns.big_mb} MB in each emulator")  # fmt: skip
    n, size = ns.objects, ns.big_mb * 1024 * 1024
    run = asyncio.run

    def coro(factory: Callable[[], Awaitable[int]]) -> Callable[[], int]:
        return lambda: run(factory())  # type: ignore[arg-type]

    rows: list[tuple[str, str, float, float]] = []
    if "obstore" in ns.only:
        s3_store, gcs_store = obstore_s3(s3), obstore_gcs(gcs)
        rows.append(("obstore", "S3", best(ns.repeat, lambda: obstore_list(s3_store), n),
                     best(ns.repeat, coro(lambda: obstore_stream(s3_store)), size)))  # fmt: skip
        try:
            gcs_list = best(ns.repeat, lambda: obstore_list(gcs_store), n)
        except Exception as exc:  # its GCS listing speaks the XML API, which the emulator lacks
            print(f"obstore GCS list failed: {str(exc).splitlines()[0][:160]}")
            gcs_list = float("nan")
        try:
            gcs_stream = best(ns.repeat, coro(lambda: obstore_stream(gcs_store)), size)
        except Exception as exc:  # it needs a Last-Modified header the emulator does not send
            print(f"obstore GCS stream failed: {str(exc).splitlines()[0][:160]}")
            gcs_stream = float("nan")
        rows.append(("obstore", "GCS", gcs_list, gcs_stream))
    if "aio" in ns.only:
        rows.append(("aiobotocore", "S3", *run(aiobotocore_both(s3, ns.repeat, n, size))))
        rows.append(("gcloud-aio-storage", "GCS", *run(gcloud_both(gcs, ns.repeat, n, size))))
    if "fsspec" in ns.only:
        rows.append(("s3fs (fsspec)", "S3",
                     best(ns.repeat, coro(lambda: fsspec_list(s3)), n),
                     best(ns.repeat, coro(lambda: fsspec_stream(s3)), size)))  # fmt: skip
        # gcsfs is not timed: against the emulator it spends 60 s per filesystem probing the
        # bucket type over gRPC, and it has no async open() to stream a body with.
    print(f"| library | store | list {n} objects | stream {ns.big_mb} MB |")
    print("|---|---|---|---|")
    for lib, store, listing, stream in rows:
        print(f"| {lib} | {store} | {listing * 1000:.0f} ms ({n / listing:,.0f} keys/s) | "
              f"{stream * 1000:.0f} ms ({ns.big_mb / stream:,.0f} MB/s) |")  # fmt: skip


if __name__ == "__main__":
    main()
