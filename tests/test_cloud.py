"""s3:// and gs:// sources against real local servers: moto's S3 server and the GCS emulator.

Both run in this process on free loopback ports; the CLI runs as a real subprocess pointed at
them by the standard overrides (``AWS_ENDPOINT_URL``, ``STORAGE_EMULATOR_HOST``). A signed URL
is a credential, so every end-to-end test also checks that no signature reached any output.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from audio_fixtures import wav_bytes
from conftest import REPO, cli_env, read_results

pytest.importorskip("aiobotocore")
pytest.importorskip("gcloud.aio.storage")
pytest.importorskip("moto.server")
pytest.importorskip("gcp_storage_emulator.server")

# After the skips: without the cloud extra the whole module is skipped.
from batchscribe import cloud
from batchscribe.emulator import (
    FaultRates,
    canonical_url,
    content_key,
    transcript_for,
    transcript_for_url,
)

#: Any of these in an output means a presigned URL's credentials leaked.
SIGNATURE_MARKERS = ("X-Amz-Signature", "X-Amz-Credential", "X-Goog-Signature", "Signature=")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a free loopback port (quiet), for the whole module."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="module")
def gcs_host() -> Iterator[str]:
    """gcp-storage-emulator in memory on a free loopback port, for the whole module."""
    from gcp_storage_emulator import storage  # type: ignore[import-untyped]
    from gcp_storage_emulator.server import create_server  # type: ignore[import-untyped]

    with pytest.MonkeyPatch.context() as patch:
        # It rewrites a metadata file of every object on each upload; in memory nothing reads it.
        patch.setattr(storage.Storage, "_write_config_to_file", lambda self: None)
        port = _free_port()
        server = create_server("127.0.0.1", port, in_memory=True)
        server.start()
        yield f"http://127.0.0.1:{port}"
        server.stop()


@pytest.fixture(scope="module")
def service_account(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway service-account key (a fresh RSA key), so gs:// URLs can be signed."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    path = tmp_path_factory.mktemp("gcp") / "sa.json"
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "test",
                "private_key_id": "k1",
                "private_key": pem,
                "client_email": "batchscribe@test.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": "http://127.0.0.1:9/token",
            }
        )
    )
    return path


@pytest.fixture
def cloud_env(
    s3_endpoint: str, gcs_host: str, service_account: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[dict[str, str]]:  # fmt: skip
    """The environment of a run against the local servers (dummy AWS keys, no host config);
    also set in this process for in-process tests. The cloud clients are reset afterwards."""
    env = {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "AKIATESTBATCHSCRIBE",
        "AWS_SECRET_ACCESS_KEY": "test-secret-key",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "STORAGE_EMULATOR_HOST": gcs_host,
        "GOOGLE_APPLICATION_CREDENTIALS": str(service_account),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cloud.shutdown()
    yield env
    cloud.shutdown()


@pytest.fixture
def buckets(cloud_env: dict[str, str]) -> Callable[[str], Bucket]:
    """``buckets("s3")`` / ``buckets("gs")``: a new empty bucket with a unique name."""

    def make(scheme: str) -> Bucket:
        return Bucket(scheme, f"bs-{uuid.uuid4().hex[:10]}", cloud_env)

    return make


class Bucket:
    """A bucket in one of the local servers; ``put`` writes objects with the plain clients."""

    def __init__(self, scheme: str, name: str, env: dict[str, str]) -> None:
        import requests

        self.scheme, self.name, self.env = scheme, name, env
        self.http = requests.Session()
        if scheme == "s3":
            self.s3().create_bucket(Bucket=name)
        else:
            answer = self.http.post(
                f"{env['STORAGE_EMULATOR_HOST']}/storage/v1/b", json={"name": name}, timeout=10
            )
            answer.raise_for_status()

    def s3(self) -> Any:
        import boto3  # type: ignore[import-untyped]

        return boto3.client(
            "s3", endpoint_url=self.env["AWS_ENDPOINT_URL"], region_name="us-east-1",
            aws_access_key_id="x", aws_secret_access_key="y",
        )  # fmt: skip

    def uri(self, key: str = "") -> str:
        return f"{self.scheme}://{self.name}/{key}"

    def put(self, key: str, data: bytes) -> None:
        if self.scheme == "s3":
            self.s3().put_object(Bucket=self.name, Key=key, Body=data)
        else:
            answer = self.http.post(
                f"{self.env['STORAGE_EMULATOR_HOST']}/upload/storage/v1/b/{self.name}/o",
                params={"uploadType": "media", "name": key}, data=data, timeout=10,
            )  # fmt: skip
            answer.raise_for_status()


def run_cli(
    tmp_path: Path, env: Mapping[str, str | None], *args: Any, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """The real CLI as a subprocess, in the cloud environment."""
    return subprocess.run(
        [sys.executable, "-m", "batchscribe", *map(str, args)],
        env=cli_env(env), cwd=tmp_path, capture_output=True, text=True, timeout=timeout,
        check=False,
    )  # fmt: skip


def assert_no_signature(*texts: str) -> None:
    """Fail if any text holds a presigned URL's credentials."""
    for text in texts:
        for marker in SIGNATURE_MARKERS:
            assert marker not in text, f"{marker} leaked: {text[:400]}"


def outputs(proc: subprocess.CompletedProcess[str], *files: Path) -> list[str]:
    """A run's stdout, stderr and the files it wrote."""
    return [proc.stdout, proc.stderr, *(f.read_text() for f in files if f.exists())]


def by_id(path: Path) -> dict[str, dict[str, Any]]:
    """The last record of each id in a results file."""
    return {record["id"]: record for record in read_results(path)[0]}


Buckets = Callable[[str], Bucket]
Emulator = Callable[..., Any]


# --------------------------------------------------------------------------- listing


def test_s3_listing_is_paginated_streamed_and_filtered(buckets: Buckets) -> None:
    """Listing pages through the prefix lazily (page 1 serves the first item), keeps audio by
    extension, skips hidden keys and sibling prefixes, and ids each object relative to it."""
    bucket = buckets("s3")
    keys = [f"archive/{i:02d}.wav" for i in range(23)] + ["archive/sub/deep.mp3"]
    for key in [*keys, "archive/.hidden.wav", "archive/notes.txt", "archive2/other.wav"]:
        bucket.put(key, b"RIFF0000WAVEdata")
    listing = cloud.Listing(bucket.uri("archive"), page_size=10)
    found = iter(listing)
    first = next(found)
    assert listing.pages == 1
    assert first.rel == "00.wav" and first.uri == bucket.uri("archive/00.wav")
    rest = list(found)
    assert [first.rel, *(o.rel for o in rest)] == [k.removeprefix("archive/") for k in keys]
    assert listing.pages == 3  # 26 keys, 10 a page
    assert first.size == 16 and first.version.startswith('"')  # the S3 ETag


def test_gcs_listing_gives_relative_ids_sizes_and_generations(buckets: Buckets) -> None:
    """A gs:// prefix is read as a folder: relative ids, sizes and generations; hidden skipped."""
    bucket = buckets("gs")
    for key in ("calls/a.wav", "calls/b/c.flac", "calls/.x.wav", "calls.wav", "callsx/d.wav"):
        bucket.put(key, b"RIFF0000WAVEdata!")
    found = list(cloud.iter_objects(bucket.uri("calls")))
    assert [o.rel for o in found] == ["a.wav", "b/c.flac"]
    assert all(o.size == 17 and o.version.isdigit() for o in found)


# --------------------------------------------------------------------------- URL mode


def test_s3_url_mode_end_to_end_and_rerun_sends_nothing(
    tmp_path: Path, buckets: Buckets, emulator: Emulator
) -> None:
    """model=pulse sends each object as a presigned URL: records name the s3:// object with its
    size and ETag, the transcript is the URL's, no signature reaches any output, and a rerun
    sends nothing."""
    bucket = buckets("s3")
    clips = {f"2019/{i}.wav": wav_bytes(0.2, freq=300 + 20 * i) for i in range(3)}
    for key, data in clips.items():
        bucket.put(f"archive/{key}", data)
    emu = emulator()
    out, log = tmp_path / "r.jsonl", tmp_path / "run.log"
    argv = ["run", bucket.uri("archive/"), "--out", out, "--endpoint", emu.endpoint(),
            "--log-file", log, "--no-progress"]  # fmt: skip
    proc = run_cli(tmp_path, bucket.env, *argv)
    assert proc.returncode == 0, proc.stderr
    records = by_id(out)
    assert set(records) == set(clips)
    endpoint = bucket.env["AWS_ENDPOINT_URL"]
    for key, data in clips.items():
        record = records[key]
        assert record["status"] == "ok" and record["attempts"] == 1
        assert record["source"] == bucket.uri(f"archive/{key}")
        assert record["size"] == len(data) and record["etag"].startswith('"')
        # What the service was given: the object's URL (path style at the endpoint), signed.
        url = f"{endpoint}/{bucket.name}/archive/{key}"
        assert record["transcription"] == transcript_for_url(url)
    assert emu.stats()["statuses"] == {"200": 3}
    assert_no_signature(*outputs(proc, out, log))

    again = run_cli(tmp_path, bucket.env, *argv)
    assert again.returncode == 0, again.stderr
    assert emu.stats()["requests"] == 3  # all done: nothing sent


def test_manifest_names_cloud_objects_and_a_missing_one_fails_unsent(
    tmp_path: Path, buckets: Buckets, emulator: Emulator
) -> None:
    """Manifest paths and text-list lines may name s3:// and gs:// objects (looked up for size
    and version); a missing object is recorded failed without a request."""
    s3, gs = buckets("s3"), buckets("gs")
    s3.put("x/one.wav", wav_bytes(0.2, freq=500))
    gs.put("y/two.wav", wav_bytes(0.2, freq=520))
    listing = tmp_path / "more.txt"
    listing.write_text(f"# objects\n{gs.uri('y/two.wav')}\n")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        json.dumps({"id": "one", "path": s3.uri("x/one.wav"), "who": "ada"}) + "\n"
        + json.dumps({"id": "gone", "path": s3.uri("x/gone.wav")}) + "\n"
    )  # fmt: skip
    emu = emulator()
    out = tmp_path / "r.jsonl"
    proc = run_cli(tmp_path, s3.env, "run", manifest, listing, "--out", out,
                   "--endpoint", emu.endpoint(), "--no-progress")  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    records = by_id(out)
    assert records["one"]["status"] == "ok" and records["one"]["metadata"] == {"who": "ada"}
    assert records["one"]["etag"] and records["one"]["size"] > 0
    two = records[gs.uri("y/two.wav")]
    assert two["status"] == "ok" and two["generation"].isdigit()
    # Signed for the emulator's host (which serves signed GETs at /BUCKET/OBJECT).
    host = gs.env["STORAGE_EMULATOR_HOST"]
    assert two["transcription"] == transcript_for_url(f"{host}/{gs.name}/y/two.wav")
    gone = records["gone"]
    assert (gone["status"], gone["cause"], gone["attempts"]) == ("failed", "missing", 0)
    assert emu.stats()["requests"] == 2
    assert_no_signature(*outputs(proc, out))


async def test_each_attempt_signs_a_fresh_url_valid_for_the_request(
    tmp_path: Path, buckets: Buckets, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry never reuses a URL: every attempt signs anew (new date, new signature) with an
    expiry of --timeout plus the margin, and the retried result names no signature."""
    from batchscribe import RunOptions, run_batch_async
    from batchscribe.emulator import EmulatorConfig
    from batchscribe.events import ItemRetried

    bucket = buckets("s3")
    bucket.put("a/clip.wav", wav_bytes(0.2))
    # The first answer is a 429 asking for 1.1 s: the retry comes in a later second.
    emu = emulator(faults=FaultRates(p429=1.0), retry_delay_s=1.1)
    signed: list[str] = []
    sign = cloud._S3.sign

    async def spy(self: Any, bucket_name: str, key: str, seconds: int) -> str:
        url = await sign(self, bucket_name, key, seconds)
        signed.append(url)
        return url

    monkeypatch.setattr(cloud._S3, "sign", spy)

    def heal(event: Any) -> None:
        if isinstance(event, ItemRetried):
            emu.config = EmulatorConfig(key=emu.config.key, seed=7)

    out = tmp_path / "r.jsonl"
    options = RunOptions(
        sources=[bucket.uri("a")], out=str(out), api_key=emu.config.key,
        endpoint=emu.endpoint(), timeout=30, max_retry_wait=5,
    )  # fmt: skip
    summary = await run_batch_async(options, subscribers=[heal])
    assert summary.ok == 1 and summary.retries == 1
    assert len(signed) == 2
    queries = [parse_qs(urlsplit(url).query) for url in signed]
    assert queries[0]["X-Amz-Date"] != queries[1]["X-Amz-Date"]
    assert queries[0]["X-Amz-Signature"] != queries[1]["X-Amz-Signature"]
    assert all(q["X-Amz-Expires"] == [str(int(30 + cloud.SIGN_MARGIN))] for q in queries)
    # Both signed URLs name one object: the emulator saw the same content twice.
    assert canonical_url(signed[0]) == canonical_url(signed[1])
    assert emu.stats()["by_content"] == {content_key(signed[0]): 2}
    record = by_id(out)["clip.wav"]
    assert record["attempts"] == 2 and record["status"] == "ok"
    assert_no_signature(out.read_text())


# --------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("mode", [["--model", "pulse-pro"], ["--via-client"]])
def test_s3_objects_stream_to_the_api_without_local_copies(
    tmp_path: Path, buckets: Buckets, emulator: Emulator, mode: list[str]
) -> None:
    """pulse-pro (no URL input) and --via-client stream each object's bytes from the bucket:
    the API transcribes exactly those bytes, and nothing is written to local disk."""
    bucket = buckets("s3")
    clips = {f"{i}.wav": wav_bytes(0.3, freq=700 + 30 * i) for i in range(2)}
    clips["big.wav"] = wav_bytes(20.0, freq=410, rate=16000)  # 640 KB: several chunks
    for key, data in clips.items():
        bucket.put(f"in/{key}", data)
    emu = emulator()
    out = tmp_path / "r.jsonl"
    before = {p.name for p in tmp_path.iterdir()}
    proc = run_cli(tmp_path, bucket.env, "run", bucket.uri("in"), "--out", out,
                   "--endpoint", emu.endpoint(), "--no-progress", *mode)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = by_id(out)
    for key, data in clips.items():
        assert records[key]["transcription"] == transcript_for(data)
        assert records[key]["size"] == len(data)
    assert emu.stats()["by_content"] == {content_key(data): 1 for data in clips.values()}
    # (the results and the run's status file: no copy of an object)
    assert {p.name for p in tmp_path.iterdir()} - before == {"r.jsonl", "r.jsonl.status.json"}


def test_gcs_rescan_changed_resends_changed_objects_and_new_ones_only(
    tmp_path: Path, buckets: Buckets, emulator: Emulator
) -> None:
    """Records carry the GCS generation; a rerun sends only new objects, and with
    --rescan-changed also the objects rewritten since (their record superseded)."""
    bucket = buckets("gs")
    first = {"a.wav": wav_bytes(0.2, freq=600), "b.wav": wav_bytes(0.2, freq=610)}
    for key, data in first.items():
        bucket.put(f"v/{key}", data)
    emu = emulator()
    out = tmp_path / "r.jsonl"
    argv = ["run", bucket.uri("v"), "--out", out, "--endpoint", emu.endpoint(),
            "--model", "pulse-pro", "--no-progress", "--rescan-changed"]  # fmt: skip
    assert run_cli(tmp_path, bucket.env, *argv).returncode == 0
    generation = by_id(out)["a.wav"]["generation"]
    assert run_cli(tmp_path, bucket.env, *argv).returncode == 0
    assert emu.stats()["requests"] == 2  # unchanged: nothing sent

    changed, new = wav_bytes(0.25, freq=620), wav_bytes(0.2, freq=630)
    bucket.put("v/a.wav", changed)
    bucket.put("v/c.wav", new)
    proc = run_cli(tmp_path, bucket.env, *argv)
    assert proc.returncode == 0, proc.stderr
    assert emu.stats()["requests"] == 4
    records = by_id(out)
    assert records["a.wav"]["transcription"] == transcript_for(changed)
    assert records["a.wav"]["generation"] != generation
    assert records["c.wav"]["transcription"] == transcript_for(new)
    assert records["b.wav"]["transcription"] == transcript_for(first["b.wav"])


# --------------------------------------------------------------------------- preflight


@pytest.mark.parametrize("case", ["s3-missing", "gs-missing", "s3-denied", "s3-no-credentials"])
def test_unusable_bucket_exits_2_before_any_request(
    tmp_path: Path, buckets: Buckets, emulator: Emulator, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """A missing bucket, denied access or missing credentials: exit 2 with one line on stderr,
    before any transcription request and before the results file is created."""
    bucket = buckets("s3")
    bucket.put("a/x.wav", wav_bytes(0.1))
    env: dict[str, str | None] = dict(bucket.env)
    source = bucket.uri("a")
    expected = "does not exist"
    if case == "s3-missing":
        source = "s3://no-such-bucket-here/a"
    elif case == "gs-missing":
        source = "gs://no-such-bucket-here/a"
    elif case == "s3-denied":
        from moto import settings

        # moto checks credentials from now on: this key is unknown to it.
        monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
        expected = "access denied"
    else:
        env["AWS_ACCESS_KEY_ID"] = env["AWS_SECRET_ACCESS_KEY"] = None  # removed
        expected = "no credentials found"
    emu = emulator()
    out = tmp_path / "r.jsonl"
    proc = run_cli(tmp_path, env, "run", source, "--out", out, "--endpoint", emu.endpoint())
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("batchscribe: error: ")
    assert expected in lines[0] and source in lines[0]
    assert emu.stats()["requests"] == 0
    assert not out.exists()


# --------------------------------------------------------------------------- dry run


def test_dry_run_counts_objects_bytes_and_header_durations(
    tmp_path: Path, buckets: Buckets
) -> None:
    """--dry-run on a bucket counts objects and bytes and reads WAV durations from a ranged GET
    of each object's first bytes; it sends nothing."""
    bucket = buckets("s3")
    clips = [wav_bytes(1.5, rate=8000), wav_bytes(2.5, rate=16000)]
    for i, data in enumerate(clips):
        bucket.put(f"d/{i}.wav", data)
    out = tmp_path / "r.jsonl"
    proc = run_cli(tmp_path, bucket.env, "run", bucket.uri("d"), "--out", out, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "items: 2  to send: 2" in proc.stdout
    assert f"({4.0:.1f} s, {sum(map(len, clips)) / 1e6:.1f} MB)" in proc.stdout
    assert not out.exists()


# --------------------------------------------------------------------------- secrets, imports


def test_signatures_are_scrubbed_from_outcomes_and_output_lines() -> None:
    """Whatever echoes a presigned URL (an error body, a response field, a log line), the
    signature parts are replaced; the object's name stays readable."""
    from batchscribe.console import Redactor
    from batchscribe.pulse import Outcome, Verdict

    s3 = (
        "https://b.s3.amazonaws.com/k.wav?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential="
        "AKIA%2F20260101&X-Amz-Date=20260101T000000Z&X-Amz-Expires=1200&X-Amz-Signature=abc123"
    )
    gs = "https://storage.googleapis.com/b/k.wav?X-Goog-Credential=x&X-Goog-Signature=def456"
    echo = {"echo": [{"url": gs}]}
    outcome = cloud.scrub_outcome(
        Outcome(Verdict.FAIL, 400, "4xx", f"HTTP 400: cannot fetch {s3}", payload=echo)
    )
    text = json.dumps([outcome.error, outcome.payload])
    assert "abc123" not in text and "def456" not in text and "AKIA" not in text
    assert "b.s3.amazonaws.com/k.wav" in text
    line = Redactor()(f"retrying {s3} and {gs}")
    assert "abc123" not in line and "def456" not in line and "k.wav" in line


def test_base_install_never_imports_the_cloud_libraries() -> None:
    """Importing the CLI, the engine and the manifest reader loads no cloud library."""
    code = (
        "import sys, batchscribe.cli, batchscribe.run.engine, batchscribe.manifest\n"
        "import batchscribe.run.plan\n"
        "libs = ('aiobotocore', 'botocore', 'gcloud')\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in libs]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)
