"""What the run works on: an :class:`Item` (one piece of audio), a :class:`Problem` (a manifest
entry that cannot be one), and the kind of an item's source as a type (:class:`SourceKind`).

The manifest reader makes both; the plan, the engine and the cloud sender read them.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["CLOUD_OBJECT", "LOCAL_FILE", "URL", "Item", "Problem", "SourceKind"]


class SourceKind(enum.Enum):
    """Where an item's audio comes from, and so how it is sent."""

    #: a file on this machine (``source`` is its absolute path): uploaded as the body
    LOCAL_FILE = "file"
    #: an ``http(s)://`` URL: the service fetches it (a JSON body ``{"url": ...}``)
    URL = "url"
    #: an ``s3://`` / ``gs://`` object: sent as a presigned URL, or streamed through here
    CLOUD_OBJECT = "cloud"


LOCAL_FILE = SourceKind.LOCAL_FILE
URL = SourceKind.URL
CLOUD_OBJECT = SourceKind.CLOUD_OBJECT


@dataclass(frozen=True, slots=True)
class Item:
    """One piece of audio to transcribe.

    ``source`` is an absolute file path (relative manifest paths resolved against the manifest's
    folder), the URL, or the cloud object's ``s3://``/``gs://`` URI, as ``kind`` says;
    ``params`` holds the item's validated Pulse parameter overrides (empty when none);
    ``metadata`` every other manifest field (None when none); ``origin`` says where the item
    came from (``FILE:LINE``, or the file's path for directory items). A cloud object from a
    bucket listing also has its ``size`` and ``version`` (ETag or GCS generation); None when
    unknown.
    """

    id: str
    source: str
    kind: SourceKind
    params: Mapping[str, Any]
    metadata: Mapping[str, Any] | None
    origin: str
    size: int | None = None
    version: str | None = None

    @property
    def is_url(self) -> bool:
        """The service fetches the audio itself (``url_input`` in Pulse's terms)."""
        return self.kind is URL


@dataclass(frozen=True, slots=True)
class Problem:
    """A manifest entry that cannot become an item; ``line`` is 1-based (0 for directories)."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


#: The URI schemes of cloud objects and prefixes (S3, GCS).
SCHEMES = ("s3://", "gs://")


def is_cloud_uri(text: str) -> bool:
    """Whether ``text`` names an object or prefix in S3 (``s3://``) or GCS (``gs://``)."""
    return text[:5] in SCHEMES
