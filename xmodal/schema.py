"""Wire protocol v1: MediaEvent, SearchRequest, SearchReply (JSON, UTF-8, orjson).

Parsing never lets a pydantic error escape: every violation becomes a SchemaError with a stable
`code` and the dotted `field` at fault, so DLQ records and error replies say exactly what to fix.
docs/protocol.md is the reference for these messages.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError
from pydantic import field_validator, model_validator

from xmodal.errors import SchemaError

__all__ = [
    "ErrorInfo",
    "MediaEvent",
    "Query",
    "SearchHit",
    "SearchReply",
    "SearchRequest",
    "TOPIC_NAME_PATTERN",
    "Thumbnail",
    "dump",
    "dump_reply",
    "parse_media_event",
    "parse_search_reply",
    "search_reply_from",
    "parse_search_request",
    "usable_topic",
]

Modality = Literal["text", "image", "audio"]
# Filters are exact matches: floats (no exact equality) and null (no match semantics) are refused.
FilterValue = StrictStr | StrictInt | StrictBool
# Metadata is stored as payload and filtered by equality: JSON objects of any depth are fine.
Metadata = dict[str, Any]
# Kafka's rule for topic names; "." and ".." match it but are reserved (see usable_topic).
TOPIC_NAME_PATTERN = r"^[A-Za-z0-9._-]{1,249}$"
_TOPIC_NAME = re.compile(TOPIC_NAME_PATTERN)
_RESERVED_TOPIC_NAMES = frozenset({".", ".."})


def usable_topic(name: object) -> bool:
    """True if `name` is a legal Kafka topic name: [A-Za-z0-9._-], 1-249 chars, not `.` or `..`."""
    return isinstance(name, str) and _TOPIC_NAME.fullmatch(name) is not None and name not in _RESERVED_TOPIC_NAMES


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


class MediaEvent(_Message):
    id: Annotated[str, Field(min_length=1, max_length=512)]
    op: Literal["upsert", "delete"] = "upsert"
    modality: Modality | None = None
    data: str | None = None  # base64
    uri: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    text: Annotated[str, Field(max_length=100_000)] | None = None
    metadata: Metadata = Field(default_factory=dict)
    ts: int | None = None  # ms since epoch; the Kafka timestamp when absent

    @model_validator(mode="after")
    def _modality_carries_its_content(self) -> MediaEvent:
        if self.op == "delete":
            return self
        if self.modality is None:
            raise _violation("modality", "missing_field", "an upsert needs 'modality': text, image or audio")
        if self.modality == "text":
            if not self.text or not self.text.strip():
                raise _violation("text", "missing_field", "a text event carries its text in 'text'")
            if self.data is not None or self.uri is not None:
                raise _violation("data", "invalid_field", "a text event carries 'text', not 'data' or 'uri'")
        else:
            if (self.data is None) == (self.uri is None):
                raise _violation(
                    "data", "invalid_field", f"an {self.modality} event carries exactly one of 'data' (base64) or 'uri'"
                )
            if self.text is not None:
                raise _violation("text", "invalid_field", f"an {self.modality} event has no 'text'; use 'metadata'")
        return self


class Query(_Message):
    text: Annotated[str, Field(min_length=1, max_length=10_000)] | None = None
    image: str | None = None  # base64
    audio: str | None = None  # base64
    uri: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    modality: Literal["image", "audio"] | None = None  # what `uri` points at

    @model_validator(mode="after")
    def _exactly_one(self) -> Query:
        given = [name for name in ("text", "image", "audio", "uri") if getattr(self, name) is not None]
        if len(given) != 1:
            raise _violation("query", "invalid_query", "a query carries exactly one of text, image, audio or uri")
        if self.uri is not None and self.modality is None:
            raise _violation("query.modality", "missing_field", "a uri query says what it points at: 'image' or 'audio'")
        if self.uri is None and self.modality is not None:
            raise _violation("query.modality", "invalid_field", "'modality' is only for uri queries")
        return self

    @property
    def kind(self) -> Modality:
        if self.text is not None:
            return "text"
        if self.image is not None:
            return "image"
        if self.audio is not None:
            return "audio"
        assert self.modality is not None  # guaranteed by _exactly_one
        return self.modality


class SearchRequest(_Message):
    request_id: Annotated[str, Field(min_length=1, max_length=256)]
    reply_to: Annotated[str, Field(pattern=TOPIC_NAME_PATTERN)] | None = None
    query: Query
    k: Annotated[int, Field(ge=1, le=1000)] = 10
    modalities: Annotated[list[Modality], Field(min_length=1)] | None = None
    filter: dict[str, FilterValue] = Field(default_factory=dict)
    spaces: Annotated[list[str], Field(min_length=1)] | None = None  # default: every configured space
    deadline_ms: int | None = None  # ms since epoch; a request seen after it gets deadline_exceeded
    # Hits carry the item's stored thumbnail (docs/http.md); off by default: replies stay small.
    with_thumbnails: StrictBool = False
    rerank: StrictBool | None = None  # default: the service's XMODAL_RERANK
    rerank_k: Annotated[int, Field(ge=1, le=1000)] | None = None  # default: XMODAL_RERANK_K

    @field_validator("reply_to")
    @classmethod
    def _reply_to_is_not_reserved(cls, reply_to: str | None) -> str | None:
        if reply_to in _RESERVED_TOPIC_NAMES:
            raise _violation("reply_to", "invalid_field", f"reply_to: {reply_to!r} is reserved, not a topic name")
        return reply_to


class _Reply(BaseModel):
    # Replies are read by clients: ignore fields a newer service adds, so old clients keep working.
    model_config = ConfigDict(extra="ignore", frozen=True)


class Thumbnail(_Reply):
    """What ingest stored to show an item (xmodal/thumbnails.py): data URLs and a caption."""

    image: str | None = None  # data:image/jpeg|png;base64,… (a picture, or a sound's waveform)
    audio: str | None = None  # data:audio/wav;base64,… (the start of a sound)
    text: str | None = None  # the start of a text item


class SearchHit(_Reply):
    id: str
    score: float  # calibrated: comparable across modalities and spaces (docs/protocol.md)
    modality: str
    metadata: Metadata = Field(default_factory=dict)
    cosine: float | None = None  # raw similarity in `space` (absent from older services)
    space: str | None = None  # the space whose list gave `score`
    first_stage_score: float | None = None  # `score` before reranking (only on reranked hits)
    thumbnail: Thumbnail | None = None  # only when the request asked `with_thumbnails` (and one is stored)


class ErrorInfo(_Reply):
    code: str
    message: str


class SearchReply(_Reply):
    request_id: str
    ok: bool
    took_ms: float = 0.0
    hits: list[SearchHit] = Field(default_factory=list)
    error: ErrorInfo | None = None


class _Violation(ValueError):
    """Raised inside validators; carries our code and field through pydantic's wrapping."""

    def __init__(self, field: str, code: str, message: str) -> None:
        super().__init__(message)
        self.field, self.code, self.message = field, code, message


def _violation(field: str, code: str, message: str) -> _Violation:
    return _Violation(field, code, message)


# pydantic error type -> our stable code
_CODES = {
    "missing": "missing_field",
    "extra_forbidden": "extra_field",
    "literal_error": "invalid_value",
    "greater_than_equal": "out_of_range",
    "less_than_equal": "out_of_range",
    "string_too_short": "invalid_value",
    "too_short": "invalid_value",
    "string_too_long": "too_long",
}


def _schema_error(e: ValidationError, message_name: str) -> SchemaError:
    err = e.errors()[0]  # the first is enough to act on; the message counts the rest
    cause = err.get("ctx", {}).get("error")
    loc = ".".join(str(p) for p in err["loc"])
    if isinstance(cause, _Violation):
        field, code, text = cause.field, cause.code, cause.message
    elif err["loc"][:1] == ("filter",) and len(err["loc"]) > 2:
        field = f"filter.{err['loc'][1]}"
        code, text = "invalid_filter", f"{field}: filter values are strings, integers or booleans (exact match)"
        return SchemaError(text, code=code, field=field)
    else:
        field = loc or message_name
        code = _CODES.get(err["type"], "invalid_field")
        if field == "k" and code == "out_of_range":
            code = "k_out_of_range"
        elif field.split(".")[-1] in ("modality", "modalities") or field.startswith("modalities."):
            code = "invalid_modality" if code == "invalid_value" else code
        text = f"{field}: {err['msg']}"
    more = len(e.errors()) - 1
    if more:
        text += f" (and {more} more problem{'s' if more > 1 else ''})"
    return SchemaError(text, code=code, field=field)


def _load_json(raw: bytes | str, message_name: str) -> Any:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise SchemaError(f"{message_name} is not valid JSON: {e}", code="invalid_json") from e
    if not isinstance(obj, dict):
        raise SchemaError(f"{message_name} must be a JSON object, got {type(obj).__name__}", code="invalid_json")
    return obj


def parse_media_event(key: bytes | None, value: bytes | None) -> MediaEvent:
    """A Kafka record on the media topic -> MediaEvent. A null value (tombstone) deletes `key`."""
    key_text: str | None = None
    if key is not None:
        try:
            key_text = key.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SchemaError("the record key is not UTF-8", code="invalid_key", field="key") from e
    if value is None:
        if not key_text:
            raise SchemaError("a tombstone (null value) needs the item id as its key", code="invalid_key", field="key")
        # The key is the id: it is validated like one (a 513-character key is refused, not fatal).
        try:
            return MediaEvent.model_validate({"id": key_text, "op": "delete"})
        except ValidationError as e:
            error = _schema_error(e, "MediaEvent")
            raise SchemaError(f"tombstone key: {error.message}", code=error.code, field="key") from e
    try:
        event = MediaEvent.model_validate(_load_json(value, "MediaEvent"))
    except ValidationError as e:
        raise _schema_error(e, "MediaEvent") from e
    if key_text is not None and key_text != event.id:
        # Ordering per item relies on the key: a mismatch would race with the item's other events.
        raise SchemaError(
            f"record key {key_text!r} differs from id {event.id!r}; key events by their id",
            code="key_mismatch",
            field="id",
        )
    return event


def parse_search_request(value: bytes | None) -> SearchRequest:
    if value is None:
        raise SchemaError("empty search request", code="invalid_json")
    try:
        return SearchRequest.model_validate(_load_json(value, "SearchRequest"))
    except ValidationError as e:
        raise _schema_error(e, "SearchRequest") from e


def parse_search_reply(value: bytes) -> SearchReply:
    return search_reply_from(_load_json(value, "SearchReply"))


def search_reply_from(raw: Mapping[str, Any]) -> SearchReply:
    """A SearchReply from an already parsed JSON object (no second parse on the reply path)."""
    try:
        return SearchReply.model_validate(raw)
    except ValidationError as e:
        raise _schema_error(e, "SearchReply") from e


def dump(message: BaseModel) -> bytes:
    return orjson.dumps(message.model_dump(mode="json"))


def dump_reply(reply: SearchReply) -> bytes:
    """A reply's JSON; hits without a thumbnail carry no `thumbnail` key, hits that were not
    reranked no `first_stage_score` key (replies as before)."""
    raw = reply.model_dump(mode="json")
    for hit in raw["hits"]:
        if hit.get("first_stage_score") is None:
            hit.pop("first_stage_score", None)
        if hit.get("thumbnail") is None:
            hit.pop("thumbnail", None)
        else:
            hit["thumbnail"] = {k: v for k, v in hit["thumbnail"].items() if v is not None}
    return orjson.dumps(raw)
