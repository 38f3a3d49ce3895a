"""One manifest record -> an :class:`~batchscribe.items.Item` or the problem with it: fields
(id, path or url, Pulse parameters, metadata), URL checks, and messages that are one printable
line of bounded length."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from batchscribe.ids import DigestSet
from batchscribe.items import CLOUD_OBJECT, LOCAL_FILE, URL, Item, Problem, is_cloud_uri
from batchscribe.pulse import PARAM_NAMES, PulseParams, check_combination, coerce_param

_QUOTE_MAX = 200  # characters of user content quoted in a message
_MESSAGE_MAX = 500

_OWN_FIELDS = frozenset({"id", "path", "url"})
_PARAM_FIELDS = frozenset(PARAM_NAMES)


def item_from_fields(
    fields: Mapping[str, Any], base: str, origin: str, seen: DigestSet, *, from_json: bool
) -> Item | str:
    """Build an item from one manifest record, or return the problem with it."""
    params: dict[str, Any] = {}
    metadata: dict[str, Any] | None = None
    for key, value in fields.items():
        if key in _OWN_FIELDS:
            continue
        if key in _PARAM_FIELDS:
            if value is None:  # JSON null: no override
                continue
            try:
                params[key] = coerce_param(key, value)
            except ValueError as exc:
                return str(exc)
        elif metadata is None:
            metadata = {key: value}
        else:
            metadata[key] = value
    item_id = fields.get("id")
    if item_id is not None and type(item_id) is not str:
        if not from_json or type(item_id) is not int:
            return f'"id" must be a string or an integer, not {json_type(item_id)}'
        item_id = str(item_id)
    return make_item(
        fields.get("path"), fields.get("url"), item_id, params, metadata, base, origin, seen
    )


def make_item(
    path: Any,
    url: Any,
    item_id: str | None,
    params: dict[str, Any],
    metadata: dict[str, Any] | None,
    base: str,
    origin: str,
    seen: DigestSet,
) -> Item | str:
    """Validate a record's source and id and make the item, or return the problem with it.

    ``base`` is the absolute folder relative paths resolve against.
    """
    if path is not None:
        if url is not None:
            return 'give either "path" or "url", not both'
        if type(path) is not str:
            return f'"path" must be a string, not {json_type(path)}'
        if not path:
            return '"path" is empty'
        if "\x00" in path:
            return f'"path" contains a NUL character: {quote(path)}'
        kind = CLOUD_OBJECT if is_cloud_uri(path) else LOCAL_FILE
        source = path if kind is CLOUD_OBJECT else resolve(base, path)
        if item_id is None:
            item_id = path
    else:
        if url is None:
            return 'needs a "path" or a "url" field'
        if type(url) is not str:
            return f'"url" must be a string, not {json_type(url)}'
        url_problem = _url_problem(url)
        if url_problem is not None:
            return url_problem
        source = url
        kind = URL
        if item_id is None:
            item_id = url
    if not item_id:
        return '"id" is empty'
    if "model" in params:
        # Only what the item sets itself; the engine re-checks against the run's defaults.
        # (a URL goes as URL input with model=pulse only, else through the client: no problem)
        combination = check_combination(PulseParams().with_overrides(params), url_input=False)
        if combination is not None:
            return combination
    if not seen.add(seen.key(item_id)):
        return f"duplicate id {quote(item_id)} (first seen earlier)"
    return Item(item_id, source, kind, params, metadata, origin)


def resolve(base: str, path: str) -> str:
    """``path`` made absolute against ``base`` and normalised (without touching the disk)."""
    if os.sep == "/":
        # Fast path for the common case: plain concatenation, normpath only when needed.
        joined = path if path[0] == "/" else f"{base}/{path}"
        if "/." in joined or "//" in joined:
            return os.path.normpath(joined)
        return joined
    return os.path.normpath(os.path.join(base, path))  # pragma: no cover (not POSIX)


def _url_problem(url: str) -> str | None:
    head = url[:8].lower()
    if head.startswith("https://"):
        rest = url[8:]
    elif head.startswith("http://"):
        rest = url[7:]
    else:
        return f"url must start with http:// or https://, not {quote(url)}"
    if not rest or rest[0] in "/?#":
        return f"url has no host: {quote(url)}"
    if not url.isprintable():
        return f"url contains unprintable characters: {quote(url)}"
    return None


def looks_like_url(text: str) -> bool:
    """Whether a text-list line is a URL (``scheme://...``) rather than a path."""
    scheme, sep, _ = text.partition("://")
    return (
        bool(sep)
        and len(scheme) > 1  # not a drive letter
        and scheme.isascii()
        and scheme[0].isalpha()
        and all(c.isalnum() or c in "+-." for c in scheme)
    )


# --------------------------------------------------------------------------- messages


def problem_at(file: str, line: int, message: str) -> Problem:
    """A problem whose message is one printable line of bounded length."""
    if not message.isprintable():
        message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    if len(message) > _MESSAGE_MAX:
        message = message[:_MESSAGE_MAX] + "..."
    return Problem(file, line, message)


def quote(value: str) -> str:
    """``repr`` of user content (escapes control characters), cut to a readable length."""
    if len(value) > _QUOTE_MAX:
        return repr(value[:_QUOTE_MAX]) + "..."
    return repr(value)


def printable(name: str) -> str:
    """A file name safe to print on one line."""
    return name if name.isprintable() else repr(name)[1:-1]


def reason(exc: OSError) -> str:
    """Why an OS call failed, in lower case (``no such file or directory``)."""
    return exc.strerror.lower() if exc.strerror else str(exc)


_JSON_TYPES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def json_type(value: object) -> str:
    """What a JSON value is, for a message (``an object``, ``a number``, ...)."""
    return _JSON_TYPES.get(type(value), type(value).__name__)
