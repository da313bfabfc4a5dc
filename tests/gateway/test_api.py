"""The HTTP API on the real system: tansu, the query service, qdrant-edge, the mini towers."""

from __future__ import annotations

import base64
import http.server
import io
import threading
from collections.abc import Iterator

import httpx
import orjson
import pytest
import soundfile as sf
from gateway_support import IMAGES, SOUNDS, TEXTS, UPLOAD_LIMIT, System, image_of, sound_of
from PIL import Image

from xmodal.config import load_settings
from xmodal.encoders.mini.corpus import image_png, waveform_wav
from xmodal.errors import ConfigError
from xmodal.gateway.errors import status_for
from xmodal.gateway.app import Gateway
from xmodal.gateway.server import GatewayServer
from xmodal.schema import SearchHit, SearchReply, Thumbnail

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.fixture
def api(system: System) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=system.url, timeout=30) as client:
        yield client


def search(api: httpx.Client, **body: object) -> httpx.Response:
    return api.post("/search", json=body)


def data_url_bytes(url: str, mime: str) -> bytes:
    head, _, data = url.partition(",")
    assert head == f"data:{mime};base64", head
    return base64.b64decode(data)


def test_text_search_finds_the_image_and_carries_thumbnails(api: httpx.Client) -> None:
    response = search(api, query={"text": "a red circle"}, k=3, modalities=["image"], with_thumbnails=True)
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["ok"] is True and reply["error"] is None
    hits = reply["hits"]
    assert [h["id"] for h in hits][:1] == ["images/red-circle.png"]
    assert all(h["modality"] == "image" and h["space"] == "mini" for h in hits)
    # the gallery's 64x64 PNGs are small enough to be kept as they came (xmodal/thumbnails.py)
    picture = Image.open(io.BytesIO(data_url_bytes(hits[0]["thumbnail"]["image"], "image/png")))
    assert max(picture.size) <= 128 and picture.getpixel((32, 32))[0] > 150  # red in the middle

    sounds = search(api, query={"text": "a very low steady hum"}, k=3, modalities=["audio"], with_thumbnails=True).json()
    assert sounds["hits"][0]["id"] == "sounds/low-hum.wav"
    thumb = sounds["hits"][0]["thumbnail"]
    assert Image.open(io.BytesIO(data_url_bytes(thumb["image"], "image/png"))).size == (128, 64)
    samples, rate = sf.read(io.BytesIO(data_url_bytes(thumb["audio"], "audio/wav")))
    assert rate == 16_000 and 0 < len(samples) <= 2 * 16_000

    texts = search(api, query={"text": "money"}, k=1, modalities=["text"], filter={"team": "finance"}, with_thumbnails=True)
    assert [(h["id"], h["thumbnail"]) for h in texts.json()["hits"]] == [("notes/budget", {"text": TEXTS["notes/budget"][0]})]


def test_without_with_thumbnails_hits_are_as_before(api: httpx.Client) -> None:
    reply = search(api, query={"text": "a red circle"}, k=5).json()
    assert reply["ok"] and len(reply["hits"]) == 5
    assert all(set(h) == {"id", "score", "modality", "metadata", "cosine", "space"} for h in reply["hits"])


def test_uploads_search_with_an_image_or_a_sound(api: httpx.Client) -> None:
    png = image_png(image_of("images/blue-square.png", seed=7))  # another drawing of the same item
    response = api.post(
        "/search/upload", files={"file": ("q.png", png, "image/png")}, data={"k": "3", "modalities": "image"}
    )
    assert response.status_code == 200, response.text
    hits = response.json()["hits"]
    assert hits[0]["id"] == "images/blue-square.png" and hits[0]["thumbnail"]["image"].startswith("data:image/png")

    wav = waveform_wav(sound_of("sounds/high-bell.wav", seed=7))
    response = api.post(
        "/search/upload", files={"file": ("q.wav", wav, "audio/wav")}, data={"modalities": "audio", "with_thumbnails": "false"}
    )
    assert response.status_code == 200, response.text
    hits = response.json()["hits"]
    assert hits[0]["id"] == "sounds/high-bell.wav" and "thumbnail" not in hits[0]

    filtered = api.post(
        "/search/upload", files={"file": ("q.png", png, "image/png")}, data={"filter": '{"kind": "sound"}', "k": "20"}
    )
    assert {h["id"] for h in filtered.json()["hits"]} == set(SOUNDS)


def test_uploads_rerank_as_json_searches_do(api: httpx.Client) -> None:
    png = image_png(image_of("images/yellow-star.png", seed=7))
    upload = lambda **form: api.post("/search/upload", files={"file": ("q.png", png, "image/png")}, data=form)  # noqa: E731
    form = {"k": "3", "modalities": "text", "with_thumbnails": "false"}
    plain = upload(**form)
    assert plain.status_code == 200, plain.text
    assert all("first_stage_score" not in h for h in plain.json()["hits"])  # no field: the service's default (off)

    reranked = upload(**form, rerank="true", rerank_k="5")
    assert reranked.status_code == 200, reranked.text
    hits = reranked.json()["hits"]
    assert len(hits) == 3 and all("first_stage_score" in h for h in hits)  # the mini cross-encoder scored image->text
    # The same request as JSON gets the same answer: the form fields reach the service as the JSON fields do.
    as_json = search(
        api, query={"image": base64.b64encode(png).decode()}, k=3, modalities=["text"], rerank=True, rerank_k=5
    ).json()
    assert [(h["id"], h["score"], h["first_stage_score"]) for h in as_json["hits"]] == [
        (h["id"], pytest.approx(h["score"]), pytest.approx(h["first_stage_score"])) for h in hits
    ]

    off = upload(**form, rerank="false")
    assert [(h["id"], h["score"]) for h in off.json()["hits"]] == [(h["id"], h["score"]) for h in plain.json()["hits"]]
    assert all("first_stage_score" not in h for h in off.json()["hits"])

    assert_error(upload(**form, rerank_k="0"), "invalid_field", 400)
    assert_error(upload(**form, rerank="perhaps"), "invalid_field", 400)
    wav = waveform_wav(sound_of("sounds/low-hum.wav"))
    sound = api.post("/search/upload", files={"file": ("q.wav", wav, "audio/wav")}, data={"modalities": "image", "rerank": "true"})
    assert_error(sound, "rerank_unavailable", 422)  # no cross-encoder scores sound->image: refused, not ignored


def assert_error(response: httpx.Response, code: str, status: int) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["ok"] is False and body["error"]["code"] == code, body
    assert status_for(code) == status and body["error"]["message"]


def test_errors_are_the_protocols_codes_with_http_statuses(api: httpx.Client) -> None:
    assert_error(search(api, query={"text": "x"}, k=0), "k_out_of_range", 400)
    assert_error(search(api, query={}), "invalid_query", 400)
    assert_error(search(api, query={"text": "x"}, kk=3), "extra_field", 400)
    assert_error(search(api, query={"text": "x"}, spaces=["nope"]), "unknown_space", 400)
    assert_error(search(api, query={"text": "x"}, filter={"a": 1.5}), "invalid_filter", 400)
    assert_error(search(api, query={"text": "x"}, reply_to="t.elsewhere"), "invalid_field", 400)
    assert_error(api.post("/search", content=b"{not json", headers={"content-type": "application/json"}), "invalid_json", 400)
    assert_error(search(api, query={"image": "@@@"}), "invalid_base64", 422)
    assert_error(search(api, query={"image": base64.b64encode(b"not an image at all").decode()}), "unsupported_format", 415)

    upload = lambda name, data, mime, **form: api.post("/search/upload", files={"file": (name, data, mime)}, data=form)  # noqa: E731
    assert_error(upload("a.txt", b"hello", "text/plain"), "unsupported_format", 415)
    assert_error(upload("a.png", b"\0" * (UPLOAD_LIMIT + 1), "image/png"), "media_too_large", 413)
    assert_error(upload("a.png", b"", "image/png"), "media_empty", 422)
    assert_error(upload("a.png", image_png(image_of("images/red-circle.png")), "image/png", k="many"), "invalid_field", 400)
    assert_error(api.post("/search/upload", data={"k": "3"}), "missing_field", 400)
    # Refused from its Content-Length, before the body is read.
    huge = api.post("/search", content=b" " * (UPLOAD_LIMIT * 2), headers={"content-type": "application/json"})
    assert_error(huge, "media_too_large", 413)


class _Counting(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        self.seen.append(self.path)
        self.send_response(200)
        self.send_header("content-type", "image/png")
        png = image_png(image_of("images/red-circle.png"))
        self.send_header("content-length", str(len(png)))
        self.end_headers()
        self.wfile.write(png)

    def log_message(self, *args: object) -> None:
        pass


def test_nothing_is_fetched_from_a_uri_the_media_policy_forbids(api: httpx.Client) -> None:

    target = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    thread = threading.Thread(target=target.serve_forever, daemon=True)
    thread.start()
    try:
        port = target.server_address[1]
        uri = f"http://127.0.0.1:{port}/red.png"
        assert_error(search(api, query={"uri": uri, "modality": "image"}), "http_disabled", 403)
        assert_error(search(api, query={"uri": "file:///etc/passwd", "modality": "image"}), "uri_scheme_forbidden", 403)
        assert _Counting.seen == []  # neither the gateway nor the service asked the server anything
    finally:
        target.shutdown()
        target.server_close()


def test_thumbnails_of_returned_items_are_served_by_id(api: httpx.Client) -> None:
    reply = search(api, query={"text": "a bell"}, k=20, with_thumbnails=True).json()
    by_id = {h["id"]: h["thumbnail"] for h in reply["hits"]}
    assert set(IMAGES) | set(SOUNDS) <= set(by_id)
    picture = api.get("/items/images/green-triangle.png/thumbnail")
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
    assert picture.content == data_url_bytes(by_id["images/green-triangle.png"]["image"], "image/png")
    preview = api.get("/items/sounds/noise.wav/thumbnail", params={"kind": "audio"})
    assert preview.status_code == 200 and preview.headers["content-type"] == "audio/wav"
    assert preview.content == data_url_bytes(by_id["sounds/noise.wav"]["audio"], "audio/wav")
    assert picture.headers["x-content-type-options"] == preview.headers["x-content-type-options"] == "nosniff"
    assert_error(api.get("/items/notes/rain/thumbnail"), "not_found", 404)  # a text has no picture
    assert_error(api.get("/items/never/seen/thumbnail"), "not_found", 404)


def _reply(*hits: tuple[str, Thumbnail]) -> SearchReply:
    return SearchReply(
        request_id="r", ok=True, hits=[SearchHit(id=i, score=0.5, modality="audio", thumbnail=t) for i, t in hits]
    )


def test_only_the_stored_media_types_are_served_as_thumbnails(api: httpx.Client, system: System) -> None:
    # A reply naming another type (as a hostile or broken producer of replies could) is not served as it.
    html = "data:text/html;base64," + base64.b64encode(b"<script>alert(1)</script>").decode()
    svg = "data:image/svg+xml;base64," + base64.b64encode(b"<svg onload='alert(1)'/>").decode()
    assert system.server.gateway is not None
    system.server.gateway._remember(_reply(("hostile/item", Thumbnail(image=html, audio=svg))))
    assert_error(api.get("/items/hostile/item/thumbnail"), "not_found", 404)
    assert_error(api.get("/items/hostile/item/thumbnail", params={"kind": "audio"}), "not_found", 404)


def test_the_thumbnail_cache_is_bounded_by_the_bytes_it_holds(tmp_path: object) -> None:
    settings = load_settings({"XMODAL_DATA_DIR": str(tmp_path), "XMODAL_METRICS_PORT": "0"})
    gateway = Gateway(settings, "127.0.0.1:9")  # never started: its cache only
    gateway.thumbnail_cache_bytes = 1000
    preview = Thumbnail(audio="data:audio/wav;base64," + "A" * 378)  # a 400-byte data URL
    gateway._remember(_reply(*((f"s{i}", preview) for i in range(5))))
    assert [i for i in ("s0", "s1", "s2", "s3", "s4") if gateway.thumbnail(i)] == ["s3", "s4"]  # oldest out first
    gateway._remember(_reply(("s4", preview)))  # seen again: counted once
    assert gateway.thumbnail("s3") is not None  # used: now the newest
    gateway._remember(_reply(("s5", preview)))
    assert [i for i in ("s3", "s4", "s5") if gateway.thumbnail(i)] == ["s3", "s5"]
    gateway._remember(_reply(("big", Thumbnail(audio="data:audio/wav;base64," + "A" * 2000))))
    assert gateway.thumbnail("big") is None and gateway._thumbnail_bytes == 0  # over the bound alone: not kept


def test_health_readiness_docs_and_page(api: httpx.Client, system: System) -> None:
    assert api.get("/healthz").json() == {"ok": True}
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"ready": True, "broker": "ok", "query_service": "ok"}
    spec = api.get("/openapi.json").json()
    assert {"/search", "/search/upload", "/items/{item_id}/thumbnail", "/healthz", "/readyz"} <= set(spec["paths"])
    assert spec["paths"]["/search"]["post"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SearchRequest"
    }
    assert "with_thumbnails" in spec["components"]["schemas"]["SearchRequest"]["properties"]
    assert "swagger-ui" in api.get("/docs").text
    page = api.get("/")
    assert page.status_code == 200 and '<script src="/static/app.js">' in page.text
    assert api.get("/static/app.js").status_code == 200


def test_readiness_says_when_no_query_service_answers(broker: str, system: System) -> None:
    # Same broker, a prefix nobody serves: the broker is fine, the query path is not.
    lonely = load_settings(
        {
            "XMODAL_KAFKA_BOOTSTRAP": broker,
            "XMODAL_TOPIC_PREFIX": f"{system.settings.topic_prefix}-nobody",
            "XMODAL_DATA_DIR": str(system.settings.data_dir / "lonely"),
            "XMODAL_METRICS_PORT": "0",
            "XMODAL_HTTP_PORT": "0",
        }
    )
    server = GatewayServer(lonely, broker).start()
    try:
        response = httpx.get(f"{server.url}readyz", timeout=30)
        body = response.json()
        assert response.status_code == 503 and body["ready"] is False and body["broker"] == "ok"
        assert body["query_service"].startswith("timeout:"), body
    finally:
        server.stop()


def test_a_busy_port_is_a_clear_error(broker: str, system: System) -> None:
    taken = load_settings(
        {"XMODAL_METRICS_PORT": "0", "XMODAL_DATA_DIR": str(system.settings.data_dir), "XMODAL_HTTP_PORT": str(system.server.port)}
    )
    with pytest.raises(ConfigError) as caught:
        GatewayServer(taken, broker).start()
    assert "XMODAL_HTTP_PORT" in str(caught.value) and str(system.server.port) in str(caught.value)
    assert orjson.loads(httpx.get(f"{system.url}healthz").content) == {"ok": True}  # the first one serves on
