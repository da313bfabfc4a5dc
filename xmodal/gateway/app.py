"""The HTTP gateway: FastAPI routes in front of `SearchClient` — one more client of the Kafka query path.

    POST /search            SearchRequest JSON  ──┐
    POST /search/upload     multipart file + form ├─► SearchClient ─► <prefix>.search.requests ─► query service
    GET  /items/{id}/thumbnail   from the replies this gateway saw (bounded LRU)
    GET  /healthz  /readyz  /docs  /            liveness, readiness, OpenAPI, the web page

No search happens here: a request is validated with the service's own parser, sent over Kafka, and
the reply is returned as it came, with an HTTP status for its error code (errors.py). The gateway
fetches nothing: a `uri` query is the query service's to fetch, under its media policy (roots,
XMODAL_ALLOW_HTTP, the SSRF guard), exactly as for a Kafka client. docs/http.md is the reference.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from xmodal.config import Settings
from xmodal.errors import SchemaError, SearchError
from xmodal.gateway.errors import status_for
from xmodal.query_api.client import SearchClient
from xmodal.schema import SearchReply, SearchRequest, Thumbnail, dump_reply, parse_search_request
from xmodal.streams.kafka import client_config

__all__ = ["Gateway", "create_app"]

STATIC = Path(__file__).with_name("static")
# GET /items/{id}/thumbnail serves thumbnails from the replies this gateway saw, least recently
# used first out once their data URLs (image and audio) add up to more than this many bytes; a
# picture is ~2 kB, a sound's preview ~35-215 kB, so the bound is on bytes, not on items.
THUMBNAIL_CACHE_BYTES = 32 * 1024 * 1024
THUMBNAIL_TYPES = frozenset({"image/jpeg", "image/png", "audio/wav"})  # what GET /items/{id}/thumbnail serves
READY_CACHE_S = 2.0  # /readyz probes the system at most this often
READY_PROBE_S = 3.0
_MULTIPART_SLACK = 64 * 1024  # form fields and multipart framing around an upload


def _error_body(code: str, message: str, request_id: str = "") -> bytes:
    return orjson.dumps(
        {"request_id": request_id, "ok": False, "took_ms": 0.0, "hits": [], "error": {"code": code, "message": message}}
    )


def error_response(code: str, message: str, request_id: str = "") -> Response:
    return Response(_error_body(code, message, request_id), status_code=status_for(code), media_type="application/json")


class Gateway:
    """What the routes share: the SearchClient, the thumbnails seen in replies, the readiness probe."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.client = SearchClient(settings, bootstrap)
        self.upload_limit = min(settings.http_max_upload_bytes, settings.max_media_bytes)
        # A JSON search carries media as base64 (4/3 of the bytes); an upload carries form fields.
        self.body_limit = math.ceil(self.upload_limit * 4 / 3) + _MULTIPART_SLACK
        self._thumbnails: OrderedDict[str, Thumbnail] = OrderedDict()
        self._thumbnail_bytes = 0  # the data URLs' total length in _thumbnails
        self.thumbnail_cache_bytes = THUMBNAIL_CACHE_BYTES
        self._lock = threading.Lock()
        self._admin: AdminClient | None = None
        self._ready: tuple[float, int, dict[str, Any]] | None = None

    def start(self) -> Gateway:
        """Start the SearchClient; on any failure it is closed again (nothing is left behind)."""
        try:
            self.client.start()
            self._admin = AdminClient(client_config(self.settings, self.bootstrap))
        except BaseException:
            self.client.close()
            raise
        return self

    def stop(self) -> None:
        self.client.close()
        self._admin = None

    # -- searching ------------------------------------------------------------------------------

    async def search(self, raw: dict[str, Any]) -> Response:
        """Complete `raw` (id, reply topic, deadline), validate it as the service would, send it, relay the reply."""
        if "reply_to" in raw:
            return error_response(
                "invalid_field", "reply_to: the gateway replies over HTTP; leave reply_to out", str(raw.get("request_id", ""))
            )
        timeout = self.settings.search_timeout_s
        raw.setdefault("request_id", uuid.uuid4().hex)
        raw["reply_to"] = self.client.reply_topic
        raw.setdefault("deadline_ms", int((time.time() + timeout) * 1000))
        try:
            request = parse_search_request(orjson.dumps(raw))
        except SchemaError as e:
            return error_response(e.code, e.message, str(raw.get("request_id", ""))[:256])
        try:
            reply = await asyncio.wrap_future(self.client.send(request, timeout=timeout))
        except ValueError as e:  # the request id is already waiting for its reply
            return error_response("request_id_in_use", str(e), request.request_id)
        except SearchError as e:  # timeout, not_sent, client_closed
            return error_response(e.code, e.message, request.request_id)
        if reply.ok:
            self._remember(reply)
            return Response(dump_reply(reply), media_type="application/json")
        code = reply.error.code if reply.error is not None else "internal_error"
        return Response(dump_reply(reply), status_code=status_for(code), media_type="application/json")

    def _remember(self, reply: SearchReply) -> None:
        with self._lock:
            for hit in reply.hits:
                if hit.thumbnail is not None:
                    old = self._thumbnails.pop(hit.id, None)
                    if old is not None:
                        self._thumbnail_bytes -= _url_bytes(old)
                    self._thumbnails[hit.id] = hit.thumbnail
                    self._thumbnail_bytes += _url_bytes(hit.thumbnail)
            while self._thumbnail_bytes > self.thumbnail_cache_bytes and self._thumbnails:
                _, evicted = self._thumbnails.popitem(last=False)
                self._thumbnail_bytes -= _url_bytes(evicted)

    def thumbnail(self, item_id: str) -> Thumbnail | None:
        with self._lock:
            found = self._thumbnails.get(item_id)
            if found is not None:
                self._thumbnails.move_to_end(item_id)
            return found

    # -- readiness ------------------------------------------------------------------------------

    async def readiness(self) -> tuple[int, dict[str, Any]]:
        """(status, body): 200 when the broker answers and a query service answers a search."""
        cached = self._ready
        if cached is not None and time.monotonic() - cached[0] < READY_CACHE_S:
            return cached[1], cached[2]
        checks: dict[str, str] = {"broker": await asyncio.to_thread(self._broker_check)}
        if checks["broker"] == "ok":
            checks["query_service"] = await self._service_check()
        else:
            checks["query_service"] = "not checked: no broker"
        ready = all(v == "ok" for v in checks.values())
        body = {"ready": ready, **checks}
        status = 200 if ready else 503
        self._ready = (time.monotonic(), status, body)
        return status, body

    def _broker_check(self) -> str:
        if self.client.dead is not None:
            return self.client.dead.message
        if self._admin is None:
            return "the gateway is not started"
        topic = self.settings.requests_topic
        try:
            metadata = self._admin.list_topics(topic, timeout=READY_PROBE_S).topics.get(topic)
        except KafkaException as e:
            return f"cannot reach Kafka at {self.bootstrap}: {e}"
        if metadata is None or metadata.error is not None:
            return f"topic {topic} is not readable: {metadata.error if metadata else 'missing'}"
        return "ok"

    async def _service_check(self) -> str:
        """One real search (a short text, k=1): proves a query service consumes and replies."""
        try:
            future = self.client.search_async("readiness probe", k=1, modalities=["text"], timeout=READY_PROBE_S)
            reply = await asyncio.wrap_future(future)
        except SearchError as e:
            return f"{e.code}: {e.message}"
        if not reply.ok and reply.error is not None:
            return f"{reply.error.code}: {reply.error.message}"
        return "ok"


def _url_bytes(thumbnail: Thumbnail) -> int:
    """What a stored thumbnail weighs in the cache: its data URLs (the caption is small and bounded)."""
    return len(thumbnail.image or "") + len(thumbnail.audio or "")


def _body_limit(app: Callable[..., Awaitable[None]], gateway: Gateway) -> Callable[..., Awaitable[None]]:
    """ASGI middleware: a POST must say its length (411) and stay within the upload limit (413)
    before any of it is read or spooled."""

    async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            length = dict(scope["headers"]).get(b"content-length")
            refusal: Response | None = None
            if length is None:
                refusal = error_response("length_required", "send a Content-Length (chunked uploads are refused)")
            elif not length.isdigit() or int(length) > gateway.body_limit:
                refusal = error_response(
                    "media_too_large",
                    f"request body of {length.decode(errors='replace')} bytes is over the gateway's limit of "
                    f"{gateway.body_limit} (uploads up to {gateway.upload_limit} bytes: XMODAL_HTTP_MAX_UPLOAD_BYTES)",
                )
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await app(scope, receive, send)

    return guarded


def _split(value: str | None) -> list[str] | None:
    if value is None or not value.strip():
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


def _upload_modality(content_type: str | None) -> Literal["image", "audio"] | None:
    major = (content_type or "").split("/", 1)[0].strip().lower()
    return major if major in ("image", "audio") else None  # type: ignore[return-value]


def _decode_data_url(url: str) -> tuple[str, bytes] | None:
    head, sep, data = url.partition(",")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        return None
    try:
        return head[5:-7], base64.b64decode(data, validate=True)
    except binascii.Error:
        return None


_REPLY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": SearchReply, "description": "the SearchReply; hits best first"},
    400: {"model": SearchReply, "description": "a request the protocol refuses (error.code says why)"},
    403: {"model": SearchReply, "description": "a uri the media policy forbids"},
    413: {"model": SearchReply, "description": "media over the upload or media limits"},
    415: {"model": SearchReply, "description": "not an image or audio file"},
    422: {"model": SearchReply, "description": "media that cannot be decoded, or a modality no space encodes"},
    503: {"model": SearchReply, "description": "broker or index unavailable"},
    504: {"model": SearchReply, "description": "no reply within XMODAL_SEARCH_TIMEOUT_S"},
}


def create_app(gateway: Gateway) -> FastAPI:
    """The FastAPI app over a started (or about to be started) `gateway`."""
    app = FastAPI(
        title="xmodal",
        summary="Cross-modal search over Kafka: a text finds images and sounds, an image finds captions.",
        version="1",
        description="Every search is a SearchRequest sent over Kafka to the query service (docs/protocol.md); "
        "errors carry the protocol's codes. See docs/http.md.",
    )

    @app.exception_handler(RequestValidationError)
    async def _invalid_form(_request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", ())[1:]) or "body"
        code = "missing_field" if first.get("type") == "missing" else "invalid_field"
        return error_response(code, f"{field}: {first.get('msg', 'invalid')}")

    @app.post(
        "/search",
        responses=_REPLY_RESPONSES,
        response_model=None,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SearchRequest"}}},
            }
        },
    )
    async def search(request: Request) -> Response:
        """Search with a SearchRequest as JSON. `request_id` may be left out (a fresh one is used),
        `reply_to` must be: the reply comes back as this response. Set `"with_thumbnails": true`
        to get each hit's thumbnail (data URLs)."""
        try:
            raw = orjson.loads(await request.body())
        except orjson.JSONDecodeError as e:
            return error_response("invalid_json", f"SearchRequest is not valid JSON: {e}")
        if not isinstance(raw, dict):
            return error_response("invalid_json", f"SearchRequest must be a JSON object, got {type(raw).__name__}")
        return await gateway.search(raw)

    @app.post("/search/upload", responses=_REPLY_RESPONSES, response_model=None)
    async def search_upload(
        file: Annotated[UploadFile, File(description="an image (image/*) or a sound (audio/*)")],
        k: Annotated[int, Form(ge=1, le=1000)] = 10,
        modalities: Annotated[str | None, Form(description="result modalities, comma-separated")] = None,
        filter: Annotated[str | None, Form(description='metadata equality as a JSON object, e.g. {"album": "summer"}')] = None,
        spaces: Annotated[str | None, Form(description="spaces to search, comma-separated")] = None,
        with_thumbnails: Annotated[bool, Form()] = True,
        rerank: Annotated[bool | None, Form(description="rerank with a cross-encoder; absent: XMODAL_RERANK")] = None,
        rerank_k: Annotated[int | None, Form(ge=1, le=1000, description="candidates reranked; absent: XMODAL_RERANK_K")] = None,
    ) -> Response:
        """Search with an uploaded image or sound; its content type says which it is."""
        modality = _upload_modality(file.content_type)
        if modality is None:
            return error_response(
                "unsupported_format", f"file: content type {file.content_type!r} is neither image/* nor audio/*"
            )
        data = await file.read(gateway.upload_limit + 1)
        if len(data) > gateway.upload_limit:
            return error_response(
                "media_too_large", f"file: over the upload limit of {gateway.upload_limit} bytes (XMODAL_HTTP_MAX_UPLOAD_BYTES)"
            )
        raw: dict[str, Any] = {"query": {modality: base64.b64encode(data).decode("ascii")}, "k": k}
        raw["with_thumbnails"] = with_thumbnails
        if (chosen := _split(modalities)) is not None:
            raw["modalities"] = chosen
        if (names := _split(spaces)) is not None:
            raw["spaces"] = names
        if rerank is not None:  # absent: the service's default, as for a JSON request without the field
            raw["rerank"] = rerank
        if rerank_k is not None:
            raw["rerank_k"] = rerank_k
        if filter is not None and filter.strip():
            try:
                raw["filter"] = orjson.loads(filter)
            except orjson.JSONDecodeError as e:
                return error_response("invalid_filter", f"filter: not a JSON object: {e}")
        return await gateway.search(raw)

    @app.get("/items/{item_id:path}/thumbnail", responses={200: {"content": {"image/jpeg": {}, "image/png": {}, "audio/wav": {}}}})
    async def item_thumbnail(item_id: str, kind: Literal["image", "audio"] = "image") -> Response:
        """The thumbnail (`kind=image`: picture or waveform) or audio preview (`kind=audio`) of an
        item that a recent search through this gateway returned with thumbnails."""
        found = gateway.thumbnail(item_id)
        url = getattr(found, kind) if found is not None else None
        decoded = _decode_data_url(url) if url else None
        if decoded is None:
            why = "has none of that kind" if found is not None else "was not in a recent reply with thumbnails"
            return error_response("not_found", f"item {item_id!r} {why}")
        mime, data = decoded
        if mime not in THUMBNAIL_TYPES:  # a reply names the type; only what ingest stores is served
            return error_response("not_found", f"item {item_id!r} has no {kind} thumbnail of a served type ({mime!r})")
        headers = {"Cache-Control": "private, max-age=300", "X-Content-Type-Options": "nosniff"}
        return Response(data, media_type=mime, headers=headers)

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        """The gateway process answers."""
        return {"ok": True}

    @app.get("/readyz", responses={503: {"description": "broker or query service unreachable"}})
    async def readyz() -> Response:
        """The broker answers and a query service answers a search."""
        status, body = await gateway.readiness()
        return Response(orjson.dumps(body), status_code=status, media_type="application/json")

    index_html = (STATIC / "index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(index_html)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version, summary=app.summary,
                                 description=app.description, routes=app.routes)
            request_schema = SearchRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(request_schema.pop("$defs", {}))
            components["SearchRequest"] = request_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(_BodyLimitMiddleware, gateway=gateway)
    return app


class _BodyLimitMiddleware:
    def __init__(self, app: Any, gateway: Gateway) -> None:
        self._guarded = _body_limit(app, gateway)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self._guarded(scope, receive, send)
