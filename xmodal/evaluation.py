"""Retrieval quality of a query set against relevance judgments (`xmodal eval`, `xmodal demo`).

Plain functions, no Kafka: load the queries (JSONL) and the judgments (TREC qrels or JSON), run
the queries through any `submit` callable that returns a Future[SearchReply] (the CLI passes a
SearchClient, tests may pass anything), and turn the ranked hits into measures with ir-measures
(pytrec-eval-terrier underneath). docs/eval.md is the user's reference.

Directions. A query's modality is the kind of its `query` (text, image or audio). The result
modality of a judgment is the modality of the judged item: from `item_modalities` when given
(`xmodal eval --items`), else from the hits, where the service reports each item's modality. A
query whose relevant items span modalities counts in each direction "<query>-><result>" with its
judgments restricted to that modality, while its ranking stays the whole mixed list: an image
judged relevant to a text query is found at the rank the user sees it, behind any captions the
service put first. Overall figures use every judgment. A relevant item whose modality is known
from neither source counts under the result modality "unknown".

Reranking. `rerank` (`xmodal eval --rerank/--no-rerank`) is sent with every query: true asks the
service's cross-encoder to rescore the first stage's candidates, false asks for the first stage
alone, None leaves it to the service's XMODAL_RERANK. Two runs compare first stage and reranked on
the same data; `reranked_queries` counts the replies that came back reranked (their hits carry a
`first_stage_score`), so a run can tell a service that did not rerank.

Ranking. trec_eval orders a run by score, and ties by item id; the service's order is what is
measured, so every ranked list is handed over (and written to run files) with the score
`depth - rank + 1`, which keeps the service's order and has no ties.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ir_measures
import orjson

from xmodal.errors import SchemaError, XmodalError
from xmodal.schema import SearchHit, SearchReply, SearchRequest, parse_search_request

__all__ = [
    "DEFAULT_KS",
    "EvalInputError",
    "EvalQuery",
    "Evaluation",
    "Qrels",
    "Threshold",
    "check_thresholds",
    "evaluate",
    "load_item_modalities",
    "load_qrels",
    "load_queries",
    "make_query",
    "measure_names",
    "parse_ks",
    "parse_threshold",
    "ranked_run",
    "run_queries",
    "search_depth",
    "write_run",
]

DEFAULT_KS = (1, 5, 10)
NDCG_CUTOFF = 10
UNKNOWN = "unknown"
_QUERY_FIELDS = frozenset({"query_id", "query", "modalities", "filter"})

Qrels = dict[str, dict[str, int]]  # query id -> item id -> relevance (> 0: relevant)


class EvalInputError(XmodalError):
    """A queries, qrels or items file (or an option) that cannot be used; the message names the file and line."""

    code = "eval_input"


# --- inputs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalQuery:
    """One query of the set: a validated SearchRequest template (its request_id/k/reply_to are set per run)."""

    query_id: str
    request: SearchRequest

    @property
    def modality(self) -> str:
        return self.request.query.kind

    def to_request(
        self,
        *,
        k: int,
        reply_to: str | None,
        deadline_ms: int | None = None,
        rerank: bool | None = None,
        rerank_k: int | None = None,
    ) -> SearchRequest:
        """The request to send; `rerank`/`rerank_k` None: the service's defaults."""
        update: dict[str, Any] = {"request_id": uuid.uuid4().hex, "k": k, "reply_to": reply_to, "deadline_ms": deadline_ms}
        if rerank is not None:
            update["rerank"] = rerank
        if rerank_k is not None:
            if not 1 <= rerank_k <= 1000:
                raise EvalInputError(f"--rerank-k takes 1 to 1000, got {rerank_k}")
            update["rerank_k"] = rerank_k
        return self.request.model_copy(update=update)


def _query_id(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise EvalInputError(f"{where}: query_id must be a string or an integer, got {orjson.dumps(value).decode()}")
    text = str(value)
    if not text or any(c.isspace() for c in text):
        raise EvalInputError(f"{where}: query_id {text!r} must be non-empty without whitespace (TREC files split on it)")
    return text


def make_query(
    query_id: Any, query: Any, *, modalities: Any = None, filter: Any = None, where: str = "query"
) -> EvalQuery:
    """An EvalQuery from the fields of a queries line, validated by the wire protocol's own parser."""
    qid = _query_id(query_id, where)
    payload: dict[str, Any] = {"request_id": "eval", "query": query}
    if modalities is not None:
        payload["modalities"] = modalities
    if filter is not None:
        payload["filter"] = filter
    try:
        request = parse_search_request(orjson.dumps(payload))
    except SchemaError as e:
        raise EvalInputError(f"{where}: query {qid}: {e.message}", code=e.code) from e
    return EvalQuery(qid, request)


def _read_text(path: Path, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise EvalInputError(f"cannot read the {what} file {path}: {e}") from e


def _json_lines(path: Path, what: str) -> Iterator[tuple[int, str, Any]]:
    """(line number, "path:line", parsed JSON) of each non-blank line of a JSONL file."""
    for lineno, line in enumerate(_read_text(path, what).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            yield lineno, where, orjson.loads(line)
        except orjson.JSONDecodeError as e:
            raise EvalInputError(f"{where}: not valid JSON: {e}") from e


def load_queries(path: Path) -> list[EvalQuery]:
    """QUERIES.jsonl: one `{"query_id", "query", "modalities"?, "filter"?}` object per line."""
    queries: list[EvalQuery] = []
    seen: dict[str, int] = {}
    for lineno, where, obj in _json_lines(path, "queries"):
        if not isinstance(obj, dict):
            raise EvalInputError(f"{where}: each line is a JSON object with query_id and query")
        unknown = sorted(set(obj) - _QUERY_FIELDS)
        if unknown:
            raise EvalInputError(f"{where}: unknown field {unknown[0]!r}; a line has {', '.join(sorted(_QUERY_FIELDS))}")
        for required in ("query_id", "query"):
            if required not in obj:
                raise EvalInputError(f"{where}: missing {required!r}")
        query = make_query(
            obj["query_id"], obj["query"], modalities=obj.get("modalities"), filter=obj.get("filter"), where=where
        )
        if query.query_id in seen:
            raise EvalInputError(f"{where}: query_id {query.query_id!r} is already on line {seen[query.query_id]}")
        seen[query.query_id] = lineno
        queries.append(query)
    if not queries:
        raise EvalInputError(f"{path}: no queries")
    return queries


def _relevance(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise EvalInputError(f"{where}: relevance must be an integer, got {value!r}")
    return value


def _judge(qrels: Qrels, qid: str, item: str, rel: int, where: str) -> None:
    judged = qrels.setdefault(qid, {})
    if item in judged and judged[item] != rel:
        raise EvalInputError(f"{where}: {qid} {item} is judged twice ({judged[item]} and {rel})")
    judged[item] = rel


def load_qrels(path: Path) -> Qrels:
    """TREC qrels (`query_id 0 item_id relevance` per line) or JSON `{query_id: {item_id: relevance}}`."""
    text = _read_text(path, "qrels")
    qrels: Qrels = {}
    if text.lstrip().startswith("{"):
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError as e:
            raise EvalInputError(f"{path}: not valid JSON: {e}") from e
        for raw_qid, judged in obj.items():
            qid = _query_id(raw_qid, f"{path}: {raw_qid!r}")
            if not isinstance(judged, dict):
                raise EvalInputError(f"{path}: {qid}: expected an object {{item_id: relevance}}")
            for item, rel in judged.items():
                _judge(qrels, qid, item, _relevance(rel, f"{path}: {qid}: {item}"), f"{path}: {qid}")
    else:
        for lineno, line in enumerate(text.splitlines(), 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            where = f"{path}:{lineno}"
            if len(fields) != 4:
                raise EvalInputError(
                    f"{where}: expected 4 fields `query_id 0 item_id relevance`, got {len(fields)}: {line.strip()!r}"
                )
            qid, _iteration, item, rel = fields
            _judge(qrels, qid, item, _relevance(rel, where), where)
    if not qrels:
        raise EvalInputError(f"{path}: no judgments")
    return qrels


def load_item_modalities(path: Path) -> dict[str, str]:
    """JSONL objects with "id" and "modality" (a MediaEvent file works as it is) -> item id -> modality."""
    out: dict[str, str] = {}
    for _lineno, where, obj in _json_lines(path, "items"):
        usable = isinstance(obj, dict) and isinstance(obj.get("id"), str)
        if not usable or obj.get("modality") not in ("text", "image", "audio"):
            raise EvalInputError(f"{where}: expected an object with \"id\" and \"modality\" (text, image or audio)")
        out[obj["id"]] = obj["modality"]
    return out


# --- options --------------------------------------------------------------------------------------


def parse_ks(spec: str) -> tuple[int, ...]:
    """"1,5,10" -> (1, 5, 10); each cutoff 1..1000."""
    try:
        ks = sorted({int(part) for part in spec.split(",") if part.strip()})
    except ValueError:
        raise EvalInputError(f"--k takes comma-separated integers, got {spec!r}") from None
    if not ks or ks[0] < 1 or ks[-1] > 1000:
        raise EvalInputError(f"--k takes cutoffs from 1 to 1000, got {spec!r}")
    return tuple(ks)


def search_depth(ks: Sequence[int]) -> int:
    """How many hits to ask for: the largest cutoff, and at least 10 for nDCG@10."""
    return max(max(ks), NDCG_CUTOFF)


def _measures(ks: Sequence[int]) -> list[Any]:
    return [
        *(ir_measures.Success @ k for k in ks),
        *(ir_measures.P @ k for k in ks),
        *(ir_measures.R @ k for k in ks),
        ir_measures.nDCG @ NDCG_CUTOFF,
        ir_measures.RR,
    ]


def measure_names(ks: Sequence[int]) -> list[str]:
    """The ir-measures names reported for these cutoffs, in table order."""
    return [str(m) for m in _measures(ks)]


@dataclass(frozen=True)
class Threshold:
    measure: str
    value: float
    direction: str | None = None  # None: the overall figure

    def __str__(self) -> str:
        return f"{self.direction + ':' if self.direction else ''}{self.measure}={self.value:g}"


def parse_threshold(spec: str, ks: Sequence[int]) -> Threshold:
    """`MEASURE=VALUE` or `DIRECTION:MEASURE=VALUE` (e.g. `text->image:Success@5=0.9`)."""
    left, sep, raw = spec.rpartition("=")
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not sep or not left or math.isnan(value):
        raise EvalInputError(f"--fail-under takes MEASURE=VALUE or DIRECTION:MEASURE=VALUE, got {spec!r}")
    direction, _, measure = left.rpartition(":")
    names = measure_names(ks)
    if measure not in names:
        raise EvalInputError(
            f"--fail-under: {measure!r} is not a computed measure; with --k {','.join(map(str, ks))} they are "
            f"{', '.join(names)}"
        )
    return Threshold(measure, value, direction or None)


# --- running --------------------------------------------------------------------------------------


def run_queries(
    queries: Sequence[EvalQuery],
    submit: Callable[[EvalQuery], Future[SearchReply]],
    *,
    concurrency: int = 16,
    on_done: Callable[[EvalQuery], Any] | None = None,
) -> tuple[dict[str, list[SearchHit]], dict[str, str]]:
    """Send every query with at most `concurrency` in flight; (hits by query id, failures by query id).

    A query whose search fails (an error reply, a timeout, a request refused before sending) is
    a failure, reported as "code: message"; it retrieved nothing."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    results: dict[str, list[SearchHit]] = {}
    failures: dict[str, str] = {}
    pending: dict[Future[SearchReply], EvalQuery] = {}
    todo = iter(queries)

    def top_up() -> None:
        while len(pending) < concurrency:
            query = next(todo, None)
            if query is None:
                return
            try:
                pending[submit(query)] = query
            except XmodalError as e:
                failures[query.query_id] = f"{e.code}: {e.message}"
                if on_done:
                    on_done(query)

    top_up()
    while pending:
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        for future in done:
            query = pending.pop(future)
            try:
                reply = future.result()
            except XmodalError as e:
                failures[query.query_id] = f"{e.code}: {e.message}"
            else:
                if reply.ok:
                    results[query.query_id] = list(reply.hits)
                else:
                    error = reply.error
                    failures[query.query_id] = f"{error.code}: {error.message}" if error else "search_error: ok=false"
            if on_done:
                on_done(query)
        top_up()
    return results, failures


def ranked_run(hits: Sequence[SearchHit], depth: int) -> list[tuple[str, float]]:
    """(item id, score) in the service's order, cut at `depth`, duplicates dropped, score depth-rank+1."""
    out: list[tuple[str, float]] = []
    seen: set[str] = set()
    for hit in hits:
        if hit.id in seen:
            continue
        seen.add(hit.id)
        out.append((hit.id, float(depth - len(out))))
        if len(out) == depth:
            break
    return out


def write_run(path: Path, queries: Sequence[EvalQuery], results: Mapping[str, Sequence[SearchHit]], depth: int,
              tag: str = "xmodal") -> int:
    """A TREC run file `query_id Q0 item_id rank score tag`; returns the number of lines written."""
    lines = []
    for query in queries:
        for rank, (item, score) in enumerate(ranked_run(results.get(query.query_id, ()), depth), 1):
            if not item or any(c.isspace() for c in item):
                raise EvalInputError(f"--run-out: item id {item!r} has whitespace; a TREC run file cannot hold it")
            lines.append(f"{query.query_id} Q0 {item} {rank} {score:g} {tag}\n")
    try:
        Path(path).write_text("".join(lines), encoding="utf-8")
    except OSError as e:
        raise EvalInputError(f"cannot write the run file {path}: {e}") from e
    return len(lines)


# --- measuring ------------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """Means over the judged queries: overall, per direction ("text->image") and per query modality."""

    ks: tuple[int, ...]
    depth: int
    metrics: dict[str, float]
    by_direction: dict[str, dict[str, float]]
    by_query_modality: dict[str, dict[str, float]]
    queries: int  # judged queries: those with at least one relevant item
    queries_by_direction: dict[str, int]
    queries_by_query_modality: dict[str, int]
    per_query: dict[str, dict[str, float]]  # overall figures of each judged query
    failed: dict[str, str] = field(default_factory=dict)  # query id -> "code: message" (counted as empty)
    without_relevant: list[str] = field(default_factory=list)  # queries with no relevant judgment (skipped)
    qrels_without_query: list[str] = field(default_factory=list)  # judged query ids not in the queries
    unknown_modality_items: int = 0  # relevant items whose modality nobody reported
    reranked_queries: int = 0  # replies whose hits came back reranked (they carry first_stage_score)
    rerank: bool | None = None  # what the run asked: True, False, or None (the service's default)

    def value(self, measure: str, direction: str | None = None) -> float | None:
        figures = self.metrics if direction is None else self.by_direction.get(direction)
        return None if figures is None else figures.get(measure)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": _rounded(self.metrics),
            "by_direction": {d: _rounded(m) for d, m in self.by_direction.items()},
            "by_query_modality": {d: _rounded(m) for d, m in self.by_query_modality.items()},
            "counts": {
                "queries": self.queries,
                "by_direction": self.queries_by_direction,
                "by_query_modality": self.queries_by_query_modality,
                "failed": len(self.failed),
                "without_relevant": len(self.without_relevant),
                "qrels_without_query": len(self.qrels_without_query),
                "unknown_modality_items": self.unknown_modality_items,
                "reranked": self.reranked_queries,
            },
            "rerank": self.rerank,
            "ks": list(self.ks),
            "depth": self.depth,
            "failed": dict(list(self.failed.items())[:20]),
        }


def _rounded(figures: Mapping[str, float]) -> dict[str, float]:
    return {name: round(value, 6) for name, value in figures.items()}


def _per_query(measures: list[Any], qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, list[tuple[str, float]]],
               qids: Sequence[str]) -> dict[str, dict[str, float]]:
    """Each query's measures; a query that retrieved nothing scores 0 (pytrec_eval would skip it)."""
    values = {qid: {str(m): 0.0 for m in measures} for qid in qids}
    judged = [ir_measures.Qrel(qid, item, rel) for qid in qids for item, rel in qrels[qid].items()]
    ranked = [ir_measures.ScoredDoc(qid, item, score) for qid in qids for item, score in run.get(qid, [])]
    if ranked:
        for metric in ir_measures.iter_calc(measures, judged, ranked):
            values[metric.query_id][str(metric.measure)] = float(metric.value)
    return values


def _means(values: Mapping[str, Mapping[str, float]], names: Sequence[str]) -> dict[str, float]:
    return {name: sum(v[name] for v in values.values()) / len(values) for name in names} if values else {}


def evaluate(
    queries: Sequence[EvalQuery],
    qrels: Mapping[str, Mapping[str, int]],
    results: Mapping[str, Sequence[SearchHit]],
    *,
    ks: Sequence[int] = DEFAULT_KS,
    item_modalities: Mapping[str, str] | None = None,
    failed: Mapping[str, str] | None = None,
    rerank: bool | None = None,
) -> Evaluation:
    """Measures of `results` (hits per query id, in the service's order) against `qrels`; `rerank`: what the run asked (reported)."""
    ks = tuple(sorted(set(ks)))
    depth = search_depth(ks)
    measures = _measures(ks)
    names = [str(m) for m in measures]
    modality_of: dict[str, str] = dict(item_modalities or {})
    for hits in results.values():
        for hit in hits:
            modality_of[hit.id] = hit.modality  # the index knows best
    run = {qid: ranked_run(hits, depth) for qid, hits in results.items()}

    judged_queries = []
    without_relevant = []
    for query in queries:
        if any(rel > 0 for rel in qrels.get(query.query_id, {}).values()):
            judged_queries.append(query)
        else:
            without_relevant.append(query.query_id)
    known = {q.query_id for q in queries}

    per_query = _per_query(measures, qrels, run, [q.query_id for q in judged_queries])

    by_query_modality: dict[str, list[str]] = {}
    split_qrels: dict[str, dict[str, dict[str, int]]] = {}  # direction -> query id -> restricted judgments
    unknown_items: set[str] = set()
    for query in judged_queries:
        by_query_modality.setdefault(query.modality, []).append(query.query_id)
        per_modality: dict[str, dict[str, int]] = {}
        for item, rel in qrels[query.query_id].items():
            modality = modality_of.get(item, UNKNOWN)
            per_modality.setdefault(modality, {})[item] = rel
            if modality == UNKNOWN and rel > 0:
                unknown_items.add(item)
        for modality, judged in sorted(per_modality.items()):
            if any(rel > 0 for rel in judged.values()):
                split_qrels.setdefault(f"{query.modality}->{modality}", {})[query.query_id] = judged

    by_direction = {}
    for direction, restricted in sorted(split_qrels.items()):
        by_direction[direction] = _means(_per_query(measures, restricted, run, list(restricted)), names)
    return Evaluation(
        ks=ks,
        depth=depth,
        metrics=_means(per_query, names),
        by_direction=by_direction,
        by_query_modality={
            m: _means({q: per_query[q] for q in qids}, names) for m, qids in sorted(by_query_modality.items())
        },
        queries=len(judged_queries),
        queries_by_direction={d: len(r) for d, r in sorted(split_qrels.items())},
        queries_by_query_modality={m: len(q) for m, q in sorted(by_query_modality.items())},
        per_query=per_query,
        failed=dict(failed or {}),
        without_relevant=without_relevant,
        qrels_without_query=sorted(set(qrels) - known),
        unknown_modality_items=len(unknown_items),
        reranked_queries=sum(any(h.first_stage_score is not None for h in hits) for hits in results.values()),
        rerank=rerank,
    )


def check_thresholds(evaluation: Evaluation, thresholds: Iterable[Threshold]) -> list[str]:
    """One message per threshold not met (a direction with no judged queries does not meet it)."""
    problems = []
    for t in thresholds:
        value = evaluation.value(t.measure, t.direction)
        where = f"{t.direction} " if t.direction else ""
        if value is None:
            known = ", ".join(evaluation.by_direction) or "none"
            problems.append(f"{where}{t.measure}: no judged queries in direction {t.direction} (directions: {known})")
        elif value < t.value:
            problems.append(f"{where}{t.measure} = {value:.4f} is below {t.value:g}")
    return problems
