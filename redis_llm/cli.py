"""The ``redis-llm`` command-line tool."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from redis_llm import module_path
from redis_llm.client_errors import error_text
from redis_llm.ingest import (
    IngestError,
    check_dependencies,
    chunk_text,
    find_files,
    item_id,
    read_items,
    source_prefix,
)

DEFAULT_URL = "redis://localhost:6379"
EXPORT_FIELDS = ("id", "question", "answer", "reviewed_answer", "reviewed_score", "reviewed_notes",
                 "reviewer", "model", "latency_ms", "state", "created_at", "tags", "session",
                 "also", "never")
EXPORT_PAGE = 1000
# The confidence bands of a review score, as the server defines them.
BANDS = ((0, 64, "not confident"), (65, 79, "somewhat confident"), (80, 94, "confident"),
         (95, 100, "a known fact"))
BANDS_TEXT = ", ".join(f"{low}-{high} {name}" for low, high, name in BANDS)
MATCH_PREVIEW = 300  # characters of each match's content shown by review


class CLIError(Exception):
    """An error to print (``redis-llm: ...``) before exiting with status 1."""


# ---- the parser ---------------------------------------------------------------

def _at_least(low: int):
    """An argparse type: an integer of at least ``low``."""
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}: {text!r}")
        return value
    return convert


def build_parser() -> argparse.ArgumentParser:
    url_help = f"the Redis server (default: $REDIS_URL, else {DEFAULT_URL})"
    parser = argparse.ArgumentParser(prog="redis-llm", description=__doc__)
    parser.add_argument("--url", help=url_help)
    # --url is also accepted after the subcommand (SUPPRESS: it does not
    # overwrite a --url given before it).
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--url", default=argparse.SUPPRESS, help=url_help)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("module-path", help="print the path of the Redis module to load")

    ingest = commands.add_parser(
        "ingest", parents=[connection],
        help="add documents (.txt .md .csv .tsv .pdf .parquet, directories) to a vector store",
        description="Read files (directories are walked recursively), cut them into items and "
                    "add them to a vector store, whose LLM embeds them. Ingesting a file again "
                    "replaces its items. The source of an item is its file's absolute path. "
                    "The number of items of each file is kept in the hash STORE:ingested (in "
                    "Redis Cluster give STORE a hash tag, such as {docs}, so that both share "
                    "a slot).")
    ingest.add_argument("store", metavar="STORE", help="the vector store key (it must have an LLM)")
    ingest.add_argument("paths", nargs="+", metavar="PATH", help="files and directories")
    ingest.add_argument("--chunk-size", type=_at_least(1), default=1000,
                        help="the most characters in an item (default 1000)")
    ingest.add_argument("--overlap", type=_at_least(0), default=200,
                        help="characters shared by consecutive chunks (default 200)")
    ingest.add_argument("--csv-mode", choices=("row", "chunk"), default="row",
                        help="CSV/TSV/Parquet: an item per row (default), or the rows chunked as text")
    ingest.add_argument("--batch", type=_at_least(1), default=64,
                        help="items sent per round trip (default 64)")
    ingest.add_argument("--no-progress", action="store_true", help="show no progress bar")

    export = commands.add_parser(
        "export", parents=[connection], help="export the recorded results of an app",
        description="Write the records of an app, newest first: JSON lines or CSV.")
    export.add_argument("app", metavar="APP", help="the app key")
    export.add_argument("--reviewed", action="store_true", help="only reviewed records")
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl",
                        help="jsonl (default) or csv")
    export.add_argument("--output", metavar="FILE", help="write to FILE (default: standard output)")

    review = commands.add_parser(
        "review", parents=[connection], help="review the answers of an app",
        description="Review the unreviewed answers of an app one by one (interactive; with "
                    "--lists it also asks for the questions each answer also answers and must "
                    "never be served for), or review one record: --id ID --answer TEXT "
                    "--score S [--notes TEXT] [--also Q]... [--never Q]...")
    review.add_argument("app", metavar="APP", help="the app key")
    review.add_argument("--id", help="the record to review (non-interactive)")
    review.add_argument("--answer", help="the reviewed answer (with --id)")
    review.add_argument("--score", help="the score, 0-100 (with --id)")
    review.add_argument("--notes", help="notes (with --id)")
    review.add_argument("--also", action="append", metavar="Q",
                        help="a question the answer also answers, served as if asked; repeat for "
                             "more. Replaces the stored list; --also '' clears it (with --id)")
    review.add_argument("--never", action="append", metavar="Q",
                        help="a question the answer must never be served for; repeat for more. "
                             "Replaces the stored list; --never '' clears it (with --id)")
    review.add_argument("--lists", action="store_true",
                        help="interactive: also ask for the --also and --never questions")

    web = commands.add_parser(
        "web", parents=[connection], help="serve the review desk, a web application for experts",
        description="Serve the review desk: experts sign in with a Redis ACL user and password, "
                    "review answers, search results, read the dashboards and ask apps. Every "
                    "command runs as the signed-in user.")
    web.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1)")
    web.add_argument("--port", type=_at_least(0), default=8080, help="the port (default 8080; 0 picks one)")
    web.add_argument("--cluster", action="store_true", help="--url is a node of a Redis Cluster")
    web.add_argument("--session-minutes", type=_at_least(1), default=30,
                     help="sign-ins expire after this many idle minutes (default 30)")
    web.add_argument("--behind-proxy", action="store_true",
                     help="trust one reverse proxy's X-Forwarded-Proto/-For/-Host (it ends TLS)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "module-path":
        try:
            print(module_path())
        except FileNotFoundError as exc:
            print(f"redis-llm: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.command == "ingest" and args.overlap >= args.chunk_size:
        parser.error("--overlap must be smaller than --chunk-size")
    if args.command == "review":
        given = [name for name in ("answer", "score", "notes", "also", "never")
                 if getattr(args, name) is not None]
        if args.id is None and given:
            parser.error(f"--{given[0]} needs --id")
        if args.id is not None and (args.answer is None or args.score is None):
            parser.error("--id needs --answer and --score")
        if args.id is not None and args.lists:
            parser.error("--lists is for the interactive review; with --id give --also and --never")

    if args.command == "web" and args.port > 65535:
        parser.error("--port must be at most 65535")
    if args.command == "web":
        from redis_llm import web
        url = getattr(args, "url", None) or os.environ.get("REDIS_URL") or DEFAULT_URL
        try:
            web.serve(url, args.host, args.port, cluster=args.cluster,
                      session_minutes=args.session_minutes, behind_proxy=args.behind_proxy)
        except ValueError as exc:
            print(f"redis-llm: bad --url: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:
            print(f"redis-llm: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
            return 1
        return 0
    try:
        import redis
    except ImportError:
        print("redis-llm: this command needs the redis package: pip install redis", file=sys.stderr)
        return 1
    client = None
    try:
        url = getattr(args, "url", None) or os.environ.get("REDIS_URL") or DEFAULT_URL
        try:
            client = redis.Redis.from_url(url)
        except ValueError as exc:
            raise CLIError(f"bad --url: {exc}") from None
        if args.command == "ingest":
            summary = ingest(client, args.store, args.paths, chunk_size=args.chunk_size,
                             overlap=args.overlap, csv_mode=args.csv_mode, batch=args.batch,
                             progress=not args.no_progress)
            print(summary.line())
        elif args.command == "export":
            count = export(client, args.app, reviewed=args.reviewed, fmt=args.format,
                           output=args.output)
            print(f"exported {_plural(count, 'record')} from {args.app}", file=sys.stderr)
        elif args.command == "review":
            if args.id is not None:
                print(_text(review_one(client, args.app, args.id, args.answer, args.score,
                                       args.notes, args.also, args.never)))
            else:
                review_interactive(client, args.app, sys.stdin, sys.stdout, lists=args.lists)
        return 0
    except redis.ResponseError as exc:
        print(f"redis-llm: {error_text(exc)}", file=sys.stderr)
    except redis.ConnectionError as exc:
        print(f"redis-llm: cannot talk to the Redis server: {exc}", file=sys.stderr)
    except redis.RedisError as exc:
        print(f"redis-llm: {exc}", file=sys.stderr)
    except (CLIError, IngestError) as exc:
        print(f"redis-llm: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"redis-llm: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("redis-llm: interrupted", file=sys.stderr)
        return 130
    finally:
        if client is not None:
            client.close()
    return 1


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


# ---- ingest -------------------------------------------------------------------
#
# The manifest: a hash at "<STORE>:ingested" mapping each source (a file's
# absolute path) to how many ids from item_id(source, 0) on may be in use.
# It is raised before the items that need it are sent (in the same pipeline,
# ahead of them), so it always covers every item present even if the tool
# dies mid-way; when a file is done it is set to the file's item count and
# the ids from that count to the old value are removed with LLM.REM.
# In Redis Cluster, give the store key a hash tag ("{docs}") so that
# "{docs}:ingested" lives in the same slot.

def manifest_key(store: str) -> str:
    return f"{store}:ingested"


@dataclass
class IngestSummary:
    store: str
    files: int = 0
    items: int = 0
    removed: int = 0
    round_trips: int = 0

    def line(self) -> str:
        text = (f"ingested {_plural(self.items, 'item')} from {_plural(self.files, 'file')} "
                f"into {self.store}")
        if self.removed:
            text += f" (removed {_plural(self.removed, 'outdated item')})"
        return text


@dataclass
class _Source:
    name: str
    old: int                 # the manifest's value when we started
    recorded: int            # the manifest's value as queued so far
    written: int = 0         # 1 + the highest index added in this run
    failed: bool = False
    finished: bool = False   # all its commands are queued


@dataclass
class _Pipeline:
    """Commands queued in a redis-py pipeline (transaction=False) and sent
    when ``batch`` LLM.ADDs are waiting and another comes, or when the
    queue grows past ``limit`` commands (bursts of LLM.REM)."""

    client: object
    batch: int
    summary: IngestSummary
    progress: _Progress
    limit: int = 0
    pipe: object = None
    labels: list = field(default_factory=list)
    adds: int = 0
    error: str | None = None

    def __post_init__(self):
        self.pipe = self.client.pipeline(transaction=False)
        self.limit = self.batch + 1000

    def queue(self, label: tuple, *command) -> None:
        if (label[0] == "add" and self.adds >= self.batch) or len(self.labels) >= self.limit:
            self.flush()
        self.pipe.execute_command(*command)
        self.labels.append(label)
        if label[0] == "add":
            self.adds += 1

    def room(self) -> int:
        """How many LLM.ADDs the batch being filled can still take (sending
        the queue first if it is full)."""
        if self.adds >= self.batch:
            self.flush()
        return self.batch - self.adds

    def unsent(self) -> set[int]:
        """The sources (by id()) with commands queued but not sent."""
        return {id(label[1]) for label in self.labels}

    def flush(self) -> None:
        if not self.labels:
            return
        results = self.pipe.execute(raise_on_error=False)
        self.summary.round_trips += 1
        labels, self.labels, self.adds = self.labels, [], 0
        for label, result in zip(labels, results):
            kind, source = label[0], label[1]
            if isinstance(result, Exception):
                source.failed = True
                if self.error is None:
                    where = f"{source.name} ({label[2]})" if kind == "add" else source.name
                    self.error = f"{where}: {error_text(result)}"
            elif kind == "add":
                source.written = max(source.written, label[3] + 1)
                self.summary.items += 1
            elif kind == "rem":
                self.summary.removed += result == 1
        self.progress.update(items=self.summary.items)
        if self.error is not None:
            raise CLIError(self.error)


def ingest(client, store: str, paths: list[str], *, chunk_size: int = 1000, overlap: int = 200,
           csv_mode: str = "row", batch: int = 64, progress: bool = True,
           stderr: TextIO | None = None) -> IngestSummary:
    """Add the items of the files under ``paths`` to ``store`` (see
    redis_llm.ingest for the files, items and ids, and above for the manifest)."""
    stderr = stderr if stderr is not None else sys.stderr
    chunk_text("", chunk_size, overlap)           # checks the sizes
    files = find_files(paths)
    check_dependencies(files)
    kind = client.type(store)
    if kind != b"llm-store":
        raise CLIError(f"no vector store at key {store!r}" if kind == b"none" else
                       f"the key {store!r} holds a {_text(kind)}, not a vector store")
    manifest = manifest_key(store)
    known = {}
    for name, value in client.hgetall(manifest).items():
        try:
            known[_text(name)] = int(value)
        except ValueError:
            raise CLIError(f"the manifest {manifest!r} holds a bad count for {_text(name)}: "
                           f"{_text(value)!r}") from None
    owners = {source_prefix(name): name for name in known}
    for path in files:
        name = str(path)
        owner = owners.setdefault(source_prefix(name), name)
        if owner != name:
            raise CLIError(f"{name}: its item ids would be those of {owner} (a hash collision); "
                           "rename or move one of them")

    summary = IngestSummary(store)
    bar = _Progress(stderr, len(files), enabled=progress and _isatty(stderr))
    pipeline = _Pipeline(client, batch, summary, bar)
    sources: list[_Source] = []
    try:
        for path in files:
            source = _Source(str(path), known.get(str(path), 0), known.get(str(path), 0))
            sources.append(source)
            count = 0
            for index, (data, meta) in enumerate(read_items(path, chunk_size, overlap, csv_mode)):
                rid = item_id(source.name, index)
                if index >= source.recorded:
                    # Cover every id this batch may add before adding them.
                    source.recorded = index + pipeline.room()
                    pipeline.queue(("manifest", source), "HSET", manifest, source.name,
                                   source.recorded)
                where = ", ".join(f"{k} {v}" for k, v in meta.items())
                meta_json = json.dumps({"source": source.name, **meta}, ensure_ascii=False)
                pipeline.queue(("add", source, where, index), "LLM.ADD", store, "--ID", rid,
                               "--META", meta_json, data)
                count = index + 1
            for index in range(count, source.old):
                pipeline.queue(("rem", source), "LLM.REM", store, item_id(source.name, index))
            if count:
                if count != source.recorded:
                    pipeline.queue(("manifest", source), "HSET", manifest, source.name, count)
            elif source.recorded:
                pipeline.queue(("manifest", source), "HDEL", manifest, source.name)
            source.recorded = count
            source.finished = True
            summary.files += 1
            bar.update(files=summary.files)
        pipeline.flush()
    except BaseException:
        unsent = pipeline.unsent()
        _repair_manifest(client, manifest, [
            source for source in sources
            if source.failed or not source.finished or id(source) in unsent])
        raise
    finally:
        bar.close()
    return summary


def _repair_manifest(client, manifest: str, sources: list[_Source]) -> None:
    """After a failure: set the manifest entries of the files not fully
    done to what may be in the store: the old items and those added (best
    effort: the manifest may cover more ids than are present, never fewer)."""
    try:
        pipe = client.pipeline(transaction=False)
        for source in sources:
            keep = max(source.old, source.written)
            if keep:
                pipe.hset(manifest, source.name, keep)
            else:
                pipe.hdel(manifest, source.name)
        pipe.execute(raise_on_error=False)
    except Exception:  # noqa: BLE001, S110  (the error being reported matters more)
        pass


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class _Progress:
    """A one-line progress bar on a terminal, redrawn in place with \\r."""

    WIDTH = 30

    def __init__(self, stream: TextIO, total_files: int, enabled: bool, interval: float = 0.1):
        self.stream, self.total, self.enabled, self.interval = stream, total_files, enabled, interval
        self.files = self.items = 0
        self.last = 0.0
        self.shown = False

    def update(self, files: int | None = None, items: int | None = None) -> None:
        if files is not None:
            self.files = files
        if items is not None:
            self.items = items
        now = time.monotonic()
        if self.enabled and (now - self.last >= self.interval or self.files == self.total):
            self.last = now
            self.draw()

    def draw(self) -> None:
        done = self.WIDTH * self.files // self.total if self.total else self.WIDTH
        bar = "#" * done + "-" * (self.WIDTH - done)
        self.stream.write(f"\r[{bar}] {self.files}/{self.total} files, "
                          f"{_plural(self.items, 'item')}")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.enabled:
            self.draw()
            self.stream.write("\n")
            self.stream.flush()


# ---- records: export and review -------------------------------------------------

def record_dict(reply) -> dict[str, str]:
    """A record (a flat field/value array) as a dict of strings."""
    values = [_text(v) for v in reply]
    return dict(zip(values[0::2], values[1::2]))


def _number(text: str):
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def guard_list(text: str) -> list[str]:
    """A record's also or never field (a JSON array of strings, empty when
    never set) as a list."""
    try:
        value = json.loads(text) if text else []
    except ValueError:
        return []
    return [str(q) for q in value] if isinstance(value, list) else []


def export_row(record: dict[str, str], fmt: str) -> dict:
    """The exported fields of a record: strings for CSV; for JSON, numbers
    (or null when missing) for id, latency_ms, reviewed_score and created_at,
    and tags, also and never as lists. In CSV also and never are JSON arrays
    (a question may hold any character), empty when there is none."""
    row = {name: record.get(name, "") for name in EXPORT_FIELDS}
    for name in ("also", "never"):
        questions = guard_list(row[name])
        row[name] = questions if fmt == "jsonl" else \
            json.dumps(questions, ensure_ascii=False) if questions else ""
    if fmt == "jsonl":
        for name in ("id", "latency_ms", "reviewed_score", "created_at"):
            row[name] = _number(row[name])
        row["tags"] = [tag for tag in row["tags"].split(",") if tag]
    return row


def export(client, app: str, reviewed: bool = False, fmt: str = "jsonl",
           output: str | None = None, stdout: TextIO | None = None) -> int:
    """Write the records of ``app`` (newest first); return how many."""
    with contextlib.ExitStack() as stack:
        if output:
            out = stack.enter_context(open(output, "w", encoding="utf-8", newline=""))
        else:
            out = stdout or sys.stdout
        return _export(client, app, reviewed, fmt, out)


def _export(client, app: str, reviewed: bool, fmt: str, out: TextIO) -> int:
    writer = None
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=EXPORT_FIELDS, lineterminator="\n")
        writer.writeheader()
    seen: set[str] = set()
    offset = 0
    while True:
        command = ["LLM.RESULTS", app] + (["--REVIEWED"] if reviewed else [])
        page = client.execute_command(*command, "--COUNT", EXPORT_PAGE, "--OFFSET", offset)
        for reply in page:
            record = record_dict(reply)
            # Records added while paging shift the pages: skip repeats.
            if record.get("id") in seen:
                continue
            seen.add(record.get("id"))
            row = export_row(record, fmt)
            if writer is not None:
                writer.writerow(row)
            else:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
        if len(page) < EXPORT_PAGE:
            break
        offset += len(page)
    out.flush()
    return len(seen)


def review_one(client, app: str, rid: str, answer: str, score: str, notes: str | None = None,
               also: list[str] | None = None, never: list[str] | None = None):
    """LLM.REVIEW. ``also`` and ``never`` replace the stored lists: None
    keeps a list, [] clears it (one empty value), and a list sends one
    option per question as given (the server refuses an empty one among
    several; a single empty one clears)."""
    command = ["LLM.REVIEW", app, rid, "--ANSWER", answer, "--SCORE", score]
    if notes:
        command += ["--NOTES", notes]
    for option, questions in (("--ALSO", also), ("--NEVER", never)):
        if questions is not None:
            for question in questions or [""]:
                command += [option, question]
    return client.execute_command(*command)


def next_unreviewed(client, app: str, skipped: set[str], decode=record_dict):
    """The newest finished, unreviewed record not skipped (as ``decode``
    makes it of the reply: a dict of strings by default), or None.

    Pages of len(skipped) + 1 records (at most 100) from offset 0 on: records
    newer than the skipped ones are not missed when they arrive meanwhile."""
    count = min(len(skipped) + 1, 100)
    offset = 0
    while True:
        page = client.execute_command("LLM.RESULTS", app, "--UNREVIEWED", "--STATE", "done",
                                      "--COUNT", count, "--OFFSET", offset)
        for reply in page:
            record = decode(reply)
            if str(record.get("id")) not in skipped:
                return record
        if len(page) < count:
            return None
        offset += len(page)


def _band(score: float) -> str:
    return [name for low, _, name in BANDS if score >= low][-1]


def show_record(record: dict[str, str], out: TextIO) -> None:
    write = out.write
    write(f"\n=== record {record.get('id', '?')} ===\n")
    write(f"Question: {record.get('question', '')}\n")
    write(f"Answer: {record.get('answer', '')}\n")
    latency = record.get("latency_ms") or "?"
    write(f"Model: {record.get('model') or '?'}, latency: {latency} ms\n")
    try:
        matches = json.loads(record.get("matches") or "[]")
    except ValueError:
        matches = []
    if isinstance(matches, list) and matches:
        write("Matches:\n")
        for n, match in enumerate(matches, 1):
            if not isinstance(match, dict):
                continue
            where = str(match.get("source") or "?")
            if match.get("page") not in (None, ""):
                where += f", page {match['page']}"
            if match.get("distance") not in (None, ""):
                where += f" (distance {match['distance']})"
            content = " ".join(str(match.get("content") or "").split())
            if len(content) > MATCH_PREVIEW:
                content = content[:MATCH_PREVIEW] + "..."
            write(f"  {n}. {where}\n     {content}\n")
    for name, title in (("also", "Also answers"), ("never", "Never served for")):
        questions = guard_list(record.get(name, ""))
        if questions:
            write(f"{title}:\n" + "".join(f"  - {q}\n" for q in questions))
    out.flush()


def _ask(inp: TextIO, out: TextIO, prompt: str) -> str | None:
    """A line typed by the reviewer (without its newline), or None at end of input."""
    if inp is sys.stdin and out is sys.stdout and _isatty(inp):
        try:
            return input(prompt)           # with line editing
        except EOFError:
            out.write("\n")
            return None
    out.write(prompt)
    out.flush()
    line = inp.readline()
    if not line:
        out.write("\n")
        return None
    return line.rstrip("\r\n")


def _ask_score(inp: TextIO, out: TextIO) -> str | None:
    """A score 0-100 as typed, or 's' / 'q', or None at end of input."""
    while True:
        text = _ask(inp, out, "Score 0-100: ")
        if text is None:
            return None
        text = text.strip()
        if text in ("s", "q"):
            return text
        try:
            score = float(text)
        except ValueError:
            score = -1.0
        if 0 <= score <= 100:
            out.write(f"  ({_band(score)})\n")
            return text
        out.write(f"  a score is a number from 0 to 100: {BANDS_TEXT}\n")


def _ask_list(inp: TextIO, out: TextIO, title: str, current: list[str]) -> list[str] | None | bool:
    """Questions typed one per line, ended by an empty line: the list that
    replaces ``current``, None to keep it (an empty line first), [] to
    clear it ('-' alone), or False at end of input."""
    hint = f"empty: keep the {len(current)} above, '-' clears them" if current else "empty: none"
    out.write(f"{title}, one per line, an empty line ends ({hint}):\n")
    questions: list[str] = []
    while True:
        line = _ask(inp, out, "  > ")
        if line is None:
            return False
        line = line.strip()
        if not line:
            return questions or None
        if line == "-" and not questions:
            return []
        questions.append(line)


def review_interactive(client, app: str, inp: TextIO, out: TextIO,
                       lists: bool = False) -> tuple[int, int]:
    """Review the app's finished, unreviewed records one by one; return
    (reviewed, skipped). At the answer or score prompt 's' skips the record
    (for this session) and 'q' (or end of input) quits. With ``lists`` the
    reviewer then gives the questions the answer also answers and those it
    must never be served for (see _ask_list)."""
    skipped: set[str] = set()
    reviewed = 0
    out.write(f"Reviewing {app}: 's' skips a record, 'q' quits.\n")
    while True:
        record = next_unreviewed(client, app, skipped)
        if record is None:
            out.write("Nothing left to review.\n")
            break
        show_record(record, out)
        answer = _ask(inp, out, "Reviewed answer (empty: keep the answer): ")
        if answer in ("s", "q", None):
            score = answer
        else:
            score = _ask_score(inp, out)
        if score == "s":
            skipped.add(record["id"])
            out.write("  skipped\n")
            continue
        if score in ("q", None):
            break
        notes = _ask(inp, out, "Notes: ")
        if notes is None:
            break
        also = never = None
        if lists:
            also = _ask_list(inp, out, "Also answers these questions",
                             guard_list(record.get("also", "")))
            if also is False:
                break
            never = _ask_list(inp, out, "Never serve it for",
                              guard_list(record.get("never", "")))
            if never is False:
                break
        review_one(client, app, record["id"], answer or record.get("answer", ""), score,
                   notes.strip() or None, also, never)
        reviewed += 1
        out.write("  saved\n")
    out.write(f"reviewed {_plural(reviewed, 'record')}, skipped {len(skipped)}\n")
    out.flush()
    return reviewed, len(skipped)


if __name__ == "__main__":
    sys.exit(main())
