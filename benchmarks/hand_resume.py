"""The resume a user would write by hand: the yardstick of benchmarks/memory.py's resume case.

``json.loads`` of each results line into a set of ok ids, then the manifest streamed past it,
counting what is left to send. No validation beyond the parse, no duplicate check, no damaged
line reporting: the floor a careful user would accept for a one-off job.

    python benchmarks/hand_resume.py MANIFEST.jsonl RESULTS.jsonl
"""

from __future__ import annotations

import json
import sys


def main(manifest: str, results: str) -> None:
    ok: set[str] = set()
    with open(results, encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("status") == "ok":
                ok.add(record["id"])
    to_send = 0
    with open(manifest, encoding="utf-8") as handle:
        for line in handle:
            if json.loads(line)["id"] not in ok:
                to_send += 1
    print(f"to send: {to_send}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
