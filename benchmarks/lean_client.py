"""The floor of Python overhead: a minimal aiohttp loop with a semaphore (no retry, resume or
progress), as a careful user would write it for a one-off batch. Benchmarks run it as a
subprocess against the same server and files as ``batchscribe run``.

    python benchmarks/lean_client.py MANIFEST.jsonl --endpoint URL -j 64 --out lean.jsonl

For every manifest line: read the file, POST it, parse the JSON answer, append one result line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import aiohttp
import orjson

QUERY = {"model": "pulse", "language": "en", "word_timestamps": "true"}


async def main(manifest: str, base: str, endpoint: str, concurrency: int, out: str) -> None:
    with open(manifest, "rb") as handle:
        items = [orjson.loads(line) for line in handle if line.strip()]
    key = os.environ.get("SMALLEST_API_KEY", "")
    sem = asyncio.Semaphore(concurrency)
    started = time.monotonic()
    connector = aiohttp.TCPConnector(limit=concurrency)
    with open(out, "ab") as results:
        async with aiohttp.ClientSession(
            connector=connector, headers={"Authorization": f"Bearer {key}"}
        ) as session:

            async def one(item: dict[str, str]) -> None:
                async with sem:
                    with open(os.path.join(base, item["path"]), "rb") as audio:
                        data = audio.read()
                    async with session.post(
                        endpoint, params=QUERY, data=data, headers={"Content-Type": "audio/wav"}
                    ) as response:
                        body = await response.read()
                    doc = orjson.loads(body)
                    results.write(orjson.dumps({"id": item["id"], "status": "ok", **doc}) + b"\n")

            await asyncio.gather(*(one(item) for item in items))
    print(f"lean: {len(items)} items in {time.monotonic() - started:.3f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("manifest")
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("-j", "--concurrency", type=int, default=64)
    parser.add_argument("--out", required=True)
    ns = parser.parse_args()
    base = os.path.dirname(os.path.abspath(ns.manifest))
    asyncio.run(main(ns.manifest, base, ns.endpoint, ns.concurrency, ns.out))
