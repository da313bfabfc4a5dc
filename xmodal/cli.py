"""The `xmodal` command. Every flag that maps to a setting shows its XMODAL_* variable in --help."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any, NoReturn

import orjson
import typer
from rich.console import Console
from rich.table import Table

from xmodal.config import Settings, load_settings
from xmodal.errors import ConfigError, XmodalError

__all__ = ["app", "main"]

app = typer.Typer(
    name="xmodal",
    help="Streaming cross-modal search: Kafka in, Qdrant out, search over Kafka.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True)  # messages keep their lines whole (paths, ids), whatever the width
err = Console(stderr=True, soft_wrap=True)

DataDir = Annotated[Path | None, typer.Option(envvar="XMODAL_DATA_DIR", help="Embedded index, logs, broker address.")]
Spaces = Annotated[str | None, typer.Option(envvar="XMODAL_SPACES", help="Comma-separated spaces, e.g. mini or clip,clap.")]
Bootstrap = Annotated[
    str | None, typer.Option(envvar="XMODAL_KAFKA_BOOTSTRAP", help="Kafka bootstrap servers (default: embedded tansu).")
]
QdrantUrl = Annotated[str | None, typer.Option(envvar="XMODAL_QDRANT_URL", help="Qdrant server (default: embedded).")]


def _fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _settings(**flags: Any) -> Settings:
    """Environment first, flags on top (typer already read each flag's variable)."""
    overrides = {name: value for name, value in flags.items() if value is not None}
    try:
        settings = load_settings(**overrides)
    except ConfigError as e:
        _fail(e.message, 2)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for noisy in ("faust", "mode", "aiokafka", "transformers", "httpx"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    return settings


def _stop_on_signals() -> threading.Event:
    """An event set by the first Ctrl-C/SIGTERM: the caller stops in order (drain, services,
    broker). A second one is "now": exit at once (the embedded broker dies with this process,
    nothing is committed that was not written, so the next start replays what was in hand)."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set():
            os._exit(128 + signum)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    return stop


def _serve(settings: Settings, roles: Any, banner: str) -> None:
    """Start a Node, print where it listens, run until Ctrl-C/SIGTERM or until a service fails."""
    from xmodal.runtime import Node

    stop = _stop_on_signals()
    node = Node(settings, roles)
    try:
        with out.status("starting: loading towers, checking collections, joining Kafka…"):
            node.start()
    except XmodalError as e:
        _fail(e.message, 2)
    index = settings.qdrant_url or f"{settings.data_dir / 'index'} (embedded qdrant-edge)"
    broker = node.bootstrap + (
        "" if settings.kafka_bootstrap else " (embedded tansu, memory only: its topics are gone when xmodal up stops; the index is kept)"
    )
    out.print(f"[bold green]{banner}[/]", highlight=False)
    out.print(f"  broker   {broker}", highlight=False)
    out.print(f"  index    {index}", highlight=False)
    out.print(f"  spaces   {', '.join(settings.spaces)}", highlight=False)
    out.print(f"  topics   {settings.media_topic} → index · {settings.requests_topic} → {settings.replies_topic}")
    if settings.metrics_port:
        out.print(f"  metrics  http://127.0.0.1:{settings.metrics_port}/metrics")
    if node.http is not None:
        out.print(f"  web      {node.http.url}  (search page; API docs at {node.http.url}docs)", highlight=False)
    elif node.http_problem is not None:
        out.print(f"  web      [yellow]not served:[/] {node.http_problem}", highlight=False)
    out.print("Ctrl-C to stop.")
    try:
        while not stop.wait(0.2):
            if node.failure is not None:
                break
    finally:
        with out.status("stopping…"):
            node.stop()  # a failed worker leaves its group here, so its partitions move at once
    if node.failure is not None:
        # Non-zero, so a supervisor restarts it; the batch that failed was not committed.
        _fail(f"stopped after a failure: {node.failure} (nothing unwritten was committed; a restart replays it)", 3)
    out.print("stopped; the index is kept for the next start.")


@app.command()
def up(data_dir: DataDir = None, spaces: Spaces = None, kafka_bootstrap: Bootstrap = None, qdrant_url: QdrantUrl = None) -> None:
    """Run the whole system in one process: broker (unless XMODAL_KAFKA_BOOTSTRAP), ingest agents, search."""
    from xmodal.runtime import Roles

    settings = _settings(data_dir=data_dir, spaces=spaces, kafka_bootstrap=kafka_bootstrap, qdrant_url=qdrant_url)
    _serve(settings, Roles(ingest=True, query=True, start_broker=True, http=True), "xmodal is up")


HttpHost = Annotated[str | None, typer.Option(envvar="XMODAL_HTTP_HOST", help="Address the HTTP gateway listens on.")]
HttpPort = Annotated[int | None, typer.Option(envvar="XMODAL_HTTP_PORT", help="HTTP port (0: any free port).")]


@app.command()
def serve(
    http_host: HttpHost = None, http_port: HttpPort = None, data_dir: DataDir = None, kafka_bootstrap: Bootstrap = None
) -> None:
    """Serve the HTTP API and the search page; a client of the query service over Kafka (docs/http.md)."""
    from xmodal.gateway.server import GatewayServer

    settings = _settings(http_host=http_host, http_port=http_port, data_dir=data_dir, kafka_bootstrap=kafka_bootstrap)
    bootstrap = _bootstrap_or_fail(settings)
    stop = _stop_on_signals()
    server = GatewayServer(settings, bootstrap)
    try:
        server.start()
    except XmodalError as e:
        _fail(e.message, 2)
    out.print("[bold green]xmodal gateway is serving[/]", highlight=False)
    out.print(f"  web      {server.url}", highlight=False)
    out.print(f"  api      {server.url}docs", highlight=False)
    out.print(f"  broker   {bootstrap} · {settings.requests_topic} → {server.gateway.client.reply_topic if server.gateway else ''}", highlight=False)
    out.print("Ctrl-C to stop.")
    try:
        while not stop.wait(0.2):
            if server.crashed is not None:
                break
    finally:
        crashed = server.crashed
        server.stop()
    if crashed is not None:
        _fail(f"the gateway stopped: {crashed}", 3)
    out.print("stopped.")


@app.command()
def worker(
    with_query: Annotated[bool, typer.Option("--with-query", help="Also answer search requests.")] = False,
    data_dir: DataDir = None,
    spaces: Spaces = None,
    kafka_bootstrap: Bootstrap = None,
    qdrant_url: QdrantUrl = None,
) -> None:
    """Run the ingest agents (scale up to the media topic's partition count)."""
    from xmodal.runtime import Roles

    settings = _settings(data_dir=data_dir, spaces=spaces, kafka_bootstrap=kafka_bootstrap, qdrant_url=qdrant_url)
    _serve(settings, Roles(ingest=True, query=with_query), "xmodal worker is running")


@app.command("query-service")
def query_service(
    data_dir: DataDir = None, spaces: Spaces = None, kafka_bootstrap: Bootstrap = None, qdrant_url: QdrantUrl = None
) -> None:
    """Answer search requests from Kafka (scale freely; needs a Qdrant server to share the index)."""
    from xmodal.runtime import Roles

    settings = _settings(data_dir=data_dir, spaces=spaces, kafka_bootstrap=kafka_bootstrap, qdrant_url=qdrant_url)
    _serve(settings, Roles(ingest=False, query=True), "xmodal query service is running")


def _bootstrap_or_fail(settings: Settings) -> str:
    from xmodal.runtime import resolve_bootstrap

    bootstrap = resolve_bootstrap(settings)
    if bootstrap is None:
        _fail(
            "no Kafka broker: start `xmodal up` (same XMODAL_DATA_DIR, here "
            f"{settings.data_dir}) in another shell, or set XMODAL_KAFKA_BOOTSTRAP",
            2,
        )
    return bootstrap


def _embedded_broker(settings: Settings) -> bool:
    from xmodal.streams.broker import recorded_broker_is_embedded

    return not settings.kafka_bootstrap and recorded_broker_is_embedded(settings.data_dir)


@app.command()
def ingest(
    paths: Annotated[list[str], typer.Argument(help="Files or directories (.txt, .jsonl, images, audio); - for stdin.")],
    data_dir: DataDir = None,
    kafka_bootstrap: Bootstrap = None,
) -> None:
    """Publish media events to the media topic and wait for the broker's acknowledgements."""
    from tqdm import tqdm

    from xmodal.streams.producer import DeliveryReport, events_from_paths, produce_events

    settings = _settings(data_dir=data_dir, kafka_bootstrap=kafka_bootstrap)
    bootstrap = _bootstrap_or_fail(settings)
    report = DeliveryReport()
    with tqdm(desc="events", unit="ev", file=sys.stderr, disable=None) as bar:
        events = events_from_paths(paths, report, settings.max_media_bytes)
        try:
            produce_events(settings, bootstrap, events, report, on_sent=lambda: bar.update(1))
        except XmodalError as e:
            _fail(e.message)
    for problem in report.rejected:
        err.print(f"[yellow]skipped[/] {problem}", highlight=False)
    out.print(
        f"sent {report.sent} events to {settings.media_topic}, acknowledged {report.acknowledged}, "
        f"failed {report.failed}, skipped {len(report.rejected) - report.failed}",
        highlight=False,
    )
    if report.acknowledged:
        # What the acknowledgement promises: the broker has the events; indexing follows.
        where = (
            "in the embedded broker's memory (lost if `xmodal up` stops before they are indexed)"
            if _embedded_broker(settings)
            else "stored by the broker"
        )
        out.print(f"acknowledged = {where}; not yet indexed: search finds them once the worker has indexed them")
    if report.failed or (report.rejected and not report.sent):
        raise typer.Exit(1)


def _parse_filter(pairs: list[str]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            _fail(f"--filter takes KEY=VALUE, got {pair!r}", 2)
        try:
            value = orjson.loads(raw)  # numbers, booleans and null as JSON; anything else is a string
            if isinstance(value, (dict, list)):
                value = raw
        except orjson.JSONDecodeError:
            value = raw
        result[key] = value
    return result


@app.command()
def search(
    text: Annotated[str | None, typer.Argument(help="Text query.")] = None,
    image: Annotated[Path | None, typer.Option("--image", help="Image file to search with.")] = None,
    audio: Annotated[Path | None, typer.Option("--audio", help="Audio file to search with.")] = None,
    k: Annotated[int, typer.Option("-k", help="Number of results (1-1000).")] = 10,
    modality: Annotated[str | None, typer.Option("--modality", help="Result modalities, e.g. image,audio.")] = None,
    filters: Annotated[list[str], typer.Option("--filter", help="Metadata equality KEY=VALUE (repeatable).")] = [],  # noqa: B006
    as_json: Annotated[bool, typer.Option("--json", help="Print the reply as JSON.")] = False,
    timeout: Annotated[float | None, typer.Option(help="Seconds to wait for the reply.")] = None,
    rerank: Annotated[
        bool | None, typer.Option("--rerank/--no-rerank", help="Rescore with the cross-encoder, or first stage only (default: the service's XMODAL_RERANK).")
    ] = None,
    data_dir: DataDir = None,
    kafka_bootstrap: Bootstrap = None,
) -> None:
    """Search over Kafka: a text query finds images and sounds, an image finds captions, a sound finds images."""
    from xmodal.query_api.client import SearchClient

    given = [q for q in (text, image, audio) if q is not None]
    if len(given) != 1:
        _fail("give exactly one query: TEXT, --image FILE or --audio FILE", 2)
    settings = _settings(data_dir=data_dir, kafka_bootstrap=kafka_bootstrap)
    bootstrap = _bootstrap_or_fail(settings)
    query: dict[str, Any] = {}
    try:
        if text is not None:
            query["text"] = text
        elif image is not None:
            query["image"] = image.read_bytes()
        elif audio is not None:
            query["audio"] = audio.read_bytes()
    except OSError as e:
        _fail(f"cannot read the query file: {e}", 2)
    modalities = [m.strip() for m in modality.split(",") if m.strip()] if modality else None
    try:
        with SearchClient(settings, bootstrap) as client:
            hits = client.search(
                **query, k=k, modalities=modalities, filter=_parse_filter(filters), timeout=timeout, rerank=rerank
            )
    except XmodalError as e:  # refused before sending (SchemaError) or by the service (SearchError)
        _fail(f"{e.code}: {e.message}")
    if as_json:
        # as before reranking existed: hits that were not reranked have no first_stage_score key
        dumped = [h.model_dump(mode="json", exclude={"first_stage_score"} if h.first_stage_score is None else None) for h in hits]
        sys.stdout.buffer.write(orjson.dumps(dumped, option=orjson.OPT_INDENT_2))
        sys.stdout.write("\n")
        return
    table = Table(title=f"{len(hits)} results", title_justify="left")
    # score: calibrated, comparable across modalities; cosine: raw, within its space and modality
    reranked = any(hit.first_stage_score is not None for hit in hits)  # "1st stage": the score before reranking
    columns = ("rank", "score", *(("1st stage",) if reranked else ()), "cosine", "modality")
    for column in columns:
        table.add_column(column, justify="left" if column == "modality" else "right")
    table.add_column("id", overflow="fold")  # ids are what a user acts on: wrap, never elide
    table.add_column("metadata", overflow="fold")
    for rank, hit in enumerate(hits, 1):
        meta = orjson.dumps(hit.metadata).decode() if hit.metadata else ""
        cosine = f"{hit.cosine:.3f}" if hit.cosine is not None else ""
        first = [f"{hit.first_stage_score:.2f}" if hit.first_stage_score is not None else ""] if reranked else []
        table.add_row(str(rank), f"{hit.score:.2f}", *first, cosine, hit.modality, hit.id, meta)
    out.print(table)


@app.command("eval")
def eval_(
    queries: Annotated[Path, typer.Option("--queries", help="QUERIES.jsonl: {query_id, query, modalities?, filter?} per line.")],
    qrels: Annotated[Path, typer.Option("--qrels", help="TREC qrels `query_id 0 item_id relevance`, or JSON {query_id: {item_id: rel}}.")],
    k: Annotated[str, typer.Option("--k", help="Cutoffs of Success@k, P@k, R@k, e.g. 1,5,10.")] = "1,5,10",
    fail_under: Annotated[
        list[str], typer.Option("--fail-under", help="[DIRECTION:]MEASURE=VALUE, e.g. Success@5=0.9; exit 1 when below (repeatable).")
    ] = [],  # noqa: B006
    run_out: Annotated[Path | None, typer.Option("--run-out", help="Also write the results as a TREC run file.")] = None,
    items: Annotated[
        Path | None, typer.Option("--items", help="JSONL with id and modality per item (e.g. the MediaEvents you ingested): modalities of relevant items no search returned.")
    ] = None,
    concurrency: Annotated[int, typer.Option(help="Searches in flight at once.", min=1)] = 16,
    rerank: Annotated[
        bool | None, typer.Option("--rerank/--no-rerank", help="Rerank with the cross-encoder, or first stage only (default: the service's XMODAL_RERANK).")
    ] = None,
    rerank_k: Annotated[int | None, typer.Option("--rerank-k", help="First-stage candidates the cross-encoder scores (default XMODAL_RERANK_K).", min=1, max=1000)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as one JSON object.")] = False,
    timeout: Annotated[float | None, typer.Option(help="Seconds to wait for each reply (default XMODAL_SEARCH_TIMEOUT_S).")] = None,
    data_dir: DataDir = None,
    kafka_bootstrap: Bootstrap = None,
) -> None:
    """Measure retrieval quality of your data through the live query path (docs/eval.md).

    Exit status: 0 ok, 1 a --fail-under measure is below its value, 2 bad input or no broker,
    3 some searches failed (they count as finding nothing).
    """
    import time

    from tqdm import tqdm

    from xmodal import evaluation as ev
    from xmodal.query_api.client import SearchClient

    settings = _settings(data_dir=data_dir, kafka_bootstrap=kafka_bootstrap)
    try:
        ks = ev.parse_ks(k)
        thresholds = [ev.parse_threshold(spec, ks) for spec in fail_under]
        query_set = ev.load_queries(queries)
        judgments = ev.load_qrels(qrels)
        item_modalities = ev.load_item_modalities(items) if items is not None else None
    except ev.EvalInputError as e:
        _fail(e.message, 2)
    bootstrap = _bootstrap_or_fail(settings)
    depth = ev.search_depth(ks)
    wait_s = timeout if timeout is not None else settings.search_timeout_s
    try:
        with SearchClient(settings, bootstrap) as client, tqdm(
            desc="searched", total=len(query_set), unit="q", file=sys.stderr, disable=None
        ) as bar:

            def submit(query: ev.EvalQuery) -> Any:
                deadline_ms = int((time.time() + wait_s) * 1000)
                request = query.to_request(
                    k=depth, reply_to=client.reply_topic, deadline_ms=deadline_ms, rerank=rerank, rerank_k=rerank_k
                )
                return client.send(request, timeout=wait_s)

            results, failures = ev.run_queries(query_set, submit, concurrency=concurrency, on_done=lambda _q: bar.update(1))
    except XmodalError as e:
        _fail(e.message)
    report = ev.evaluate(
        query_set, judgments, results, ks=ks, item_modalities=item_modalities, failed=failures, rerank=rerank
    )
    if not report.queries:
        _fail(f"nothing to measure: no query of {queries} has a relevant judgment (relevance > 0) in {qrels}", 2)
    if run_out is not None:
        try:
            ev.write_run(run_out, query_set, results, depth)
        except ev.EvalInputError as e:
            _fail(e.message, 2)
    for query_id, why in list(failures.items())[:10]:
        err.print(f"[yellow]failed[/] {query_id}: {why}", highlight=False)
    notes = [
        (len(failures), "searches failed and count as finding nothing"),
        (len(report.without_relevant), "queries have no relevant judgment and are not measured"),
        (len(report.qrels_without_query), f"judged query ids are not in {queries}"),
        (report.unknown_modality_items, "relevant items were never returned, so their modality is unknown (give --items)"),
        (len(results) - report.reranked_queries if rerank else 0, "replies came back not reranked (no reranker for their lists)"),
    ]
    for count, what in notes:
        if count:
            err.print(f"[yellow]note:[/] {count} {what}", highlight=False)
    problems = ev.check_thresholds(report, thresholds)
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2) + b"\n")
    else:
        out.print(_eval_table(report))
    for problem in problems:
        err.print(f"[bold red]below threshold:[/] {problem}", highlight=False)
    if failures:
        raise typer.Exit(3)
    if problems:
        raise typer.Exit(1)


def _eval_table(report: Any) -> Table:
    from xmodal.evaluation import measure_names

    names = measure_names(report.ks)
    table = Table(
        title=f"{report.queries} judged queries, searched to depth {report.depth} through the live query path"
        + {True: ", reranked", False: ", first stage only", None: ""}[report.rerank],
        title_justify="left",
        caption="Success@k: a relevant item in the top k (what vision-language papers call R@k) · P@k: precision · "
        "R@k: TREC recall, the share of the relevant items in the top k · nDCG@10 · RR: reciprocal rank of the "
        f"first relevant item within the top {report.depth}",
        caption_justify="left",
    )
    table.add_column("direction")
    table.add_column("queries", justify="right")
    for name in names:
        label = f"{name}\n(papers' R@{name.split('@')[1]})" if name.startswith("Success@") else name
        table.add_column(label, justify="right")
    rows = [("all", report.queries, report.metrics)]
    rows += [(d, report.queries_by_direction[d], m) for d, m in report.by_direction.items()]
    for modality, figures in report.by_query_modality.items():  # only where it adds a row of its own
        if sum(d.startswith(f"{modality}->") for d in report.by_direction) > 1:
            rows.append((f"{modality}->any", report.queries_by_query_modality[modality], figures))
    for label, count, figures in rows:
        table.add_row(label, str(count), *(f"{figures[name]:.3f}" for name in names))
    return table


@app.command()
def status(
    url: Annotated[str | None, typer.Option("--url", help="Metrics URL (default: http://127.0.0.1:$XMODAL_METRICS_PORT/metrics).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as one JSON object.")] = False,
) -> None:
    """Live figures of the running system from its /metrics: index recall, canaries, freshness, traffic (docs/quality.md)."""
    from xmodal.query_api.status import StatusUnavailable, fetch_metrics, read_status, status_tables

    settings = _settings()
    if url is None:
        if not settings.metrics_port:
            _fail("XMODAL_METRICS_PORT=0: metrics are off here; give --url of a running xmodal process", 2)
        url = f"http://127.0.0.1:{settings.metrics_port}/metrics"
    try:
        figures = read_status(fetch_metrics(url))
    except StatusUnavailable as e:
        _fail(f"{e.message}: is `xmodal up` (or a worker / query service) running with this XMODAL_METRICS_PORT?", 1)
    if as_json:
        sys.stdout.buffer.write(orjson.dumps({"url": url, **figures.to_dict()}, option=orjson.OPT_INDENT_2) + b"\n")
        return
    out.print(f"xmodal status from {url}", highlight=False)
    for table in status_tables(figures, alert_recall=settings.quality_alert_recall):
        out.print(table)


@app.command()
def demo(
    images: Annotated[int, typer.Option(help="Images per half of the gallery (held-out + seen combinations).")] = 500,
    sounds: Annotated[int, typer.Option(help="Sounds per half of the gallery.")] = 150,
    queries: Annotated[int, typer.Option(help="Queries per direction.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Generate shapes and sounds, ingest them through Kafka, search every direction, print Success@k.

    Each query runs twice: unfiltered (one mixed gallery, default modalities: what users get) and
    filtered to one result modality (what the towers can do with the modality gap kept out)."""
    from tqdm import tqdm

    from xmodal.demo import SHOWN, figure_rows, format_examples, run_demo, search_count

    settings = _settings(data_dir=data_dir, spaces="mini")
    total = 4 * images + 4 * sounds  # every image and sound, plus a caption of each
    bars = {
        name: tqdm(desc=name, total=n, unit="ev", file=sys.stderr, disable=None, leave=True)
        for name, n in (("sent", total), ("indexed", total), ("searched", search_count(images, sounds, queries)))
    }
    try:
        result = run_demo(
            settings, images=images, sounds=sounds, queries=queries, progress=lambda what, n: bars[what].update(n)
        )
    except XmodalError as e:
        _fail(e.message)
    finally:
        for bar in bars.values():
            bar.close()
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2) + b"\n")
        return
    for direction, query, rows in format_examples(result):
        table = Table(title=f"{direction}: {query}", title_justify="left")
        for column in ("rank", "score", "modality", "id", "same attributes"):
            table.add_column(column)
        for row in rows:
            table.add_row(*row)
        out.print(table)
    figures = Table(
        title="Success@k through the live pipeline (Kafka → index → Kafka); Success@k is papers' R@k",
        title_justify="left",
        caption="unfiltered: one mixed gallery, default modalities, no filter · filtered: one result modality "
        "(audio->text: captions of sounds) · a right item has the query's attributes",
        caption_justify="left",
    )
    figures.add_column("direction")
    figures.add_column("queries", justify="right")
    for label in ("filtered", "unfiltered"):
        for name in SHOWN:
            figures.add_column(f"{label}\n{name}", justify="right")
    for direction, count, filtered, unfiltered in figure_rows(result):
        figures.add_row(direction, count, *filtered, *unfiltered)
    out.print(figures)
    out.print(
        f"{sum(result.items.values())} items ingested and indexed in {result.ingest_seconds:.1f} s; "
        f"search p50 {result.search_ms_p50:.1f} ms inside the service; page: {result.html}",
        highlight=False,
    )


@app.command()
def verify(
    space: Annotated[str, typer.Argument(help="The space to check, e.g. mini.")],
    generation: Annotated[int | None, typer.Option(help="Check this generation instead of the serving one.")] = None,
    group: Annotated[str | None, typer.Option(help="Consumer group whose committed offsets bound what is settled (default: the ingest group).")] = None,
    sample: Annotated[int, typer.Option(help="Ids shown per kind of difference.", min=0)] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    data_dir: DataDir = None,
    kafka_bootstrap: Bootstrap = None,
    qdrant_url: QdrantUrl = None,
) -> None:
    """Compare the media topic (latest event per id) with the index: missing, extra, stale points.

    Exit status: 0 clean, 1 differences, 2 error (docs/operations.md#verify)."""
    from xmodal.streams.verify import report_lines, verify_space

    settings = _settings(data_dir=data_dir, kafka_bootstrap=kafka_bootstrap, qdrant_url=qdrant_url)
    bootstrap = _bootstrap_or_fail(settings)
    try:
        with err.status(f"reading the index and the log of {space}…"):
            report = verify_space(settings, bootstrap, space, generation=generation, group=group, sample=sample)
    except XmodalError as e:
        _fail(e.message, 2)
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2) + b"\n")
    else:
        for line in report_lines(report):
            out.print(line, highlight=False)
    if not report.clean:
        raise typer.Exit(1)


@app.command()
def reindex(
    space: Annotated[str, typer.Argument(help="The space to rebuild from the media topic, e.g. mini.")],
    drop_old: Annotated[bool, typer.Option("--drop-old", help="Drop the old generation after the switch (no rollback).")] = False,
    restart: Annotated[bool, typer.Option("--restart", help="Start over instead of resuming an unfinished reindex.")] = False,
    job: Annotated[
        str | None,
        typer.Option("--job", help="Qdrant server: the job ID every worker of one reindex shares (they split the partitions)."),
    ] = None,
    list_: Annotated[bool, typer.Option("--list", help="List the space's generations and exit.")] = False,
    drop: Annotated[int | None, typer.Option("--drop", help="Drop generation GEN (not the serving one) and exit.")] = None,
    rollback: Annotated[bool, typer.Option("--rollback", help="Serve the previous generation again and exit.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    data_dir: DataDir = None,
    kafka_bootstrap: Bootstrap = None,
    qdrant_url: QdrantUrl = None,
) -> None:
    """Rebuild a space into a new index generation by replaying the media topic (this process's model,
    weights) while it serves, then switch to it (docs/operations.md#re-indexing).

    On a Qdrant server start N workers with the same --job ID: they split the media topic's
    partitions, one switches the alias, the others exit 0 once it has.

    Exit status: 0 switched (or listed/dropped/rolled back), 1 failed (the serving generation is untouched;
    a rerun resumes), 2 refused (settings, no broker, another reindex of the space running)."""
    from xmodal.errors import ConfigError as Refused
    from xmodal.streams import reindex as rx

    settings = _settings(data_dir=data_dir, kafka_bootstrap=kafka_bootstrap, qdrant_url=qdrant_url)
    try:
        if list_:
            rows = rx.list_generations(settings, space)
            if as_json:
                sys.stdout.buffer.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2) + b"\n")
            for row in [] if as_json else rows:
                mark = "*" if row["serving"] else " "
                out.print(f"{mark} g{row['generation']:06d} {row['state']:8} {row['origin']:8} {row['model']}", highlight=False)
            return
        if drop is not None:
            rx.drop_generation(settings, space, drop)
            out.print(f"space {space}: generation {drop} dropped")
            return
        bootstrap = _bootstrap_or_fail(settings)
        if rollback:
            number = rx.rollback(settings, bootstrap, space)
            out.print(f"space {space}: generation {number} serves again; live workers replay what it missed")
            return
        result = _run_reindex(settings, bootstrap, space, restart=restart, drop_old=drop_old, job=job)
    except Refused as e:
        _fail(e.message, 2)
    except XmodalError as e:
        _fail(f"{e.message} (the serving generation is untouched; run it again to resume)")
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(result.__dict__, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n")
        return
    kept = (
        f"generation {result.previous} dropped"
        if result.dropped is not None
        else f"generation {result.previous} kept for rollback (--rollback; --drop {result.previous} to remove it)"
    )
    out.print(
        f"space {space}: generation {result.generation} serves now ({'resumed, ' if result.resumed else ''}"
        f"{result.events} events replayed in {result.seconds:.1f} s: {result.indexed} indexed, {result.deleted} deleted, "
        f"{result.dead} failed{', HNSW built' if result.optimized else ''}); {kept}",
        highlight=False,
    )


def _run_reindex(settings: Settings, bootstrap: str, space: str, **options: Any) -> Any:
    from tqdm import tqdm

    from xmodal.streams.reindex import Reindexer

    with tqdm(desc=f"reindex {space}", unit="ev", file=sys.stderr, disable=None) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        return Reindexer(settings, bootstrap, space, progress=progress, **options).run()


@app.command()
def optimize(data_dir: DataDir = None, spaces: Spaces = None) -> None:
    """Build the HNSW index of the embedded index (run while xmodal up / worker is stopped).

    qdrant-edge never builds HNSW by itself: searches are exact scans until a build. `xmodal up`
    builds in the background once XMODAL_OPTIMIZE_AFTER_POINTS points are unindexed; this builds
    now, in-process, on a stopped system. A Qdrant server builds its indexes itself.
    """
    import time

    from xmodal.indexer.edge import EdgeIndex
    from xmodal.indexer.settings import IndexSettings
    from xmodal.runtime import IndexLock

    settings = _settings(data_dir=data_dir, spaces=spaces)
    if not settings.embedded_index:
        _fail("XMODAL_QDRANT_URL is set: a Qdrant server builds its HNSW indexes itself", 2)
    lock = IndexLock(settings.data_dir / "index.lock")
    try:
        lock.acquire()
    except ConfigError as e:
        _fail(e.message, 2)
    index = EdgeIndex(settings.data_dir / "index", index_settings=IndexSettings.from_settings(settings))
    try:
        for space in settings.spaces:
            if not (settings.data_dir / "index" / space).is_dir():
                out.print(f"{space}: no collection yet")
                continue
            start = time.perf_counter()
            with out.status(f"{space}: building HNSW over {index.count(space)} points…"):
                changed = index.optimize(space)
            out.print(f"{space}: {'optimized' if changed else 'already optimal'} in {time.perf_counter() - start:.1f} s")
    except XmodalError as e:
        _fail(e.message)
    finally:
        index.close()
        lock.release()


def main() -> None:
    try:
        app()
    except XmodalError as e:  # anything a command did not turn into a message itself
        err.print(f"[bold red]error:[/] {e.message}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
