"""The `colray` command: ingest, reindex, query, submit/status/logs (Ray jobs), demo, models.

Exit codes: 0 success, 1 the run failed, 2 bad configuration (nothing was written),
3 the run finished but more rows were dead-lettered than run.max_failed_fraction allows.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from colray.config import API_KEY_ENV, ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from colray.report import RunReport

EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_TOO_MANY_FAILED = 3  # the run finished; more rows failed than allowed

CONFIG_HELP = f"""\
configuration:
  A job is one YAML file with sections source, embed (text model), image (page-image
  model), sink and run. Any key can be overridden by an environment variable
  COLRAY_<SECTION>__<KEY> (e.g. COLRAY_SINK__PATH) and by --set section.key=value,
  which wins over both. The Qdrant API key is read only
  from {API_KEY_ENV} or sink.api_key_file, never from the YAML or the command line.

exit codes:
  0 success; 1 the run failed; 2 bad configuration or incompatible store (nothing written);
  3 finished, but more rows dead-lettered than run.max_failed_fraction (see the report)
"""

INGEST_EXAMPLE = """\
example:
  # configs/stdlib-minilm-edge.yaml
  source:
    path: data/docs/          # a Parquet file, a directory, a glob or a URI
    format: parquet           # or hf: a save_to_disk dir, a parquet export, a Hub id
    text_column: text
    id_column: doc_id         # optional; stable point ids across re-runs
    payload_columns: [title]
  embed:
    model: minilm-token       # see `colray models`
  sink:
    kind: edge                # embedded Qdrant Edge; or qdrant (url: or path:)
    path: .colray/store

  colray ingest --config job.yaml --set embed.batch_size=64 --report report.json
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_CONFIG
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        print(f"colray: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print("colray: interrupted", file=sys.stderr)
        return 130


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="colray",
        formatter_class=FORMATTER,
        description=textwrap.dedent(
            """\
            Turn Parquet files and Hugging Face datasets into late-interaction search
            indexes: one vector per token (ColBERT-style), embedded on Ray actors and
            streamed into Qdrant (embedded Qdrant Edge or a Qdrant server).

            Start with `colray demo`, then write a job config (see `colray ingest --help`).
            """
        ),
        epilog=CONFIG_HELP,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_ingest, _add_reindex, _add_submit, _add_status, _add_logs, _add_query,
                _add_demo, _add_models):  # fmt: skip
        add(sub)
    return parser


FORMATTER = argparse.RawDescriptionHelpFormatter
Subparsers = Any  # argparse's _SubParsersAction, private in typeshed


def _add_ingest(sub: Subparsers) -> None:
    ingest = sub.add_parser(
        "ingest",
        help="embed a dataset and load it into Qdrant",
        formatter_class=FORMATTER,
        description=_wrap(
            "Read the source in shards, embed every row on Ray actors, upsert the "
            "multivectors with indexing off, then switch indexing on and wait until the "
            "collection is ready. Re-running the same job overwrites the same points."
        ),
        epilog=INGEST_EXAMPLE + "\n" + CONFIG_HELP,
    )
    _add_config_args(ingest)
    _add_run_args(ingest)
    ingest.set_defaults(handler=_cmd_ingest)


def _add_reindex(sub: Subparsers) -> None:
    reindex = sub.add_parser(
        "reindex",
        help="rebuild a collection with zero downtime (alias / pointer switch)",
        formatter_class=FORMATTER,
        description=_wrap(
            "Load the job into a new version of the store (collection "
            "<sink.collection>__v<time>, or Edge directory <sink.path>.versions/v<time>), wait "
            "until it is ready, then move the alias sink.collection (Edge: the symlink at "
            "sink.path) to it in one atomic step and drop versions beyond sink.keep_versions. "
            "Queries use the alias or path and always see a complete store. A failed rebuild is "
            "never served.\n\nWith --incremental the live version is updated in place instead: "
            "rows whose content hash is unchanged are skipped, changed rows re-embedded, and "
            "points whose rows left the source deleted."
        ),
        epilog="example:\n  colray reindex --config configs/stdlib-minilm-edge.yaml\n"
        "  colray reindex --config job.yaml --incremental   # nightly: only what changed\n\n"
        + CONFIG_HELP,
    )
    _add_config_args(reindex)
    _add_run_args(reindex)
    reindex.set_defaults(handler=_cmd_reindex)


def _add_submit(sub: Subparsers) -> None:
    submit = sub.add_parser(
        "submit",
        help="run ingest or reindex as a Ray job on a cluster",
        formatter_class=FORMATTER,
        description=_wrap(
            "Validate the config here, then submit jobs/ingest.py (or jobs/reindex.py) "
            "as a Ray job: the project directory becomes the job's working_dir and this colray "
            "its py_module; the embedding actors ask for the GPUs the config names. COLRAY_* "
            f"settings of this shell go along, except {API_KEY_ENV}: the cluster reads the key "
            "from its own environment (see infra/). Prints the submission id.\n\n"
            "Schedules: --schedule-slot names the run of one schedule period, so the submission "
            "id is the same each time that period fires and Ray refuses a second run."
        ),
        epilog="examples:\n"
        "  colray submit --address http://head:8265 --config configs/colbert-qdrant-server.yaml\n"
        "  colray submit -c job.yaml --reindex --incremental --follow\n"
        "  # cron, hourly; a double fire in the same hour prints 'already submitted', exit 0\n"
        "  colray submit -c job.yaml --reindex --schedule-slot auto --every 60\n\n"
        "exit codes: 0 submitted (with --follow: the job succeeded); with --follow the job's "
        "own code (1 failed, 2 bad config, 3 too many dead letters)",
    )
    _add_address_arg(submit)
    _add_config_args(submit)
    submit.add_argument(
        "--reindex", action="store_true", help="run `colray reindex` instead of `ingest`"
    )
    submit.add_argument(
        "--incremental", action="store_true", help="skip unchanged rows, delete vanished ones"
    )
    submit.add_argument(
        "--working-dir",
        metavar="DIR",
        help="the project directory to ship (default: the one holding jobs/ at or above the "
        "current directory); the config must be inside it",
    )
    submit.add_argument("--submission-id", metavar="ID", help="a submission id of your own")
    submit.add_argument(
        "--schedule-slot",
        metavar="SLOT",
        help="the schedule period this run belongs to (e.g. 2026-11-24), or 'auto': the "
        "current period of --every minutes; the submission id follows from it",
    )
    submit.add_argument(
        "--every",
        type=int,
        metavar="MINUTES",
        help="the schedule's period, for --schedule-slot auto",
    )
    submit.add_argument(
        "--follow", action="store_true", help="stream the job's logs and exit with its outcome"
    )
    submit.set_defaults(handler=_cmd_submit)


def _add_status(sub: Subparsers) -> None:
    status = sub.add_parser(
        "status",
        help="a Ray job's status and, once it ended, its run report",
        description="Ask the cluster how a submitted job stands; when it has ended, show "
        "the run report it printed (counts, dead letters, versions).",
    )
    _add_address_arg(status)
    status.add_argument("submission_id", metavar="ID")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=_cmd_status)


def _add_logs(sub: Subparsers) -> None:
    logs = sub.add_parser("logs", help="a Ray job's logs", description="Print a job's logs.")
    _add_address_arg(logs)
    logs.add_argument("submission_id", metavar="ID")
    logs.add_argument("--follow", action="store_true", help="stream until the job ends")
    logs.set_defaults(handler=_cmd_logs)


def _add_query(sub: Subparsers) -> None:
    query = sub.add_parser(
        "query",
        help="search a collection with a text query",
        formatter_class=FORMATTER,
        description="Embed TEXT with the job's model and return the best matches by MaxSim.\n"
        "Page vectors are searched with the image model's query processor; with the\n"
        "scale-ready layout (image.pooled) candidates come from the row/column-pooled\n"
        "vectors and are reranked on the original page vectors.",
        epilog='example:\n  colray query --config job.yaml --limit 5 "read zip archives"\n'
        "  colray query --config job.yaml --json \"parse arguments\" | jq '.[0].payload'\n"
        '  colray query --config pages.yaml --vector page "revenue by quarter"',
    )
    _add_config_args(query)
    query.add_argument("--limit", type=int, default=5, metavar="K", help="results (default 5)")
    query.add_argument(
        "--json", action="store_true", help="print a JSON list of {id, score, payload}"
    )
    query.add_argument(
        "--vector",
        metavar="NAME",
        help="which named vector to search in a text+image job (default: the text vector "
        "when the job has text, else the page vector)",
    )
    query.add_argument("text", metavar="TEXT", help="the query")
    query.set_defaults(handler=_cmd_query)


def _add_demo(sub: Subparsers) -> None:
    demo = sub.add_parser(
        "demo",
        help="ingest the shipped demo corpus and run example searches",
        formatter_class=FORMATTER,
        description="Embeds the module docstrings of Python's standard library (shipped with "
        "colray) into an embedded Qdrant Edge store and prints the top hits for a few "
        "queries. Needs no network, server or GPU.",
    )
    demo.add_argument(
        "--dir", default=".colray/demo", help="where the demo keeps its store and runs"
    )
    demo.add_argument("--limit", type=int, default=3, help="hits shown per query")
    demo.add_argument("queries", nargs="*", metavar="QUERY", help="your own queries")
    demo.set_defaults(handler=_cmd_demo)


def _add_models(sub: Subparsers) -> None:
    models = sub.add_parser(
        "models",
        help="list the models and page-model families colray knows",
        description="Text models registered by name (kind, vector size, where the weights "
        "come from), and the ColPali-family page models colray loads through colpali-engine "
        "(what image.model must point at). embed.model also accepts a local model directory "
        "or a Hub id.",
    )
    models.add_argument("--json", action="store_true", help="print JSON")
    models.set_defaults(handler=_cmd_models)


def _wrap(text: str) -> str:
    """Paragraphs filled to the terminal's usual width (the raw formatter keeps newlines)."""
    return "\n\n".join(textwrap.fill(p, 88) for p in text.split("\n\n"))


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", metavar="FILE", required=True, help="job YAML file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set sink.path=/data/store (repeatable)",
    )


def _add_run_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--report",
        metavar="PATH",
        help="where to write the JSON run report (default: <run.dir>/<run id>/report.json)",
    )
    parser.add_argument(
        "--incremental",
        action="store_true",
        help="skip rows stored with the same content hash, re-embed changed rows, delete "
        "points whose rows left the source; the report counts each",
    )
    # jobs/*.py: print the report on stdout as one marked line for `colray status`.
    parser.add_argument("--emit-report", action="store_true", help=argparse.SUPPRESS)


def _add_address_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        metavar="URL",
        help="the Ray dashboard, e.g. http://head:8265 (default: $RAY_ADDRESS)",
    )


def _cmd_ingest(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, args.overrides)
    return _ingest(settings, args.report, incremental=args.incremental, emit=args.emit_report)


def _cmd_reindex(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, args.overrides)
    return _ingest(
        settings, args.report, incremental=args.incremental, rebuild=True, emit=args.emit_report
    )


def _ingest(
    settings: Settings,
    report_path: str | None,
    *,
    incremental: bool = False,
    rebuild: bool = False,
    emit: bool = False,
) -> int:
    import colray

    run = colray.reindex if rebuild else colray.ingest
    try:
        report = run(settings, report_path=report_path, incremental=incremental)
    except colray.SinkError as exc:
        print(f"colray: sink: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except colray.LostRowsError as exc:
        print(f"colray: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except colray.TooManyFailuresError as exc:
        _emit_report(exc.report, emit)
        print(f"colray: {exc}\nreport: {exc.report.report_path}", file=sys.stderr)
        return EXIT_TOO_MANY_FAILED
    _emit_report(report, emit)
    _print_summary(report)
    return 0


def _emit_report(report: RunReport, emit: bool) -> None:
    """jobs/*.py: the report as one marked line in the job's logs, for `colray status`."""
    if emit:
        from colray.cluster import REPORT_MARKER

        print(REPORT_MARKER + json.dumps(asdict(report)), flush=True)


def _print_summary(report: RunReport) -> None:
    print(
        f"ingested {report.points_written} points from {report.rows_read} rows "
        f"({report.dead_lettered} dead-lettered, {report.skipped_existing} already done by an "
        f"interrupted run, {report.duplicate_ids} duplicate ids) in {report.duration_s:.1f}s; "
        f"store holds {report.points_in_store} points\nreport: {report.report_path}",
        file=sys.stderr,
    )
    if report.incremental:
        changes = ", ".join(f"{n} {what}" for what, n in report.incremental.items())
        print(f"incremental: {changes}", file=sys.stderr)
    if report.reindex:
        r = report.reindex
        moved = "updated in place" if r["mode"] == "incremental" else "now serves"
        dropped = f"; dropped {', '.join(r['dropped'])}" if r["dropped"] else ""
        print(f"{r['served_as']} {moved} version {r['version']}{dropped}", file=sys.stderr)
    if report.dead_lettered:
        print(f"dead letters: {report.dead_letter_path}", file=sys.stderr)


def _cmd_submit(args: argparse.Namespace) -> int:
    from colray import cluster

    slot = args.schedule_slot
    if slot == "auto":
        if not args.every or args.every < 1:
            raise ConfigError(["--every: --schedule-slot auto needs the period in minutes (>= 1)"])
        slot = cluster.schedule_slot(args.every)
    if slot and args.submission_id:
        raise ConfigError(["--submission-id: give it or --schedule-slot, not both"])
    submission = cluster.submit(
        address=args.address,
        config=args.config,
        overrides=args.overrides,
        command="reindex" if args.reindex else "ingest",
        incremental=args.incremental,
        working_dir=args.working_dir,
        submission_id=args.submission_id,
        slot=slot,
    )
    if submission.already_submitted:
        print(f"already submitted: {submission.submission_id} (not run again)", file=sys.stderr)
    else:
        print(f"submitted: {submission.entrypoint}", file=sys.stderr)
    print(submission.submission_id)
    if not args.follow:
        return 0
    state = cluster.follow(args.address, submission.submission_id)
    print(f"job {state.submission_id}: {state.status}", file=sys.stderr)
    return cluster.exit_code(state)


def _cmd_status(args: argparse.Namespace) -> int:
    from colray import cluster

    state = cluster.job_state(args.address, args.submission_id)
    if args.json:
        print(json.dumps(asdict(state), indent=2))
        return 0
    print(
        f"{state.submission_id}: {state.status}" + (f" ({state.message})" if state.message else "")
    )
    if state.report:
        print(json.dumps(state.report, indent=2))
    return 0


def _cmd_logs(args: argparse.Namespace) -> int:
    from colray import cluster

    if args.follow:
        cluster.job_state(args.address, args.submission_id)  # an unknown id: a clear error
        state = cluster.follow(args.address, args.submission_id)
        return cluster.exit_code(state)
    sys.stdout.write(cluster.job_logs(args.address, args.submission_id))
    return 0


def _cmd_query(args: argparse.Namespace) -> int:
    import colray

    hits = colray.search(args.config, args.text, limit=args.limit, vector=args.vector,
                         overrides=args.overrides)  # fmt: skip
    if args.json:
        print(json.dumps([{"id": h.id, "score": h.score, "payload": h.payload} for h in hits],
                         indent=2))  # fmt: skip
        return 0
    for rank, hit in enumerate(hits, 1):
        print(f"{rank:>2}. {hit.score:8.3f}  {_summary(hit.payload)}")
    return 0


def _summary(payload: dict[str, Any], width: int = 100) -> str:
    shown = {k: v for k, v in payload.items() if k != "_colray"}
    text = "  ".join(f"{k}={v}" for k, v in shown.items()) or json.dumps(payload.get("_colray"))
    return text if len(text) <= width else text[: width - 3] + "..."


def _cmd_demo(args: argparse.Namespace) -> int:
    from colray.demo import DEMO_QUERIES, demo_corpus_path

    base = Path(args.dir)
    settings = load_settings(
        None,
        base={
            "source": {
                "path": str(demo_corpus_path()),
                "text_column": "text",
                "id_column": "doc_id",
                "payload_columns": ["title"],
                "name": "colray-demo-stdlib-modules",
            },
            "embed": {"model": "minilm-token"},
            # A few hundred documents search faster by brute force than through HNSW
            # over every token vector, so the demo keeps indexing below its threshold.
            "sink": {"kind": "edge", "path": str(base / "store"), "indexing_threshold_kb": 200000},
            "run": {"dir": str(base / "runs")},
        },
    )
    code = _ingest(settings, None)
    if code:
        return code
    import colray

    for query in args.queries or DEMO_QUERIES:
        print(f"\nquery: {query}")
        for rank, hit in enumerate(colray.search(settings, query, limit=args.limit), 1):
            print(f"  {rank}. {hit.score:7.3f}  {hit.payload.get('title')}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from colray.embed import model_table

    rows = model_table()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<28}{'kind':<7}{'profile':<9}{'dims':>5}  source")
    for r in rows:
        profile = r["profile"] or "-"
        print(f"{r['name']:<28}{r['kind']:<7}{profile:<9}{r['dims']:>5}  {r['source']}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    sys.exit(main())
