"""The ``redis-llm`` command-line tool against a real redis-server.

ingest: files (.txt .md .csv .tsv .pdf .parquet, directories) into a vector
store whose LLM (the scripted OpenAI-compatible server) embeds them; export
and review: the recorded results of an app (made with LLM.RECORD). The CLI
is run in-process through ``main(argv)``.
"""

import csv
import io
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import redis

from redis_llm import cli, module_path
from redis_llm.ingest import (
    MAX_ITEMS_PER_SOURCE,
    IngestError,
    chunk_text,
    find_files,
    item_id,
    source_prefix,
)

DIM = 8  # the HTTP server's embedding length


# ---- helpers ------------------------------------------------------------------

def run(capsys, *argv) -> tuple[int, str, str]:
    """main(argv): (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def items(r, store: str, source: Path, count: int) -> list:
    """LLM.GET of a source's first ``count`` ids: [(data, meta), ...] (None when missing)."""
    out = []
    for index in range(count):
        reply = r.execute_command("LLM.GET", store, item_id(str(source), index))
        out.append(None if reply is None else (reply[0].decode(), json.loads(reply[2])))
    return out


def unit(vector) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float32)
    return v / np.linalg.norm(v)


def commandstats(r) -> dict:
    return {name.lower(): stats["calls"] for name, stats in r.info("commandstats").items()}


def calls(r, name: str) -> int:
    return commandstats(r).get(f"cmdstat_{name}", 0)


def minimal_pdf(pages: list[str]) -> bytes:
    """A valid PDF 1.4 written by hand: one page per text, each page one
    text object in Helvetica (lines split on newlines)."""
    def escape(text: str) -> bytes:
        return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)").encode("latin-1")

    n = len(pages)
    objects = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: b"<< /Type /Pages /Kids [" + b" ".join(b"%d 0 R" % (4 + 2 * i) for i in range(n))
           + b"] /Count %d >>" % n,
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    }
    for i, text in enumerate(pages):
        lines = text.split("\n")
        ops = [b"BT", b"/F1 12 Tf", b"72 720 Td"]
        for j, line in enumerate(lines):
            if j:
                ops.append(b"0 -14 Td")
            ops.append(b"(" + escape(line) + b") Tj")
        ops.append(b"ET")
        stream = b"\n".join(ops)
        objects[4 + 2 * i] = (b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
                              b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % (5 + 2 * i))
        objects[5 + 2 * i] = b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream"
    out = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"
    offsets = {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += b"%d 0 obj\n" % number + objects[number] + b"\nendobj\n"
    xref = len(out)
    size = len(objects) + 1
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    out += b"".join(b"%010d 00000 n \n" % offsets[number] for number in range(1, size))
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (size, xref)
    return out


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


# ---- fixtures -------------------------------------------------------------------

@pytest.fixture
def url(server):
    return f"redis://127.0.0.1:{server.port}"


@pytest.fixture
def llm(r, api):
    assert r.execute_command("LLM.CREATE-LLM", "llm", "--PARAMS", json.dumps({"base_url": api.url})) == 1
    return "llm"


@pytest.fixture
def store(r, llm):
    """Key 'docs': a vector store whose items the LLM embeds."""
    assert r.execute_command("LLM.CREATE-VECTOR-STORE", "docs", "--LLM", llm) == 1
    return "docs"


@pytest.fixture
def app(r, llm):
    """Key 'app': an app with three recorded results (ids 1-3, newest last)."""
    assert r.execute_command("LLM.CREATE-APP", "app", "--LLM", llm) == 1
    for n in (1, 2, 3):
        assert r.execute_command("LLM.RECORD", "app", "--QUESTION", f"question {n}",
                                 "--ANSWER", f"answer {n}", "--MODEL", "gpt-test",
                                 "--LATENCY", 10 * n, "--TAGS", "a,b", "--SESSION", f"s{n}") == n
    return "app"


def result(r, app: str, rid) -> dict:
    return cli.record_dict(r.execute_command("LLM.RESULT", app, rid))


# ---- module-path ----------------------------------------------------------------

def test_module_path_prints_the_module_path(capsys):
    assert run(capsys, "module-path") == (0, module_path() + "\n", "")


def test_a_command_is_required(capsys):
    code, _, err = run(capsys)
    assert code == 2 and "required" in err


# ---- chunking and ids -----------------------------------------------------------

def test_short_text_is_one_stripped_chunk():
    assert chunk_text("  hello world \n", 1000, 200) == ["hello world"]


def test_empty_or_blank_text_gives_no_chunk():
    assert chunk_text("", 10, 2) == []
    assert chunk_text(" \n\n\t ", 10, 2) == []


def test_chunks_respect_the_size_cut_at_breaks_and_overlap():
    words = [f"w{i:03d}" for i in range(200)]       # 200 words of 4 chars
    text = " ".join(words)
    chunks = chunk_text(text, 100, 30)
    assert all(len(c) <= 100 for c in chunks)
    # Cut between words only, every word kept, in order.
    assert all(set(c.split()) <= set(words) for c in chunks)
    assert " ".join(dict.fromkeys(w for c in chunks for w in c.split())) == text
    # Consecutive chunks share words (about 30 characters: 5 or 6 words).
    for a, b in itertools.pairwise(chunks):
        shared = [w for w in a.split() if w in set(b.split())]
        assert 4 <= len(shared) <= 7, (a, b)
        assert b.startswith(shared[0])


def test_chunks_prefer_paragraph_breaks():
    text = "a" * 60 + "\n\n" + "b" * 30 + " " + "c" * 30
    assert chunk_text(text, 100, 0) == ["a" * 60, "b" * 30 + " " + "c" * 30]


def test_chunks_without_overlap_partition_text_without_spaces():
    assert chunk_text("x" * 25, 10, 0) == ["x" * 10, "x" * 10, "x" * 5]


def test_chunk_options_are_checked():
    with pytest.raises(IngestError, match="chunk size"):
        chunk_text("x", 0, 0)
    with pytest.raises(IngestError, match="overlap"):
        chunk_text("x", 10, 10)


def test_item_ids_have_the_top_bit_the_source_hash_and_the_index():
    a, b = item_id("/a.txt", 0), item_id("/b.txt", 0)
    assert a >> 63 == 1 and b >> 63 == 1 and a != b
    assert item_id("/a.txt", 5) == a | 5 == source_prefix("/a.txt") + 5
    assert item_id("/a.txt", MAX_ITEMS_PER_SOURCE - 1) < 2**64
    assert item_id("/a.txt", 0) == a  # deterministic
    with pytest.raises(IngestError, match="more than 1048576 items"):
        item_id("/a.txt", MAX_ITEMS_PER_SOURCE)


def test_find_files_walks_directories_in_order_skipping_hidden_and_unsupported(tmp_path):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    for name in ("b.txt", "a.md", "sub/c.csv", "sub/deeper/d.TXT", "sub/x.bin", ".h.txt",
                 ".hidden/e.txt"):
        (tmp_path / name).write_text("x")
    found = find_files([str(tmp_path), str(tmp_path / "b.txt")])
    assert found == [tmp_path / "a.md", tmp_path / "b.txt", tmp_path / "sub/c.csv",
                     tmp_path / "sub/deeper/d.TXT"]


# ---- ingest ---------------------------------------------------------------------

def test_ingest_txt_adds_chunks_embedded_by_the_store_llm(r, api, url, store, capsys, tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("First paragraph about cats.\n\nSecond paragraph about dogs and their habits.")
    code, out, err = run(capsys, "ingest", store, doc, "--url", url, "--chunk-size", 40,
                         "--overlap", 0)
    assert (code, out, err) == (0, f"ingested 3 items from 1 file into {store}\n", "")
    assert r.execute_command("LLM.SIZE", store) == 3
    # Cut at the paragraph break, then (45 characters > 40) at the last space.
    chunks = ["First paragraph about cats.", "Second paragraph about dogs and their", "habits."]
    assert items(r, store, doc, 4) == [
        (chunk, {"source": str(doc), "chunk": n}) for n, chunk in enumerate(chunks, 1)] + [None]
    # The store's LLM embedded each chunk's text, one request per item.
    assert [req.body["input"] for req in api.embedding_requests()] == [[c] for c in chunks]


def test_ingest_txt_chunks_and_embeddings(r, api, url, store, capsys, tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("alpha beta gamma delta\n\nepsilon zeta eta theta")
    assert run(capsys, "--url", url, "ingest", store, doc, "--chunk-size", 25, "--overlap", 0)[0] == 0
    assert items(r, store, doc, 3) == [
        ("alpha beta gamma delta", {"source": str(doc), "chunk": 1}),
        ("epsilon zeta eta theta", {"source": str(doc), "chunk": 2}),
        None]
    vector = r.execute_command("LLM.GET", store, item_id(str(doc), 1))[1]
    got = np.array([float(x) for x in vector.split(b",")])
    assert np.allclose(got, unit(api.embedding_for("epsilon zeta eta theta", DIM)), atol=1e-6)


def test_ingest_markdown_and_relative_paths_use_the_absolute_source(r, url, store, capsys,
                                                                     tmp_path, monkeypatch):
    (tmp_path / "notes.md").write_text("# Title\n\nSome *markdown* text.\n")
    monkeypatch.chdir(tmp_path)
    assert run(capsys, "ingest", store, "notes.md", "--url", url)[0] == 0
    assert items(r, store, tmp_path / "notes.md", 2) == [
        ("# Title\n\nSome *markdown* text.", {"source": str(tmp_path / "notes.md"), "chunk": 1}),
        None]


def test_ingest_csv_gives_an_item_per_row_as_column_value_lines(r, url, store, capsys, tmp_path):
    path = tmp_path / "people.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "city", "note"])
        writer.writerow(["Ada", "London", "first programmer"])
        writer.writerow(["", "", ""])                     # an empty row: no item, keeps its number
        writer.writerow(["Alan", "Wilmslow", ""])         # empty values left out
        writer.writerow(["Grace", "New York, NY", 'said "hi"'])
    code, out, _ = run(capsys, "ingest", store, path, "--url", url)
    assert (code, out) == (0, f"ingested 3 items from 1 file into {store}\n")
    src = str(path)
    assert items(r, store, path, 4) == [
        ("name: Ada\ncity: London\nnote: first programmer", {"source": src, "row": 1}),
        ("name: Alan\ncity: Wilmslow", {"source": src, "row": 3}),
        ('name: Grace\ncity: New York, NY\nnote: said "hi"', {"source": src, "row": 4}),
        None]


def test_ingest_csv_chunk_mode_chunks_the_rendered_rows(r, url, store, capsys, tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("k\tv\n" + "".join(f"key{i}\tvalue{i}\n" for i in range(6)))
    code, _, _ = run(capsys, "ingest", store, path, "--url", url, "--csv-mode", "chunk",
                     "--chunk-size", 40, "--overlap", 0)
    assert code == 0
    got = items(r, store, path, 4)
    assert got[3] is None
    assert [meta for _, meta in got[:3]] == [{"source": str(path), "chunk": n} for n in (1, 2, 3)]
    assert got[0][0] == "k: key0\nv: value0\n\nk: key1\nv: value1"
    assert "\n\n".join(data for data, _ in got[:3]) == "\n\n".join(
        f"k: key{i}\nv: value{i}" for i in range(6))


def test_ingest_a_directory_recursively(r, url, store, capsys, tmp_path):
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "a.txt").write_text("text a")
    (tmp_path / "docs" / "sub" / "b.md").write_text("text b")
    (tmp_path / "docs" / "sub" / "c.csv").write_text("x,y\n1,2\n3,4\n")
    (tmp_path / "docs" / "sub" / "ignored.json").write_text("{}")
    (tmp_path / "docs" / "empty.txt").write_text("\n\n")
    code, out, _ = run(capsys, "ingest", store, tmp_path / "docs", "--url", url)
    assert (code, out) == (0, f"ingested 4 items from 4 files into {store}\n")
    assert r.execute_command("LLM.SIZE", store) == 4
    assert items(r, store, tmp_path / "docs" / "sub" / "c.csv", 2)[1] == (
        "x: 3\ny: 4", {"source": str(tmp_path / "docs" / "sub" / "c.csv"), "row": 2})
    manifest = {k.decode(): int(v) for k, v in r.hgetall(f"{store}:ingested").items()}
    assert manifest == {str(tmp_path / "docs" / "a.txt"): 1, str(tmp_path / "docs" / "sub" / "b.md"): 1,
                        str(tmp_path / "docs" / "sub" / "c.csv"): 2}


def test_reingest_replaces_items_instead_of_duplicating(r, api, url, store, capsys, tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("one\n\ntwo\n\nthree")
    opts = ("--url", url, "--chunk-size", 5, "--overlap", 0)
    assert run(capsys, "ingest", store, doc, *opts)[0] == 0
    assert r.execute_command("LLM.SIZE", store) == 3
    # The same file again: same items, same size.
    assert run(capsys, "ingest", store, doc, *opts)[:2] == (
        0, f"ingested 3 items from 1 file into {store}\n")
    assert r.execute_command("LLM.SIZE", store) == 3
    # Changed text: updated in place.
    doc.write_text("one\n\nTWO\n\nthree")
    assert run(capsys, "ingest", store, doc, *opts)[0] == 0
    assert r.execute_command("LLM.SIZE", store) == 3
    assert items(r, store, doc, 3)[1] == ("TWO", {"source": str(doc), "chunk": 2})
    vector = r.execute_command("LLM.GET", store, item_id(str(doc), 1))[1]
    assert np.allclose([float(x) for x in vector.split(b",")], unit(api.embedding_for("TWO", DIM)),
                       atol=1e-6)
    # A shorter file: the surplus items go.
    doc.write_text("only")
    assert run(capsys, "ingest", store, doc, *opts)[:2] == (
        0, f"ingested 1 item from 1 file into {store} (removed 2 outdated items)\n")
    assert r.execute_command("LLM.SIZE", store) == 1
    assert items(r, store, doc, 3) == [("only", {"source": str(doc), "chunk": 1}), None, None]
    assert r.hget(f"{store}:ingested", str(doc)) == b"1"
    # An emptied file: its items and its manifest entry go.
    doc.write_text("")
    assert run(capsys, "ingest", store, doc, *opts)[:2] == (
        0, f"ingested 0 items from 1 file into {store} (removed 1 outdated item)\n")
    assert r.execute_command("LLM.SIZE", store) == 0
    assert r.exists(f"{store}:ingested") == 0


def test_reingest_keeps_items_of_other_sources_and_added_items(r, url, store, capsys, tmp_path):
    r.execute_command("LLM.ADD", store, "--EMBEDDING", ",".join(["0.5"] * DIM), "manual")
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("aaa")
    b.write_text("bbb")
    assert run(capsys, "ingest", store, a, b, "--url", url)[0] == 0
    b.write_text("")
    assert run(capsys, "ingest", store, b, "--url", url)[0] == 0
    assert r.execute_command("LLM.SIZE", store) == 2
    assert r.execute_command("LLM.GET", store, 1)[0] == b"manual"
    assert items(r, store, a, 1) == [("aaa", {"source": str(a), "chunk": 1})]


def test_empty_file_gives_no_item(r, url, store, capsys, tmp_path):
    (tmp_path / "e.txt").write_text("")
    assert run(capsys, "ingest", store, tmp_path / "e.txt", "--url", url)[:2] == (
        0, f"ingested 0 items from 1 file into {store}\n")
    assert r.execute_command("LLM.SIZE", store) == 0
    assert r.exists(f"{store}:ingested") == 0


def test_store_without_llm_fails_with_the_server_error(r, api, url, capsys, tmp_path):
    r.execute_command("LLM.CREATE-VECTOR-STORE", "bare")
    (tmp_path / "a.txt").write_text("some text")
    code, out, err = run(capsys, "ingest", "bare", tmp_path / "a.txt", "--url", url)
    assert code == 1 and out == ""
    assert err == (f"redis-llm: {tmp_path / 'a.txt'} (chunk 1): ERR no --EMBEDDING given and "
                   "the vector store has no LLM to embed the data\n")
    assert r.execute_command("LLM.SIZE", "bare") == 0
    assert r.exists("bare:ingested") == 0      # the manifest entry raised for it was undone
    assert api.requests == []


def test_llm_error_midway_keeps_a_manifest_covering_what_was_added(r, api, url, store, capsys,
                                                                  tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("\n\n".join(f"part{i}" for i in range(5)))
    api.fail(400, message="bad input", times=1)   # the first item's embedding fails
    code, _, err = run(capsys, "ingest", store, doc, "--url", url, "--chunk-size", 6,
                       "--overlap", 0, "--batch", 2)
    assert code == 1
    assert err.startswith(f"redis-llm: {doc} (chunk 1): ERR openai: 400 bad input")
    # The rest of the first batch went in; nothing after it was sent.
    assert r.execute_command("LLM.SIZE", store) == 1
    assert r.hget(f"{store}:ingested", str(doc)) == b"2"
    assert run(capsys, "ingest", store, doc, "--url", url, "--chunk-size", 6, "--overlap", 0)[0] == 0
    assert r.execute_command("LLM.SIZE", store) == 5
    assert r.hget(f"{store}:ingested", str(doc)) == b"5"


def test_missing_store_fails_before_anything_is_written(r, url, capsys, tmp_path):
    (tmp_path / "a.txt").write_text("x")
    assert run(capsys, "ingest", "nope", tmp_path / "a.txt", "--url", url) == (
        1, "", "redis-llm: no vector store at key 'nope'\n")
    r.set("str", "v")
    assert run(capsys, "ingest", "str", tmp_path / "a.txt", "--url", url) == (
        1, "", "redis-llm: the key 'str' holds a string, not a vector store\n")
    assert r.keys() == [b"str"]


def test_missing_or_unsupported_paths_fail_before_anything_is_written(r, api, url, store, capsys,
                                                                      tmp_path):
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "a.bin").write_text("x")
    code, _, err = run(capsys, "ingest", store, tmp_path / "a.txt", tmp_path / "missing.txt",
                       "--url", url)
    assert (code, err) == (1, f"redis-llm: {tmp_path / 'missing.txt'}: no such file or directory\n")
    code, _, err = run(capsys, "ingest", store, tmp_path / "a.bin", "--url", url)
    assert code == 1 and err.startswith(f"redis-llm: {tmp_path / 'a.bin'}: unsupported file type")
    assert r.execute_command("LLM.SIZE", store) == 0 and api.requests == []


def test_bad_ingest_options_are_usage_errors(url, store, capsys, tmp_path):
    (tmp_path / "a.txt").write_text("x")
    for opts in (("--chunk-size", 0), ("--overlap", -1), ("--batch", 0),
                 ("--chunk-size", 10, "--overlap", 10), ("--csv-mode", "cell")):
        code, _, err = run(capsys, "ingest", store, tmp_path / "a.txt", "--url", url, *opts)
        assert code == 2 and "error:" in err, opts


def test_ingest_batches_items_in_pipelines(r, api, server, store, tmp_path):
    """10 items with --batch 4: 3 round trips (4 + 4 + 2 items and the manifest updates);
    each item is one LLM.ADD and one embedding request."""
    (tmp_path / "doc.txt").write_text("\n\n".join(f"p{i}" for i in range(10)))
    executes = []

    class Counting(redis.Redis):
        def pipeline(self, transaction=True, shard_hint=None):
            pipe = super().pipeline(transaction, shard_hint)
            real = pipe.execute

            def execute(raise_on_error=True):
                executes.append((transaction, [c[0][0] for c in pipe.command_stack]))
                return real(raise_on_error)
            pipe.execute = execute
            return pipe

    client = Counting(host="127.0.0.1", port=server.port)
    r.config_resetstat()
    summary = cli.ingest(client, store, [str(tmp_path)], chunk_size=3, overlap=0, batch=4,
                         progress=False)
    assert (summary.items, summary.files, summary.round_trips) == (10, 1, 3)
    assert [t for t, _ in executes] == [False, False, False]
    assert [[c for c in cmds if c == "LLM.ADD"] for _, cmds in executes] == [
        ["LLM.ADD"] * 4, ["LLM.ADD"] * 4, ["LLM.ADD"] * 2]
    # The manifest is raised ahead of each batch's items.
    assert [cmds[0] for _, cmds in executes] == ["HSET", "HSET", "HSET"]
    stats = commandstats(r)
    assert stats["cmdstat_llm.add"] == 10
    assert len(api.embedding_requests()) == 10
    assert r.execute_command("LLM.SIZE", store) == 10
    assert r.hget(f"{store}:ingested", str(tmp_path / "doc.txt")) == b"10"


def test_progress_bar_on_a_terminal_only(r, url, store, capsys, tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "b.txt").write_text("y")
    tty = TTY()
    monkeypatch.setattr(sys, "stderr", tty)
    assert cli.main(["ingest", store, str(tmp_path), "--url", url]) == 0
    shown = tty.getvalue()
    assert shown.startswith("\r[")
    assert shown.endswith("\r[" + "#" * 30 + "] 2/2 files, 2 items\n")
    tty = TTY()
    monkeypatch.setattr(sys, "stderr", tty)
    assert cli.main(["ingest", store, str(tmp_path), "--url", url, "--no-progress"]) == 0
    assert tty.getvalue() == ""


def test_url_before_the_subcommand_and_from_the_environment(r, url, store, capsys, tmp_path,
                                                            monkeypatch):
    (tmp_path / "a.txt").write_text("x")
    assert run(capsys, "--url", url, "ingest", store, tmp_path / "a.txt")[0] == 0
    monkeypatch.setenv("REDIS_URL", url)
    assert run(capsys, "ingest", store, tmp_path / "a.txt")[0] == 0
    assert r.execute_command("LLM.SIZE", store) == 1


def test_unreachable_server_is_an_error(capsys, tmp_path):
    from redis_llm.testing import free_port
    (tmp_path / "a.txt").write_text("x")
    code, _, err = run(capsys, "ingest", "docs", tmp_path / "a.txt",
                       "--url", f"redis://127.0.0.1:{free_port()}")
    assert code == 1 and err.startswith("redis-llm: cannot talk to the Redis server")


def test_source_hash_collision_is_refused(r, url, store, capsys, tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "b.txt").write_text("y")
    monkeypatch.setattr(cli, "source_prefix", lambda source: 1 << 63)
    code, _, err = run(capsys, "ingest", store, tmp_path, "--url", url)
    assert code == 1
    assert err == (f"redis-llm: {tmp_path / 'b.txt'}: its item ids would be those of "
                   f"{tmp_path / 'a.txt'} (a hash collision); rename or move one of them\n")
    assert r.execute_command("LLM.SIZE", store) == 0


def test_pdf_without_pypdf_says_how_to_install_it(r, api, url, store, capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pypdf", None)   # import pypdf raises ImportError
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "doc.pdf").write_bytes(minimal_pdf(["hello"]))
    assert run(capsys, "ingest", store, tmp_path, "--url", url) == (
        1, "", "redis-llm: reading .pdf files needs the pypdf package: pip install pypdf\n")
    assert r.execute_command("LLM.SIZE", store) == 0 and api.requests == []


def test_minimal_pdf_is_well_formed():
    """The test PDF's cross-reference table points at its objects."""
    pdf = minimal_pdf(["one", "two"])
    xref = int(pdf.rsplit(b"startxref\n", 1)[1].split(b"\n")[0])
    lines = pdf[xref:].split(b"\n")
    assert lines[0] == b"xref" and lines[1] == b"0 8"
    for number, entry in enumerate(lines[3:10], 1):
        assert len(entry) + 1 == 20
        assert pdf[int(entry[:10]):].startswith(b"%d 0 obj\n" % number)


def test_ingest_pdf_gives_chunks_per_page(r, url, store, capsys, tmp_path):
    pytest.importorskip("pypdf")
    path = tmp_path / "doc.pdf"
    path.write_bytes(minimal_pdf(["Page one text.", "", "Page three has\nsome more words."]))
    code, out, err = run(capsys, "ingest", store, path, "--url", url)
    assert (code, out, err) == (0, f"ingested 2 items from 1 file into {store}\n", "")
    got = items(r, store, path, 3)
    assert got[2] is None
    assert [meta for _, meta in got[:2]] == [{"source": str(path), "page": 1},
                                            {"source": str(path), "page": 3}]
    assert [data for data, _ in got[:2]] == ["Page one text.", "Page three has\nsome more words."]
    # A page longer than a chunk gives several items with its page number.
    code, out, _ = run(capsys, "ingest", store, path, "--url", url, "--chunk-size", 16,
                       "--overlap", 0)
    assert (code, out) == (0, f"ingested 3 items from 1 file into {store}\n")
    assert items(r, store, path, 4) == [("Page one text.", {"source": str(path), "page": 1}),
                                        ("Page three has", {"source": str(path), "page": 3}),
                                        ("some more words.", {"source": str(path), "page": 3}),
                                        None]


def test_ingest_parquet_rows_like_csv(r, url, store, capsys, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"name": ["Ada", "Alan"], "year": [1815, None]}), path)
    assert run(capsys, "ingest", store, path, "--url", url)[0] == 0
    assert items(r, store, path, 3) == [("name: Ada\nyear: 1815", {"source": str(path), "row": 1}),
                                        ("name: Alan", {"source": str(path), "row": 2}), None]


# ---- export -------------------------------------------------------------------------

def test_export_jsonl_newest_first_with_typed_fields(r, url, app, capsys):
    assert r.execute_command("LLM.REVIEW", app, 2, "--ANSWER", "better 2", "--SCORE", 90,
                             "--NOTES", "checked") == 1
    code, out, err = run(capsys, "export", app, "--url", url)
    assert (code, err) == (0, "exported 3 records from app\n")
    rows = [json.loads(line) for line in out.splitlines()]
    assert [row["id"] for row in rows] == [3, 2, 1]
    assert list(rows[0]) == list(cli.EXPORT_FIELDS)
    created = rows[1]["created_at"]
    assert isinstance(created, int) and created > 1.6e12
    assert rows[1] == {"id": 2, "question": "question 2", "answer": "answer 2",
                       "reviewed_answer": "better 2", "reviewed_score": 90, "reviewed_notes": "checked",
                       "reviewer": "default", "model": "gpt-test", "latency_ms": 20, "state": "done",
                       "created_at": created, "tags": ["a", "b"], "session": "s2",
                       "also": [], "never": []}
    assert rows[0]["reviewed_score"] is None and rows[0]["reviewed_answer"] == ""


def test_export_reviewed_csv_to_a_file(r, url, app, capsys, tmp_path):
    r.execute_command("LLM.REVIEW", app, 1, "--ANSWER", "fixed, \"quoted\"\nanswer", "--SCORE", 70)
    output = tmp_path / "out.csv"
    code, out, err = run(capsys, "export", app, "--url", url, "--reviewed", "--format", "csv",
                         "--output", output)
    assert (code, out, err) == (0, "", "exported 1 record from app\n")
    with open(output, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(cli.EXPORT_FIELDS)
    assert len(rows) == 2
    row = dict(zip(rows[0], rows[1]))
    assert (row["id"], row["reviewed_answer"], row["reviewed_score"], row["tags"], row["latency_ms"]) == (
        "1", "fixed, \"quoted\"\nanswer", "70", "a,b", "10")


def test_export_pages_through_more_than_a_page(r, url, llm, capsys):
    r.execute_command("LLM.CREATE-APP", "big", "--LLM", llm)
    pipe = r.pipeline(transaction=False)
    for n in range(cli.EXPORT_PAGE + 5):
        pipe.execute_command("LLM.RECORD", "big", "--QUESTION", f"q{n}", "--ANSWER", "a")
    pipe.execute()
    code, out, _ = run(capsys, "export", "big", "--url", url)
    ids = [json.loads(line)["id"] for line in out.splitlines()]
    assert code == 0 and ids == list(range(cli.EXPORT_PAGE + 5, 0, -1))


def test_export_of_a_missing_app_is_empty_and_errors_surface(r, url, capsys):
    assert run(capsys, "export", "none", "--url", url) == (0, "", "exported 0 records from none\n")
    r.set("str", "v")
    code, _, err = run(capsys, "export", "str", "--url", url)
    assert code == 1 and err.startswith("redis-llm: ") and len(err) > len("redis-llm: \n")


# ---- review -----------------------------------------------------------------------

def test_review_one_record_non_interactively(r, url, app, capsys):
    assert run(capsys, "review", app, "--url", url, "--id", 2, "--answer", "right", "--score", 85,
               "--notes", "n") == (0, "1\n", "")
    rec = result(r, app, 2)
    assert (rec["reviewed_answer"], rec["reviewed_score"], rec["reviewed_notes"]) == ("right", "85", "n")


def test_review_non_interactive_errors(r, url, app, capsys):
    code, out, err = run(capsys, "review", app, "--url", url, "--id", 99, "--answer", "x",
                         "--score", 50)
    assert (code, out) == (1, "") and err == "redis-llm: ERR no result 99 in app 'app'\n"
    code, _, err = run(capsys, "review", app, "--url", url, "--id", 1, "--answer", "x",
                       "--score", 101)
    assert code == 1 and err.startswith("redis-llm: ERR ")
    code, _, err = run(capsys, "review", app, "--url", url, "--id", 1, "--answer", "x")
    assert code == 2 and "--id needs --answer and --score" in err
    code, _, err = run(capsys, "review", app, "--url", url, "--score", 1)
    assert code == 2 and "--score needs --id" in err
    assert result(r, app, 1)["reviewed_score"] == ""


def test_review_interactive_skip_retry_score_and_quit(r, app, server):
    client = server.client()
    # Newest first: 3 is skipped, 2 reviewed (answer kept; bad scores re-asked),
    # 1 reviewed with a new answer and no notes, then nothing is left.
    script = "s\n\nabc\n101\n90\nlooks right\nnew answer 1\n70\n\n"
    out = io.StringIO()
    assert cli.review_interactive(client, app, io.StringIO(script), out) == (2, 1)
    shown = out.getvalue()
    assert shown.index("Question: question 3") < shown.index("Question: question 2") \
        < shown.index("Question: question 1")
    assert "Model: gpt-test, latency: 20 ms" in shown
    assert shown.count("a score is a number from 0 to 100: 0-64 not confident, 65-79 somewhat "
                       "confident, 80-94 confident, 95-100 a known fact") == 2
    assert "(confident)" in shown and "(somewhat confident)" in shown
    assert shown.endswith("Nothing left to review.\nreviewed 2 records, skipped 1\n")
    rec2, rec1, rec3 = result(r, app, 2), result(r, app, 1), result(r, app, 3)
    assert (rec2["reviewed_answer"], rec2["reviewed_score"], rec2["reviewed_notes"]) == (
        "answer 2", "90", "looks right")
    assert (rec1["reviewed_answer"], rec1["reviewed_score"], rec1["reviewed_notes"]) == (
        "new answer 1", "70", "")
    assert rec3["reviewed_score"] == ""
    client.close()


def test_review_interactive_quit_and_end_of_input(r, app, server):
    client = server.client()
    out = io.StringIO()
    assert cli.review_interactive(client, app, io.StringIO("q\n"), out) == (0, 0)
    assert out.getvalue().endswith("reviewed 0 records, skipped 0\n")
    # End of input at the score prompt: nothing saved.
    assert cli.review_interactive(client, app, io.StringIO("an answer\n"), io.StringIO()) == (0, 0)
    assert [result(r, app, n)["reviewed_score"] for n in (1, 2, 3)] == ["", "", ""]
    client.close()


def test_review_interactive_shows_matches(r, app, server):
    record = {"id": 7, "app": "app", "state": "done", "question": "where?", "answer": "there",
              "created_at": 1, "model": "m", "latency_ms": 5,
              "matches": [{"id": 1, "distance": 0.12, "source": "/docs/a.pdf", "page": 3,
                           "content": "the content " + "x" * 400}]}
    assert r.execute_command("LLM.RESULT-SET", app, json.dumps(record)) == 1
    out = io.StringIO()
    cli.review_interactive(server.client(), app, io.StringIO("q\n"), out)
    assert "Matches:\n  1. /docs/a.pdf, page 3 (distance 0.12)\n     the content xxx" in out.getvalue()
    assert "x" * 288 + "...\n" in out.getvalue()


def test_review_interactive_through_main(r, url, app, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n95\n\ns\nq\n"))
    code, out, _ = run(capsys, "review", app, "--url", url)
    assert code == 0 and out.endswith("reviewed 1 record, skipped 1\n")
    assert result(r, app, 3)["reviewed_score"] == "95"
    assert result(r, app, 3)["reviewed_answer"] == "answer 3"


# ---- guarded reviews: --also and --never ----------------------------------------------

def lists(r, app: str, rid) -> tuple[list, list]:
    """The also and never lists of a record."""
    rec = result(r, app, rid)
    return cli.guard_list(rec["also"]), cli.guard_list(rec["never"])


def test_review_one_record_with_also_and_never_questions(r, url, app, capsys):
    assert run(capsys, "review", app, "--url", url, "--id", 2, "--answer", "right", "--score", 97,
               "--also", "question two?", "--also", "Question 2, again", "--never",
               "question twenty") == (0, "1\n", "")
    assert lists(r, app, 2) == (["question two?", "Question 2, again"], ["question twenty"])
    # Lists not given are kept; a list given replaces; --also '' clears.
    assert run(capsys, "review", app, "--url", url, "--id", 2, "--answer", "right",
               "--score", 98)[0] == 0
    assert lists(r, app, 2) == (["question two?", "Question 2, again"], ["question twenty"])
    assert run(capsys, "review", app, "--url", url, "--id", 2, "--answer", "right", "--score", 98,
               "--never", "question 22")[0] == 0
    assert lists(r, app, 2) == (["question two?", "Question 2, again"], ["question 22"])
    assert run(capsys, "review", app, "--url", url, "--id", 2, "--answer", "right", "--score", 98,
               "--also", "")[0] == 0
    assert lists(r, app, 2) == ([], ["question 22"])
    # The --also question is served the reviewed answer.
    r.execute_command("LLM.REVIEW", app, 2, "--ANSWER", "right", "--SCORE", 98,
                      "--ALSO", "question two?")
    reply = r.execute_command("LLM.RUN", app, "--VERBOSE", "Question two")
    details = dict(zip(reply[0::2], reply[1::2]))
    assert (details[b"answer"], details[b"served_from"], details[b"served_review"]) == (
        b"right", b"review", 2)


def test_review_list_errors(r, url, app, capsys):
    code, _, err = run(capsys, "review", app, "--url", url, "--also", "q")
    assert code == 2 and "--also needs --id" in err
    code, _, err = run(capsys, "review", app, "--url", url, "--never", "q")
    assert code == 2 and "--never needs --id" in err
    code, _, err = run(capsys, "review", app, "--url", url, "--id", 1, "--answer", "x",
                       "--score", 90, "--lists")
    assert code == 2 and "--lists is for the interactive review" in err
    code, out, err = run(capsys, "review", app, "--url", url, "--id", 1, "--answer", "x",
                         "--score", 90, "--also", "q", "--also", "")
    assert (code, out) == (1, "") and err.startswith("redis-llm: ERR ") and "empty" in err
    many = [arg for n in range(33) for arg in ("--never", f"q{n}")]
    code, _, err = run(capsys, "review", app, "--url", url, "--id", 1, "--answer", "x",
                       "--score", 90, *many)
    assert code == 1 and "at most 32" in err
    assert result(r, app, 1)["reviewed_score"] == ""


def test_review_interactive_with_lists_asks_for_both_lists(r, app, server):
    client = server.client()
    # 3: answer kept, 95, no notes, two --also questions, one --never; 2: no
    # lists at all (empty lines); then quit at 1.
    script = ("\n95\n\nquestion three, reworded\n  Q3?  \n\nquestion thirty\n\n"
              "answer two\n90\nn\n\n\nq\n")
    out = io.StringIO()
    assert cli.review_interactive(client, app, io.StringIO(script), out, lists=True) == (2, 0)
    shown = out.getvalue()
    assert shown.count("Also answers these questions, one per line, an empty line ends "
                       "(empty: none):\n") == 2
    assert shown.count("Never serve it for, one per line, an empty line ends (empty: none):\n") == 2
    assert lists(r, app, 3) == (["question three, reworded", "Q3?"], ["question thirty"])
    assert result(r, app, 3)["reviewed_score"] == "95"
    assert lists(r, app, 2) == ([], []) and result(r, app, 2)["reviewed_answer"] == "answer two"
    assert result(r, app, 1)["reviewed_score"] == ""
    client.close()


def test_review_interactive_shows_the_current_lists_keeps_or_clears_them(r, app, server):
    # An unreviewed record that already has lists (copied with LLM.RESULT-SET).
    record = {"id": 7, "app": "app", "state": "done", "question": "where?", "answer": "there",
              "created_at": 1, "also": ["where is it?", "where exactly?"], "never": ["why?"]}
    assert r.execute_command("LLM.RESULT-SET", app, json.dumps(record)) == 1
    client = server.client()
    out = io.StringIO()
    # Keep the --also list (empty line first), clear the --never list ('-').
    cli.review_interactive(client, app, io.StringIO("\n96\n\n\n-\nq\n"), out, lists=True)
    shown = out.getvalue()
    assert "Also answers:\n  - where is it?\n  - where exactly?\nNever served for:\n  - why?\n" \
        in shown
    assert "(empty: keep the 2 above, '-' clears them):" in shown
    assert "(empty: keep the 1 above, '-' clears them):" in shown
    assert lists(r, app, 7) == (["where is it?", "where exactly?"], [])
    assert result(r, app, 7)["reviewed_score"] == "96"
    # Without --lists the lists are shown and kept, and the prompts are as before.
    record = {**record, "id": 8}
    r.execute_command("LLM.RESULT-SET", app, json.dumps(record))
    out = io.StringIO()
    assert cli.review_interactive(client, app, io.StringIO("\n96\n\nq\n"), out) == (1, 0)
    shown = out.getvalue()
    assert "Never served for:\n  - why?\n" in shown and "one per line" not in shown
    assert lists(r, app, 8) == (["where is it?", "where exactly?"], ["why?"])
    client.close()


def test_review_interactive_end_of_input_in_a_list_saves_nothing(r, app, server):
    client = server.client()
    assert cli.review_interactive(client, app, io.StringIO("\n95\nnotes\nq one\n"), io.StringIO(),
                                  lists=True) == (0, 0)
    assert cli.review_interactive(client, app, io.StringIO("\n95\nnotes\n\nnever\n"),
                                  io.StringIO(), lists=True) == (0, 0)
    assert [result(r, app, n)["reviewed_score"] for n in (1, 2, 3)] == ["", "", ""]
    client.close()


def test_review_interactive_with_lists_through_main(r, url, app, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n95\n\nquestion 3 again\n\n\nq\n"))
    code, out, _ = run(capsys, "review", app, "--url", url, "--lists")
    assert code == 0 and out.endswith("reviewed 1 record, skipped 0\n")
    assert lists(r, app, 3) == (["question 3 again"], [])


def test_export_includes_the_lists(r, url, app, capsys, tmp_path):
    r.execute_command("LLM.REVIEW", app, 2, "--ANSWER", "a2", "--SCORE", 97,
                      "--ALSO", 'question "two", reworded', "--ALSO", "q2?", "--NEVER", "q20")
    r.execute_command("LLM.REVIEW", app, 1, "--ANSWER", "a1", "--SCORE", 97, "--ALSO", "x",
                      "--NEVER", "y")
    r.execute_command("LLM.REVIEW", app, 1, "--ANSWER", "a1", "--SCORE", 97, "--ALSO", "",
                      "--NEVER", "")
    code, out, _ = run(capsys, "export", app, "--url", url)
    rows = {row["id"]: row for row in map(json.loads, out.splitlines())}
    assert (rows[2]["also"], rows[2]["never"]) == (['question "two", reworded', "q2?"], ["q20"])
    assert (rows[1]["also"], rows[1]["never"]) == ([], []) == (rows[3]["also"], rows[3]["never"])
    output = tmp_path / "out.csv"
    assert run(capsys, "export", app, "--url", url, "--format", "csv", "--output", output)[0] == 0
    with open(output, newline="") as f:
        rows = {row["id"]: row for row in csv.DictReader(f)}
    assert json.loads(rows["2"]["also"]) == ['question "two", reworded', "q2?"]
    assert rows["2"]["never"] == '["q20"]'
    assert (rows["1"]["also"], rows["1"]["never"], rows["3"]["also"]) == ("", "", "")
