"""The `colray` command: ingest, reindex, query, submit/status/logs (Ray jobs), demo, models.

Exit codes: 0 success, 1 the run failed, 2 bad configuration (nothing was written),
3 the run finished but more rows were dead-lettered than run.max_failed_fraction allows.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import textwrap
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from colray.config import API_KEY_ENV, ConfigError, load_settings
from colray.errors import RunFailed
from colray.sink import SinkError

if TYPE_CHECKING:
    from colray.report import RunReport

EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_TOO_MANY_FAILED = 3  # the run finished; more rows failed than allowed
LOCAL_RUN_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{6}")  # <run.dir>/<id>/, see report.Ledger

CONFIG_HELP = f"""\
configuration:
  A job is one YAML file with sections source, embed (text model), image (page-image
  model), sink and run. Any key can be overridden by an environment variable
  COLRAY_<SECTION>__<KEY> (e.g. COLRAY_SINK__PATH) and by --set section.key=value,
  which wins over both; relative paths are relative to the current directory. The Qdrant
  API key is read only from {API_KEY_ENV} or sink.api_key_file, never from the
  YAML or the command line. Ready-made jobs: configs/*.yaml.

exit codes:
  0 success; 1 the run failed (one line says why; the report says how far it got);
  2 bad configuration or an unusable store (nothing written); 3 finished, but more rows
  dead-lettered than run.max_failed_fraction (see the report); 130 interrupted
"""

INGEST_EXAMPLE = """\
example:
  # job.yaml, a job of your own (configs/ holds ready-made ones)
  source:
    path: data/docs/          # a Parquet file, a directory, a glob or a URI
    format: parquet           # or hf: a save_to_disk dir, a parquet export, a Hub id
    text_column: text
    id_column: doc_id         # optional; stable point ids across re-runs
    payload_columns: [title]
  embed:
    model: minilm-token       # see `colray models`
  sink:
    kind: edge                # embedded Qdrant Edge (the default); or qdrant (url: or path:)
    path: .colray/store       # the default store

  colray ingest --config job.yaml --set embed.batch_size=64 --report report.json
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # qdrant-client's version check warns on any refused first request; colray says why itself.
    warnings.filterwarnings("ignore", message="Failed to obtain server version")
    if args.verbose:
        os.environ["COLRAY_VERBOSE"] = "1"
    else:
        # Ray's C++ core logs routine notices as errors on the console; real failures reach
        # colray as exceptions either way. -v shows everything.
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_CONFIG
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        print(f"colray: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except SinkError as exc:  # the store cannot be used (missing, unreachable, incompatible)
        print(f"colray: sink: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt as exc:
        print("colray: interrupted" + _report_line(exc), file=sys.stderr)
        return 130
    except RunFailed as exc:
        print(f"colray: {exc}{_report_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # anything else still ends in one line, not a traceback
        if os.environ.get("COLRAY_DEBUG"):
            raise
        print(
            f"colray: unexpected {type(exc).__name__}: {_one_line(exc)} (set COLRAY_DEBUG=1 for "
            f"the traceback){_report_line(exc)}",
            file=sys.stderr,
        )
        return EXIT_FAILED


def _report_line(exc: BaseException) -> str:
    """Where the stopped run's report is, when it got far enough to write one."""
    report = getattr(exc, "colray_report", None)
    return f"\nreport: {report.report_path}" if report is not None else ""


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


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
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="also Ray's own logs and progress bars"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_ingest, _add_reindex, _add_submit, _add_status, _add_logs, _add_runs,
                _add_query, _add_demo, _add_models):  # fmt: skip
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
            "points whose rows left the source deleted.\n\nA store made by `colray ingest` is "
            "a plain store, not a version behind a name: --adopt rebuilds it as the first "
            "version, in this job's layout, and keeps the plain store as the previous version "
            "(Edge) or deletes it (Qdrant cannot rename a collection) just before the switch; "
            "its readers see a short gap, once."
        ),
        epilog="example:\n  colray reindex --config configs/stdlib-minilm-edge.yaml\n"
        "  colray reindex --config job.yaml --incremental   # nightly: only what changed\n"
        "  colray reindex --config job.yaml --adopt   # a store colray ingest made, migrated\n\n"
        + CONFIG_HELP,
    )
    _add_config_args(reindex)
    _add_run_args(reindex)
    reindex.add_argument(
        "--adopt",
        action="store_true",
        help="sink.path or sink.collection may be a plain store made by `colray ingest`: "
        "rebuild it as a version behind that name (how an old layout is migrated)",
    )
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
        help="a Ray job's progress and, once it ended, its run report; or the colray jobs",
        description="Ask the cluster how a submitted job stands: while it runs, its phase, rows "
        "written of the total, rows/s over the last minute, ETA and dead letters so far (what "
        "the job last printed); once it ended, its run report. Without ID: the cluster's colray "
        "jobs, newest first.",
    )
    _add_address_arg(status)
    status.add_argument("submission_id", metavar="ID", nargs="?",
                        help="a job's submission id; without it, the cluster's colray jobs")  # fmt: skip
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=_cmd_status)


def _add_logs(sub: Subparsers) -> None:
    logs = sub.add_parser("logs", help="a Ray job's logs", description="Print a job's logs.")
    _add_address_arg(logs)
    logs.add_argument("submission_id", metavar="ID")
    logs.add_argument("--follow", action="store_true", help="stream until the job ends")
    logs.set_defaults(handler=_cmd_logs)


def _add_runs(sub: Subparsers) -> None:
    runs = sub.add_parser(
        "runs",
        help="past runs under run.dir: list, show one, prune old ones",
        formatter_class=FORMATTER,
        description="Runs of this machine (local `colray ingest`/`reindex`), newest first, "
        "from their folders under run.dir (<run.dir>/<run id>/report.json). Cluster jobs: "
        "`colray status`.",
        epilog="examples:\n  colray runs                      # under .colray/runs\n"
        "  colray runs -c job.yaml          # under the job's run.dir\n"
        "  colray runs show 20261203T101500Z-1a2b3c\n"
        "  colray runs prune --keep 20      # keeps every unfinished job's resume state",
    )
    runs.add_argument("action", nargs="?", default="list", choices=["list", "show", "prune"])
    runs.add_argument("run_id", nargs="?", metavar="ID", help="the run to show (a prefix will do)")
    where = runs.add_mutually_exclusive_group()
    where.add_argument("--config", "-c", metavar="FILE", help="use this job's run.dir")
    where.add_argument("--dir", metavar="DIR", help="the run directory (default .colray/runs)")
    runs.add_argument("--keep", type=int, metavar="N", help="prune: the newest runs to keep")
    runs.add_argument("--json", action="store_true", help="print JSON")
    runs.set_defaults(handler=_cmd_runs)


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
        "queries. Needs no network, server or GPU. Once the store is complete, later demos "
        "answer from it at once.",
    )
    demo.add_argument(
        "--dir", default=".colray/demo", help="where the demo keeps its store and runs"
    )
    demo.add_argument("--limit", type=int, default=3, help="hits shown per query")
    demo.add_argument(
        "--rebuild", action="store_true", help="ingest again even if the store is complete"
    )
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
    return _ingest(
        args.config, args.overrides, args.report, incremental=args.incremental,
        emit=args.emit_report,
    )  # fmt: skip


def _cmd_reindex(args: argparse.Namespace) -> int:
    return _ingest(
        args.config, args.overrides, args.report, incremental=args.incremental, rebuild=True,
        emit=args.emit_report, adopt=args.adopt,
    )  # fmt: skip


def _ingest(
    config: Any,
    overrides: Sequence[str],
    report_path: str | None,
    *,
    incremental: bool = False,
    rebuild: bool = False,
    emit: bool = False,
    adopt: bool = False,
) -> int:
    """`config`: a YAML path (with `overrides`), or finished Settings (the demo's)."""
    import colray

    run = partial(colray.reindex, adopt=adopt) if rebuild else colray.ingest
    try:
        report = run(config, overrides, report_path=report_path, incremental=incremental,
                     on_progress=_emit_progress if emit else None)  # fmt: skip
    except colray.SinkError as exc:
        print(f"colray: sink: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except colray.TooManyFailuresError as exc:
        _emit_report(exc.report, emit)
        print(f"colray: {exc}\nreport: {exc.report.report_path}", file=sys.stderr)
        return EXIT_TOO_MANY_FAILED
    _emit_report(report, emit)
    _print_summary(report)
    return 0


def _emit_progress(progress: dict[str, Any]) -> None:
    """jobs/*.py: the run's progress as a marked line in the job's logs, for `colray status`."""
    from colray.cluster import PROGRESS_MARKER

    print(PROGRESS_MARKER + json.dumps(progress), flush=True)


def _emit_report(report: RunReport, emit: bool) -> None:
    """jobs/*.py: the report as one marked line in the job's logs, for `colray status`."""
    if emit:
        from colray.cluster import REPORT_MARKER

        print(REPORT_MARKER + json.dumps(asdict(report)), flush=True)


def _print_summary(report: RunReport) -> None:
    """The run in a few lines, on stdout (the result; diagnostics go to stderr)."""
    rows = f"{report.rows_read} rows"
    if report.documents_read is not None:
        rows = f"{report.documents_read} documents ({report.rows_read} pages)"
    print(
        f"ingested {report.points_written} points from {rows} "
        f"({report.dead_lettered} dead-lettered, {report.skipped_existing} already done by an "
        f"interrupted run, {report.duplicate_ids} duplicate ids) in {report.duration_s:.1f}s; "
        f"store holds {report.points_in_store} points\nreport: {report.report_path}"
    )
    if report.write_retries:
        print(f"write retries: {report.write_retries} (the sink's transient failures, retried)")
    ours = report.points_written - report.duplicate_ids + report.skipped_existing
    ours += report.incremental["unchanged"] if report.incremental else 0
    stale = report.points_in_store - ours - report.dead_lettered
    if stale > 0 and report.incremental is None:
        print(
            f"note: {stale} of the store's points are not from this run's rows (rows no longer "
            "in the source, or another source's): `--incremental` deletes those of vanished rows"
        )
    if report.incremental:
        changes = ", ".join(f"{n} {what}" for what, n in report.incremental.items())
        print(f"incremental: {changes}")
    if report.reindex:
        r = report.reindex
        moved = "updated in place" if r["mode"] == "incremental" else "now serves"
        dropped = f"; dropped {', '.join(r['dropped'])}" if r["dropped"] else ""
        print(f"{r['served_as']} {moved} version {r['version']}{dropped}")
        if r.get("adopted"):
            print(f"the plain store it replaced: {r['adopted']}")
    if report.dead_lettered:
        print(f"dead letters: {report.dead_letter_path}")


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

    if args.submission_id and LOCAL_RUN_ID.fullmatch(args.submission_id):
        raise ConfigError(
            [f"ID: {args.submission_id!r} is a local run's id, not a Ray job's: `colray runs "
             f"show {args.submission_id}` shows it"]
        )  # fmt: skip
    if args.submission_id is None:
        jobs = cluster.colray_jobs(args.address)
        if args.json:
            print(json.dumps(jobs, indent=2))
            return 0
        for job in jobs:
            print(f"{job['submission_id']:<48}{job['status']:<11}{job['command'] or '':<9}"
                  f"{job['config'] or ''}")  # fmt: skip
        return 0
    state = cluster.job_state(args.address, args.submission_id)
    if args.json:
        print(json.dumps(asdict(state), indent=2))
        return 0
    print(
        f"{state.submission_id}: {state.status}" + (f" ({state.message})" if state.message else "")
    )
    if state.progress and state.status not in cluster.TERMINAL:
        print(cluster.describe_progress(state.progress))
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


def _cmd_runs(args: argparse.Namespace) -> int:
    from colray import runs

    run_dir = load_settings(args.config).run.dir if args.config else (args.dir or ".colray/runs")
    if args.action == "show":
        if not args.run_id:
            raise ConfigError(["ID: `colray runs show` needs a run id (see `colray runs`)"])
        run = runs.find_run(run_dir, args.run_id)
        print(json.dumps(run.report, indent=2) if args.json else runs.describe(run))
        return 0
    if args.action == "prune":
        if args.keep is None:
            raise ConfigError(["--keep: `colray runs prune` needs --keep N"])
        removed = runs.prune(run_dir, args.keep)
        print(f"removed {len(removed)} run(s) under {run_dir}")
        return 0
    rows = [run.row() for run in runs.past_runs(run_dir)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no runs under {Path(run_dir).absolute()}", file=sys.stderr)
        return 0
    print(f"{'id':<24}{'started':<21}{'seconds':>9}{'rows':>9}{'written':>9}{'dead':>7}  "
          f"outcome / report")  # fmt: skip
    for r in rows:
        seconds = f"{r['duration_s']:.1f}" if r["duration_s"] is not None else "-"
        print(f"{r['id']:<24}{r['started']:<21}{seconds:>9}{_n(r['rows']):>9}"
              f"{_n(r['written']):>9}{_n(r['dead_lettered']):>7}  {r['outcome']}  "
              f"{r['report'] or ''}")  # fmt: skip
    return 0


def _n(value: Any) -> str:
    return "-" if value is None else str(value)


def _cmd_query(args: argparse.Namespace) -> int:
    import colray

    hits = colray.search(args.config, args.text, limit=args.limit, vector=args.vector,
                         overrides=args.overrides)  # fmt: skip
    if args.json:
        print(json.dumps([{"id": h.id, "score": h.score, "payload": h.payload} for h in hits],
                         indent=2))  # fmt: skip
        return 0
    if not hits:
        print("no results: the store holds no points this query could match", file=sys.stderr)
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
    from colray.demo import store_is_ready

    if args.rebuild or not store_is_ready(settings):
        code = _ingest(settings, (), None)
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
    name_w = max(len("name"), *(len(r["name"]) for r in rows)) + 2
    profile_w = max(len("profile"), *(len(r["profile"] or "-") for r in rows)) + 2
    print(f"{'name':<{name_w}}{'kind':<7}{'profile':<{profile_w}}{'dims':>5}  source")
    for r in rows:
        profile = r["profile"] or "-"
        print(
            f"{r['name']:<{name_w}}{r['kind']:<7}{profile:<{profile_w}}{r['dims']:>5}  {r['source']}"
        )
    return 0


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    sys.exit(main())
