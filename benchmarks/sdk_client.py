"""The vendor SDK's async client (``smallestai``, the ``bench`` extra) driven by a semaphore, as a
user without batchscribe would write it. Benchmarks run it as a subprocess against the same
loopback server and files as ``batchscribe run``.

    python benchmarks/sdk_client.py MANIFEST.jsonl --base-url http://127.0.0.1:PORT -j 64 --out r

The SDK takes its base URL from ``SmallestAIEnvironment(waves=...)`` and posts to
``{waves}/waves/v1/stt/`` (the current endpoint), so a local server is reached by its own
request code path (httpx, the SDK's retry wrapper, pydantic parsing of the answer).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import orjson
from smallestai import AsyncSmallestAI
from smallestai.environment import SmallestAIEnvironment


async def main(manifest: str, base: str, base_url: str, concurrency: int, out: str) -> None:
    with open(manifest, "rb") as handle:
        items = [orjson.loads(line) for line in handle if line.strip()]
    environment = SmallestAIEnvironment(
        atoms=base_url, waves=base_url, waves_ws=base_url.replace("http", "ws"), payment=base_url
    )
    client = AsyncSmallestAI(api_key=os.environ["SMALLEST_API_KEY"], environment=environment)
    stt = client.waves.speech_to_text
    sem = asyncio.Semaphore(concurrency)
    started = time.monotonic()
    with open(out, "ab") as results:

        async def one(item: dict[str, str]) -> None:
            async with sem:
                with open(os.path.join(base, item["path"]), "rb") as audio:
                    data = audio.read()
                answer = await stt.transcribe(
                    model="pulse", language="en", request=data, word_timestamps=True
                )
                line = answer.model_dump_json()
                results.write(
                    b'{"id":' + orjson.dumps(item["id"]) + b',"result":' + line.encode() + b"}\n"
                )

        await asyncio.gather(*(one(item) for item in items))
    print(f"sdk: {len(items)} items in {time.monotonic() - started:.3f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("manifest")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("-j", "--concurrency", type=int, default=64)
    parser.add_argument("--out", required=True)
    ns = parser.parse_args()
    base = os.path.dirname(os.path.abspath(ns.manifest))
    asyncio.run(main(ns.manifest, base, ns.base_url, ns.concurrency, ns.out))
