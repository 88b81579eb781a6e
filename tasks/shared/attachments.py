"""Attachment bytes, stored once in Redis under their SHA-256, with a TTL.

Messages and tasks carry :class:`AttachmentRef` (digest, name, type, size),
never the bytes; the worker loads each attachment once per batch.
"""

from __future__ import annotations

import hashlib
import mimetypes
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from redis import Redis

from tasks.delivery.engine.compose import Attachment
from tasks.delivery.engine.errors import InvalidMessageError
from tasks.shared.keys import key

ATTACHMENT_TTL = 7 * 24 * 3600  # outlives every retry of the messages that use it
MAX_FILENAME = 255
_MIME_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
_NOT_ATTACHABLE = frozenset({"multipart", "message"})

# Store the bytes unless they are there already; either way the TTL starts again.
_PUT = """
if redis.call('EXPIRE', KEYS[1], ARGV[2]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""


@dataclass(frozen=True, slots=True)
class AttachmentRef:
    """What a message keeps of an attachment: enough to load and name it."""

    sha256: str
    filename: str
    content_type: str
    size: int

    def as_fields(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> AttachmentRef:
        return cls(str(fields["sha256"]), str(fields["filename"]), str(fields["content_type"]),
                   int(fields["size"]))


def clean_filename(name: str) -> str:
    """The last path component of *name*, without control characters or leading dots."""
    name = unicodedata.normalize("NFC", name.replace("\\", "/").rsplit("/", 1)[-1])
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = name.strip().lstrip(".").strip()
    return name[:MAX_FILENAME] or "attachment"


def content_type_for(filename: str, declared: str | None) -> str:
    """The declared type when it is a real, attachable one; else guessed from the name.

    Raises :class:`ValueError` for a malformed type or one that is not a file
    (``multipart/*``, ``message/*``).
    """
    declared = (declared or "").partition(";")[0].strip().lower()
    if declared and declared != "application/octet-stream":
        if not _MIME_TYPE.fullmatch(declared):
            raise ValueError(f"{declared!r} is not a MIME type (type/subtype)")
        if declared.partition("/")[0] in _NOT_ATTACHABLE:
            raise ValueError(f"{declared!r} cannot be the type of an attached file")
        return declared
    guessed = mimetypes.guess_type(filename, strict=False)[0]
    if guessed and guessed.partition("/")[0] not in _NOT_ATTACHABLE:
        return guessed
    return "application/octet-stream"


class AttachmentStore:
    """Content-addressed attachment bytes."""

    def __init__(self, redis: Redis, *, ttl: int = ATTACHMENT_TTL) -> None:
        self.redis = redis
        self.ttl = ttl
        self._put = redis.register_script(_PUT)

    def put(self, data: bytes, filename: str, content_type: str | None = None) -> AttachmentRef:
        """Store *data* (once, whatever the name); return the reference a message keeps."""
        name = clean_filename(filename)
        digest = hashlib.sha256(data).hexdigest()
        self._put([key("attachment", digest)], [data, self.ttl])
        return AttachmentRef(digest, name, content_type_for(name, content_type), len(data))

    def get(self, sha256: str) -> bytes | None:
        data: bytes | None = self.redis.get(key("attachment", sha256))
        return data

    def load(self, refs: Iterable[AttachmentRef]) -> list[Attachment]:
        """The attachments, bytes and all; :class:`InvalidMessageError` if one has expired."""
        loaded: list[Attachment] = []
        for ref in refs:
            data = self.get(ref.sha256)
            if data is None:
                raise InvalidMessageError(f"attachment {ref.filename!r} is no longer stored")
            loaded.append(Attachment(ref.filename, ref.content_type, data, sha256=ref.sha256))
        return loaded
