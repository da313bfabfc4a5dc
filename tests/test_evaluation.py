"""xmodal.evaluation without a broker: file formats, directions, and the figures against a hand computation."""

from __future__ import annotations

import math
from concurrent.futures import Future
from pathlib import Path

import ir_measures
import pytest

from xmodal.evaluation import (
    EvalInputError,
    EvalQuery,
    check_thresholds,
    evaluate,
    load_item_modalities,
    load_qrels,
    load_queries,
    make_query,
    parse_ks,
    parse_threshold,
    run_queries,
    write_run,
)
from xmodal.schema import ErrorInfo, SearchHit, SearchReply

# --- an independent computation: the textbook definitions, written out here ---------------------


def success(ranked: list[str], rel: dict[str, int], k: int) -> float:
    return float(any(rel.get(d, 0) > 0 for d in ranked[:k]))


def precision(ranked: list[str], rel: dict[str, int], k: int) -> float:
    return sum(rel.get(d, 0) > 0 for d in ranked[:k]) / k


def recall(ranked: list[str], rel: dict[str, int], k: int) -> float:
    return sum(rel.get(d, 0) > 0 for d in ranked[:k]) / sum(r > 0 for r in rel.values())


def reciprocal_rank(ranked: list[str], rel: dict[str, int]) -> float:
    return next((1 / i for i, d in enumerate(ranked, 1) if rel.get(d, 0) > 0), 0.0)


def ndcg10(ranked: list[str], rel: dict[str, int]) -> float:  # trec_eval: linear gains, log2(rank + 1)
    dcg = sum(max(rel.get(d, 0), 0) / math.log2(i + 1) for i, d in enumerate(ranked[:10], 1))
    ideal = sorted((r for r in rel.values() if r > 0), reverse=True)[:10]
    return dcg / sum(g / math.log2(i + 1) for i, g in enumerate(ideal, 1))


def by_hand(ranked: list[str], rel: dict[str, int], ks: tuple[int, ...]) -> dict[str, float]:
    figures = {f"Success@{k}": success(ranked, rel, k) for k in ks}
    figures |= {f"P@{k}": precision(ranked, rel, k) for k in ks}
    figures |= {f"R@{k}": recall(ranked, rel, k) for k in ks}
    return figures | {"nDCG@10": ndcg10(ranked, rel), "RR": reciprocal_rank(ranked, rel)}


def mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {name: sum(r[name] for r in rows) / len(rows) for name in rows[0]}


# --- the hand-made case --------------------------------------------------------------------------

KS = (1, 2)
MODALITY = {"c1": "text", "c2": "text", "c3": "text", "i1": "image", "i2": "image", "i3": "image",
            "i4": "image", "i5": "image", "a1": "audio", "a2": "audio"}  # fmt: skip
QRELS = {
    "q1": {"i1": 1, "i3": 1, "c2": 2, "c1": 0},  # a text query with relevant images and a caption
    "q2": {"c3": 1},  # an image query whose answer is a caption
    "q3": {"a2": 1},  # a sound query whose search fails: it found nothing
    "q4": {"c1": 0},  # no relevant item: not measured
    "q9": {"i1": 1},  # judged, but not among the queries
}
RANKED = {
    # i3 is never returned: its modality comes from item_modalities. c2 comes twice (two spaces).
    "q1": ["c1", "i1", "c2", "c2", "i2", "a1"],
    "q2": ["i4", "c3", "i5"],
    "q4": ["c1"],
}


def queries() -> list[EvalQuery]:
    return [
        make_query("q1", {"text": "a red circle"}),
        make_query("q2", {"image": "aGVsbG8="}),
        make_query("q3", {"audio": "aGVsbG8="}),
        make_query("q4", {"text": "nothing relevant"}, modalities=["text"]),
    ]


def hits(ids: list[str]) -> list[SearchHit]:
    # Scores deliberately out of order: the service's rank order is what counts, not the score.
    return [SearchHit(id=d, score=0.1 * (i % 3), modality=MODALITY[d]) for i, d in enumerate(ids)]


def results() -> dict[str, list[SearchHit]]:
    return {qid: hits(ids) for qid, ids in RANKED.items()}


def test_figures_match_a_hand_computation() -> None:
    report = evaluate(queries(), QRELS, results(), ks=KS, item_modalities=MODALITY, failed={"q3": "timeout: no reply"})
    dedup = {"q1": ["c1", "i1", "c2", "i2", "a1"], "q2": ["i4", "c3", "i5"], "q3": []}

    q1 = by_hand(dedup["q1"], QRELS["q1"], KS)
    # Spelled out once, so the helpers themselves are checked: relevant at ranks 2 (i1, gain 1) and 3 (c2, gain 2).
    assert q1["Success@1"] == 0 and q1["Success@2"] == 1 and q1["P@2"] == 0.5 and q1["RR"] == 0.5
    assert q1["R@2"] == pytest.approx(1 / 3)
    assert q1["nDCG@10"] == pytest.approx((1 / math.log2(3) + 2 / 2) / (2 + 1 / math.log2(3) + 1 / 2))
    q2 = by_hand(dedup["q2"], QRELS["q2"], KS)
    q3 = dict.fromkeys(q1, 0.0)

    assert report.queries == 3 and report.without_relevant == ["q4"] and report.qrels_without_query == ["q9"]
    for name, value in mean([q1, q2, q3]).items():
        assert report.metrics[name] == pytest.approx(value), name
    assert report.per_query["q1"] == pytest.approx(q1)

    # Directions: q1's judgments split by the judged items' modality; its ranking stays the mixed list.
    assert set(report.by_direction) == {"text->image", "text->text", "image->text", "audio->audio"}
    only = {m: {d: r for d, r in QRELS["q1"].items() if MODALITY[d] == m} for m in ("image", "text")}
    assert report.by_direction["text->image"] == pytest.approx(by_hand(dedup["q1"], only["image"], KS))
    assert report.by_direction["text->text"] == pytest.approx(by_hand(dedup["q1"], only["text"], KS))
    assert report.by_direction["text->text"]["RR"] == pytest.approx(1 / 3)  # behind c1 (judged 0) and i1
    assert report.by_direction["image->text"] == pytest.approx(q2)
    assert report.by_direction["audio->audio"] == pytest.approx(q3)
    assert report.by_query_modality["text"] == pytest.approx(q1)  # text->any: every judgment
    assert report.queries_by_direction == {"audio->audio": 1, "image->text": 1, "text->image": 1, "text->text": 1}

    as_json = report.to_dict()
    assert set(as_json["metrics"]) == {"Success@1", "Success@2", "P@1", "P@2", "R@1", "R@2", "nDCG@10", "RR"}
    assert as_json["counts"]["failed"] == 1 and as_json["counts"]["queries"] == 3


def test_modalities_come_from_the_hits_and_unknown_ones_are_counted() -> None:
    report = evaluate(queries(), QRELS, results(), ks=KS)  # no item map: i3 and a2 were never returned
    assert report.unknown_modality_items == 2
    assert set(report.by_direction) == {"text->image", "text->text", "text->unknown", "image->text", "audio->unknown"}
    # i1 is known from the hits: text->image holds only i1 now.
    assert report.by_direction["text->image"]["R@2"] == 1.0


def test_run_file_reproduces_the_figures_with_ir_measures(tmp_path: Path) -> None:
    qs = queries()
    report = evaluate(qs, QRELS, results(), ks=KS)
    path = tmp_path / "run.txt"
    assert write_run(path, qs, results(), depth=10) == 5 + 3 + 1
    lines = path.read_text().splitlines()
    assert lines[0] == "q1 Q0 c1 1 10 xmodal" and lines[4] == "q1 Q0 a1 5 6 xmodal"
    run = list(ir_measures.read_trec_run(str(path)))
    judged = [ir_measures.Qrel(q, d, r) for q in ("q1", "q2") for d, r in QRELS[q].items()]
    again = ir_measures.calc_aggregate([ir_measures.parse_measure(m) for m in report.metrics], judged, run)
    for measure, value in again.items():
        assert value == pytest.approx(mean([report.per_query["q1"], report.per_query["q2"]])[str(measure)])


def test_run_queries_bounds_the_requests_in_flight_and_keeps_failures() -> None:
    qs = [make_query(f"q{i}", {"text": f"query {i}"}) for i in range(10)]
    outstanding, most = 0, 0

    def submit(query: EvalQuery) -> Future[SearchReply]:
        nonlocal outstanding, most
        outstanding += 1
        most = max(most, outstanding)
        future: Future[SearchReply] = Future()
        n = int(query.query_id[1:])
        if n == 3:
            future.set_result(SearchReply(request_id="x", ok=False, error=ErrorInfo(code="media_error", message="bad")))
        else:
            future.set_result(SearchReply(request_id="x", ok=True, hits=[SearchHit(id=f"d{n}", score=1, modality="text")]))
        return future

    def done(_query: EvalQuery) -> None:
        nonlocal outstanding
        outstanding -= 1

    found, failed = run_queries(qs, submit, concurrency=4, on_done=done)
    assert most == 4 and outstanding == 0
    assert failed == {"q3": "media_error: bad"}
    assert sorted(found) == sorted(f"q{i}" for i in range(10) if i != 3) and found["q7"][0].id == "d7"


def test_query_files_load_and_bad_lines_name_file_and_line(tmp_path: Path) -> None:
    good = tmp_path / "q.jsonl"
    good.write_text(
        '{"query_id": "a", "query": {"text": "a red circle"}}\n\n'
        '{"query_id": 7, "query": {"uri": "file:///x.png", "modality": "image"}, "modalities": ["text"], "filter": {"k": 1}}\n'
    )
    loaded = load_queries(good)
    assert [(q.query_id, q.modality) for q in loaded] == [("a", "text"), ("7", "image")]
    assert loaded[1].request.modalities == ["text"] and loaded[1].request.filter == {"k": 1}
    request = loaded[0].to_request(k=10, reply_to="xmodal.search.replies")
    assert request.k == 10 and request.request_id != loaded[1].to_request(k=10, reply_to=None).request_id

    cases = {
        '{"query_id": "a", "query": {"text": "x"}}\nnot json\n': ":2: not valid JSON",
        '{"query_id": "a"}\n': ":1: missing 'query'",
        '{"query_id": "a", "query": {"text": "x", "image": "eA=="}}\n': ":1: query a: a query carries exactly one",
        '{"query_id": "a", "query": {"text": "x"}, "modalities": ["video"]}\n': ":1: query a: modalities.0",
        '{"query_id": "a", "query": {"text": "x"}, "k": 3}\n': ":1: unknown field 'k'",
        '{"query_id": "a b", "query": {"text": "x"}}\n': ":1: query_id 'a b' must be non-empty without whitespace",
        '{"query_id": "a", "query": {"text": "x"}}\n{"query_id": "a", "query": {"text": "y"}}\n': ":2: query_id 'a' is already on line 1",
        "\n": "no queries",
    }
    for text, message in cases.items():
        bad = tmp_path / "bad.jsonl"
        bad.write_text(text)
        with pytest.raises(EvalInputError) as caught:
            load_queries(bad)
        assert str(bad) in caught.value.message and message in caught.value.message, (text, caught.value.message)
    with pytest.raises(EvalInputError, match="cannot read the queries file"):
        load_queries(tmp_path / "missing.jsonl")


def test_qrels_load_from_trec_and_json_and_bad_lines_name_file_and_line(tmp_path: Path) -> None:
    trec = tmp_path / "qrels.txt"
    trec.write_text("q1 0 photos/a.png 1\nq1 0 b 0\n\nq2 Q0 c 2\n")
    assert load_qrels(trec) == {"q1": {"photos/a.png": 1, "b": 0}, "q2": {"c": 2}}
    as_json = tmp_path / "qrels.json"
    as_json.write_text('{"q1": {"photos/a.png": 1, "with space": 2}}')
    assert load_qrels(as_json) == {"q1": {"photos/a.png": 1, "with space": 2}}

    cases = {
        "q1 0 a 1\nq1 0 b\n": ":2: expected 4 fields",
        "q1 0 a high\n": ":1: relevance must be an integer",
        "q1 0 a 1\nq1 0 a 2\n": ":2: q1 a is judged twice",
        '{"q1": ["a"]}': "q1: expected an object",
        '{"q1": {"a": true}}': "relevance must be an integer",
        '{"q1": ': "not valid JSON",
        "\n": "no judgments",
    }
    for text, message in cases.items():
        bad = tmp_path / "bad.qrels"
        bad.write_text(text)
        with pytest.raises(EvalInputError) as caught:
            load_qrels(bad)
        assert str(bad) in caught.value.message and message in caught.value.message, (text, caught.value.message)


def test_item_modalities_read_media_event_files(tmp_path: Path) -> None:
    items = tmp_path / "items.jsonl"
    items.write_text('{"id": "a", "modality": "image", "data": "eA=="}\n{"id": "b", "modality": "text", "text": "x"}\n')
    assert load_item_modalities(items) == {"a": "image", "b": "text"}
    items.write_text('{"id": "a"}\n')
    with pytest.raises(EvalInputError, match=r"items.jsonl:1: expected an object"):
        load_item_modalities(items)


def test_options_and_thresholds() -> None:
    assert parse_ks("10,1, 5") == (1, 5, 10)
    for bad in ("", "0", "a", "1,2000"):
        with pytest.raises(EvalInputError):
            parse_ks(bad)
    t = parse_threshold("text->image:Success@2=0.9", KS)
    assert (t.direction, t.measure, t.value) == ("text->image", "Success@2", 0.9)
    assert parse_threshold("RR=0.25", KS).direction is None
    with pytest.raises(EvalInputError, match="'P@5' is not a computed measure.*Success@1, Success@2"):
        parse_threshold("P@5=0.5", KS)
    with pytest.raises(EvalInputError, match="MEASURE=VALUE"):
        parse_threshold("RR", KS)

    report = evaluate(queries(), QRELS, results(), ks=KS, item_modalities=MODALITY)
    rr = report.metrics["RR"]  # (1/2 + 1/2 + 0) / 3
    assert rr == pytest.approx(1 / 3)
    assert check_thresholds(report, [parse_threshold(f"RR={rr - 0.01}", KS)]) == []
    [problem] = check_thresholds(report, [parse_threshold(f"RR={rr + 0.01}", KS)])
    assert problem.startswith("RR = 0.3333 is below")
    assert check_thresholds(report, [parse_threshold("text->image:Success@2=1", KS)]) == []  # met: 1.0
    [missing] = check_thresholds(report, [parse_threshold("image->audio:RR=0.1", KS)])
    assert "no judged queries in direction image->audio" in missing
