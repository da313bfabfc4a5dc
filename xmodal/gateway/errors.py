"""HTTP statuses of the protocol's error codes (docs/protocol.md, "Error codes").

The body of every error is the protocol's own shape, `{"ok": false, "error": {"code", "message"}}`
(a SearchReply for searches), so an HTTP caller acts on the same stable codes as a Kafka client.
"""

from __future__ import annotations

__all__ = ["HTTP_STATUS", "status_for"]

_BAD_REQUEST = (
    "invalid_json", "missing_field", "extra_field", "invalid_field", "invalid_value", "too_long",
    "out_of_range", "invalid_modality", "k_out_of_range", "invalid_query", "invalid_filter",
    "unknown_space", "invalid_uri",
)
_UNPROCESSABLE = (
    "media_empty", "invalid_base64", "media_corrupt", "image_too_many_pixels", "audio_invalid_header",
    "audio_too_long", "unsupported_modality", "encode_error", "rerank_unavailable",
)
_FORBIDDEN = ("uri_scheme_forbidden", "uri_outside_roots", "http_disabled", "http_forbidden_address")

HTTP_STATUS: dict[str, int] = {
    **dict.fromkeys(_BAD_REQUEST, 400),
    **dict.fromkeys(_UNPROCESSABLE, 422),
    **dict.fromkeys(_FORBIDDEN, 403),
    "media_too_large": 413,
    "unsupported_format": 415,
    "uri_not_found": 404,
    "http_error": 502,
    "too_many_redirects": 502,
    "http_timeout": 504,
    "deadline_exceeded": 504,
    "index_error": 503,
    "internal_error": 500,
    # SearchClient's own codes (never on the wire)
    "timeout": 504,
    "not_sent": 503,
    "client_closed": 503,
    # the gateway's own
    "not_found": 404,
    "length_required": 411,
    "request_id_in_use": 409,
}


def status_for(code: str) -> int:
    """The HTTP status of an error code; 500 for a code this gateway does not know (a newer service)."""
    return HTTP_STATUS.get(code, 500)
