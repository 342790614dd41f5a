"""One rule per kind of name the user gives us, and one way to show a path.

Each ``*_problem`` function says why a name is refused (or None); callers raise
their own error with it (the CLI at parse time, the library as a UsageError), so
a bad name fails before anything is sent, whichever way it came in.

A path is shown with :func:`display_path`: a name that holds a newline, a control
character or bytes that are not UTF-8 is quoted with escapes, so a file name can
neither break an output line nor forge one.
"""

from __future__ import annotations

import os
import re

#: A model id (``gemini-2.5-flash``, ``text-embedding-004``), and the prefixes the
#: SDK passes through: ``models/`` (Gemini API), ``tunedModels/`` (Gemini API tuned
#: models) and ``publishers/google/models/`` (Vertex). The SDK itself refuses
#: ``..``, ``?`` and ``&`` anywhere in a model (``t_model`` in
#: google/genai/_transformers.py raises "invalid model parameter."); a model id is
#: lowercase letters, digits, dots, dashes (and ``@VERSION`` on Vertex).
#: Source: googleapis/python-genai google/genai/_transformers.py ``t_model``;
#: https://ai.google.dev/gemini-api/docs/models (model codes).
_MODEL = re.compile(
    r"(?:models/|tunedModels/|publishers/google/models/)?[a-z0-9][a-z0-9._-]*(?:@[a-z0-9._-]+)?",
    re.ASCII,
)
#: "6 to 30 lowercase letters, digits, or hyphens. It must start with a letter, and
#: cannot have a trailing hyphen"; older projects may carry a ``domain:`` prefix; a
#: project number also names a project.
#: Source: https://cloud.google.com/resource-manager/reference/rest/v1/projects (projectId),
#: https://cloud.google.com/resource-manager/docs/creating-managing-projects
_PROJECT = re.compile(r"(?:[a-z0-9][a-z0-9.-]*[a-z0-9]:)?[a-z][a-z0-9-]{4,28}[a-z0-9]|[0-9]{1,20}")
#: A region (``us-central1``, ``europe-west4``) or ``global``: the SDK builds the host
#: ``{location}-aiplatform.googleapis.com`` from it, so it is one DNS label.
#: Source: https://cloud.google.com/vertex-ai/docs/general/locations
_LOCATION = re.compile(r"[a-z][a-z0-9-]{0,61}[a-z0-9]")
#: "Bucket names can only contain lowercase letters, numeric characters, dashes (-),
#: underscores (_), and dots (.) ... must start and end with a number or letter ...
#: 3-63 characters. Names containing dots can contain up to 222 characters, but each
#: dot-separated component can be no longer than 63 characters ... cannot be
#: represented as an IP address ... cannot begin with the goog prefix ... cannot
#: contain google"; no two dots in a row.
#: Source: https://cloud.google.com/storage/docs/buckets#naming
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
_IP = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
#: RFC 6838 restricted-name, the form an HTTP header carries (ASCII only).
_MIME_PART = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
_MIME = re.compile(f"{_MIME_PART}/{_MIME_PART}", re.ASCII)


def model_problem(name: str) -> str | None:
    """Why ``name`` is not a model name we can send, or None."""
    if not name.strip():
        return "the model name is empty"
    if _MODEL.fullmatch(name.strip()) is None:
        return (
            f"{name!r} is not a model name like gemini-2.5-flash or models/gemini-2.5-flash "
            "(lowercase letters, digits, '.', '-', '_')"
        )
    return None


def project_problem(project: str) -> str | None:
    if _PROJECT.fullmatch(project) is None:
        return (
            f"{project!r} is not a Google Cloud project id (6-30 lowercase letters, digits "
            "or hyphens, starting with a letter) or project number"
        )
    return None


def location_problem(location: str) -> str | None:
    if _LOCATION.fullmatch(location) is None:
        return f"{location!r} is not a Google Cloud location like us-central1 or global"
    return None


def bucket_problem(uri: str) -> str | None:
    """Why ``uri`` is not ``gs://BUCKET[/PREFIX]`` with a valid bucket and a plain prefix."""
    if not uri.startswith("gs://"):
        return f"{uri!r} is not a Cloud Storage location gs://BUCKET[/PREFIX]"
    bucket, _, prefix = uri.removeprefix("gs://").partition("/")
    if not _valid_bucket(bucket):
        return (
            f"{bucket!r} is not a Cloud Storage bucket name (3-63 lowercase letters, digits, "
            "'-', '_', '.'; starting and ending with a letter or digit)"
        )
    # Object names: no control characters, no "." or ".." segments (they would
    # name another place), no empty segments; "#", "?", "[", "]", "*" are
    # discouraged by the naming rules. Source: https://cloud.google.com/storage/docs/objects#naming
    segments = prefix.rstrip("/").split("/") if prefix.rstrip("/") else []
    bad = [s for s in segments if s in ("", ".", "..") or not _plain_segment(s)]
    if bad:
        return f"{uri!r}: the prefix may not hold empty, '.' or '..' parts or control characters"
    return None


def _valid_bucket(bucket: str) -> bool:
    if _BUCKET.fullmatch(bucket) is None or _IP.fullmatch(bucket):
        return False
    parts = bucket.split(".")
    if any(not part or len(part) > 63 for part in parts):
        return False
    if len(bucket) > 63 and "." not in bucket:
        return False
    return not bucket.startswith("goog") and "google" not in bucket


def _plain_segment(segment: str) -> bool:
    return segment.isprintable() and not any(c in segment for c in "#?[]*")


def mime_type_problem(mime_type: str) -> str | None:
    if _MIME.fullmatch(mime_type) is None:
        return f"{mime_type!r} is not a MIME type like application/jsonl (ASCII TYPE/SUBTYPE)"
    return None


def path_problem(path: object) -> str | None:
    """Why ``path`` cannot name a file here, or None (a name that is not UTF-8 is fine)."""
    if not isinstance(path, (str, os.PathLike)):
        return f"{path!r} is not a path"
    text = os.fspath(path)
    if not isinstance(text, str):
        return f"{path!r} is not a text path"
    if not text:
        return "the path is empty"
    if "\0" in text:
        return f"{display_path(text)} holds a NUL character, which no file name can"
    return None


# -- showing names ----------------------------------------------------------------------
def raw_bytes(text: str) -> bytes:
    """The bytes a (possibly surrogate-escaped) file name stands for; never fails, and
    two different strings never give the same bytes."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
        return text.encode("utf-8", "surrogatepass")


def utf8_text(text: str) -> str:
    """``text`` that can be encoded as UTF-8: bytes that are not UTF-8 become ``\\xNN``.
    For labels (upload and job display names), not for identities."""
    return raw_bytes(text).decode("utf-8", "backslashreplace")


def display_path(path: str | os.PathLike[str]) -> str:
    """A path as one printable line: as it is when it is plain, else quoted with
    escapes (``\\n`` and other control characters, bytes that are not UTF-8 as ``\\xNN``)."""
    text = os.fspath(path)
    if text.isprintable() and not text.startswith("'"):
        return text
    return "'" + "".join(_escaped(char) for char in text) + "'"


def _escaped(char: str) -> str:
    if "\udc80" <= char <= "\udcff":  # a byte that is not UTF-8 (surrogateescape)
        return f"\\x{ord(char) - 0xDC00:02x}"
    if char in "\\'":
        return "\\" + char
    return char if char.isprintable() else repr(char)[1:-1]


def json_safe(text: str) -> str:
    """JSON text (from ``json.dumps(..., ensure_ascii=False)``) whose lone surrogates,
    which UTF-8 cannot hold, are written as JSON ``\\udcNN`` escapes: any JSON reader
    reads them back, and Python's gives the very same (surrogate-escaped) file name."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


# -- the display name of our jobs: ``PATH [gba-TOKEN]`` ---------------------------------
# Written by submit, read back by the look-up of earlier jobs and by the Vertex backend
# (its output folder is named after the token): one format, in this leaf.

#: Display names keep at most this much of the path (the service caps them).
_MAX_DISPLAY_PATH = 400
#: What every upload id and display-name token of ours starts with.
NAME_PREFIX = "gba-"


def display_name_for(path: str, token: str) -> str:
    """``PATH [gba-TOKEN]``: readable, and found again by its token whatever the spelling
    (bytes of the name that are not UTF-8 shown as ``\\xNN``: the API takes UTF-8 only)."""
    path = utf8_text(path)
    shown = path if len(path) <= _MAX_DISPLAY_PATH else "..." + path[-_MAX_DISPLAY_PATH:]
    return f"{shown} [{token}]"


def token_of(display_name: str | None) -> str | None:
    """The token a display name of ours ends with (``PATH [gba-TOKEN]``), else None."""
    if not display_name or not display_name.endswith("]"):
        return None
    token = display_name.rsplit(" [", 1)[-1][:-1]
    return token if token.startswith(NAME_PREFIX) else None
