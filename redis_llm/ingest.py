"""Reading documents for ``redis-llm ingest``: files to (text, meta) items.

Supported files (by extension, case-insensitive):

* ``.txt``, ``.text``, ``.md``, ``.markdown``: UTF-8 text (a BOM is dropped,
  undecodable bytes become U+FFFD), cut into chunks; meta ``{"chunk": n}``.
* ``.csv`` (comma) and ``.tsv`` (tab), the first row being the header:
  ``row`` mode gives an item per data row, rendered as ``column: value``
  lines (empty values left out), meta ``{"row": n}`` with n counted from 1
  at the first data row (rows with no value give no item but keep their
  number); ``chunk`` mode renders every row that way, joins them with blank
  lines and cuts the text into chunks, meta ``{"chunk": n}``.
* ``.parquet`` (needs pyarrow): rows as for CSV.
* ``.pdf`` (needs pypdf): the text of each page, cut into one or more
  chunks, meta ``{"page": n}`` with n counted from 1.

A row longer than the chunk size is cut into chunks that share its meta.
Chunks hold at most ``chunk_size`` characters and are cut at a paragraph
break, else a line break, else a sentence end, else a space, else mid-word;
consecutive chunks share about ``overlap`` characters (the next chunk starts
at a word boundary within the overlap). Chunks are stripped of surrounding
white space and empty ones are dropped, so empty files give no item.

Item ids (see :func:`item_id`) are derived from the source and the item's
position in it, so that ingesting a file again replaces its items.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

TEXT_SUFFIXES = {".txt", ".text", ".md", ".markdown"}
TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t"}
SUFFIXES = TEXT_SUFFIXES | set(TABLE_SUFFIXES) | {".pdf", ".parquet"}
# Packages some file types need: suffix -> (module, what to install).
OPTIONAL = {".pdf": ("pypdf", "pypdf"), ".parquet": ("pyarrow.parquet", "pyarrow")}

# ---- ids ---------------------------------------------------------------------
#
# id = 1 << 63 | sha256(source)[top 43 bits] << 20 | index
#
# * The top bit keeps ingested ids away from the ids a store hands out itself
#   (a counter from 1), so ingested and LLM.ADD-ed items never collide.
# * 43 bits of the source's hash: two sources share a prefix with probability
#   about n^2 / 2^44 for n sources (1 in 300,000 for 10,000 files). The CLI
#   checks the sources already in the manifest and refuses such a collision.
# * 20 bits of index: at most 2^20 (1,048,576) items per source.

INDEX_BITS = 20
MAX_ITEMS_PER_SOURCE = 1 << INDEX_BITS
_HASH_BITS = 63 - INDEX_BITS


class IngestError(Exception):
    """A file that cannot be read, or options that make no sense."""


def source_prefix(source: str) -> int:
    """The id of a source's item 0: its items are prefix + index."""
    digest = int.from_bytes(hashlib.sha256(source.encode("utf-8", "surrogateescape")).digest()[:8], "big")
    return (1 << 63) | (digest >> (64 - _HASH_BITS)) << INDEX_BITS


def item_id(source: str, index: int) -> int:
    """The id of the item at ``index`` (from 0) of ``source``."""
    if not 0 <= index < MAX_ITEMS_PER_SOURCE:
        raise IngestError(f"{source}: more than {MAX_ITEMS_PER_SOURCE} items from one file")
    return source_prefix(source) | index


# ---- finding files -----------------------------------------------------------

def find_files(paths: Iterable[str]) -> list[Path]:
    """The files to ingest: files given (any supported type), and the
    supported files under directories given, walked recursively in name
    order, hidden files and directories (``.name``) left out. Each file once,
    as an absolute path (symlinks resolved)."""
    found: list[Path] = []
    seen: set[Path] = set()

    def take(path: Path) -> None:
        path = path.resolve()
        if path not in seen:
            seen.add(path)
            found.append(path)

    for given in paths:
        path = Path(given)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith(".") and Path(name).suffix.lower() in SUFFIXES:
                        take(Path(root) / name)
        elif path.is_file():
            if path.suffix.lower() not in SUFFIXES:
                raise IngestError(f"{given}: unsupported file type (supported: "
                                  f"{', '.join(sorted(SUFFIXES))})")
            take(path)
        elif path.exists():
            raise IngestError(f"{given}: not a regular file or directory")
        else:
            raise IngestError(f"{given}: no such file or directory")
    return found


def check_dependencies(files: Iterable[Path]) -> None:
    """Fail before anything is written if a file needs a package that is missing."""
    for suffix in sorted({path.suffix.lower() for path in files}):
        if suffix in OPTIONAL:
            module, package = OPTIONAL[suffix]
            _require(module, package, suffix)


def _require(module: str, package: str, suffix: str):
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise IngestError(f"reading {suffix} files needs the {package} package: "
                          f"pip install {package}") from None


# ---- chunking ----------------------------------------------------------------

_BREAKS = ("\n\n", "\n", ". ", "? ", "! ", " ")


def chunk_text(text: str, chunk_size: int = 1000, overlap: int = 200) -> list[str]:
    """Cut text into chunks of at most ``chunk_size`` characters that overlap
    by about ``overlap`` characters (see the module's doc)."""
    if chunk_size < 1:
        raise IngestError("the chunk size must be at least 1")
    if not 0 <= overlap < chunk_size:
        raise IngestError("the overlap must be from 0 to the chunk size - 1")
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    chunks: list[str] = []
    start, n = 0, len(text)
    while True:
        while start < n and text[start].isspace():
            start += 1
        if start >= n:
            break
        end = min(start + chunk_size, n)
        if end < n:
            end = _break(text, start, end, chunk_size, overlap)
        chunk = text[start:end].strip()
        if chunk:
            chunks.append(chunk)
        if end >= n:
            break
        start = _next_start(text, start, end, overlap)
    return chunks


def _break(text: str, start: int, end: int, chunk_size: int, overlap: int) -> int:
    """Where to end a full chunk: after the last break in its second half
    (and past the overlap, so that every chunk moves on)."""
    low = start + max(chunk_size // 2, overlap + 1)
    if low >= end:
        return end
    for sep in _BREAKS:
        at = text.rfind(sep, low, end)
        if at != -1:
            return at + len(sep)
    return end


def _next_start(text: str, start: int, end: int, overlap: int) -> int:
    """The next chunk's start: ``overlap`` characters back from ``end``,
    moved forward to a word start when one lies before ``end``."""
    if not overlap:
        return end
    at = max(end - overlap, start + 1)
    if not text[at - 1].isspace():
        for i in range(at, end):
            if text[i].isspace():
                return i + 1
    return at


# ---- readers -----------------------------------------------------------------

Item = tuple[str, dict]  # (data, meta without the source)


def read_items(path: Path, chunk_size: int = 1000, overlap: int = 200,
               csv_mode: str = "row") -> Iterator[Item]:
    """The items of a file, in order."""
    if csv_mode not in ("row", "chunk"):
        raise IngestError(f"unknown CSV mode {csv_mode!r} (row or chunk)")
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return _chunked(_read_text(path), chunk_size, overlap)
    if suffix in TABLE_SUFFIXES:
        return _table(_csv_rows(path, TABLE_SUFFIXES[suffix]), chunk_size, overlap, csv_mode)
    if suffix == ".parquet":
        return _table(_parquet_rows(path), chunk_size, overlap, csv_mode)
    if suffix == ".pdf":
        return _pdf(path, chunk_size, overlap)
    raise IngestError(f"{path}: unsupported file type")


def _read_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8-sig", "replace")


def _chunked(text: str, chunk_size: int, overlap: int) -> Iterator[Item]:
    for n, chunk in enumerate(chunk_text(text, chunk_size, overlap), 1):
        yield chunk, {"chunk": n}


def render_row(row: Iterable[tuple[str, object]]) -> str:
    """A row as ``column: value`` lines, empty values left out."""
    lines = []
    for name, value in row:
        if value is None:
            continue
        value = str(value).strip()
        if value:
            lines.append(f"{name}: {value}")
    return "\n".join(lines)


def _table(rows: Iterator[list[tuple[str, object]]], chunk_size: int, overlap: int,
           mode: str) -> Iterator[Item]:
    if mode == "chunk":
        text = "\n\n".join(filter(None, (render_row(row) for row in rows)))
        yield from _chunked(text, chunk_size, overlap)
        return
    for n, row in enumerate(rows, 1):
        for chunk in chunk_text(render_row(row), chunk_size, overlap):
            yield chunk, {"row": n}


def _csv_rows(path: Path, delimiter: str) -> Iterator[list[tuple[str, object]]]:
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            return
        header = [name.strip() or f"column {i}" for i, name in enumerate(header, 1)]
        for values in reader:
            names = header + [f"column {i}" for i in range(len(header) + 1, len(values) + 1)]
            yield list(zip(names, values))


def _parquet_rows(path: Path) -> Iterator[list[tuple[str, object]]]:
    pq = _require("pyarrow.parquet", "pyarrow", ".parquet")
    parquet = pq.ParquetFile(path)
    for batch in parquet.iter_batches():
        names = batch.schema.names
        for row in batch.to_pylist():
            yield [(name, row[name]) for name in names]


def _pdf(path: Path, chunk_size: int, overlap: int) -> Iterator[Item]:
    pypdf = _require("pypdf", "pypdf", ".pdf")
    try:
        reader = pypdf.PdfReader(path)
        if reader.is_encrypted:
            reader.decrypt("")
        pages = list(reader.pages)
    except Exception as exc:  # noqa: BLE001  (pypdf raises many kinds on bad files)
        raise IngestError(f"{path}: cannot read the PDF: {exc}") from None
    for n, page in enumerate(pages, 1):
        try:
            text = page.extract_text() or ""
        except Exception as exc:  # noqa: BLE001
            raise IngestError(f"{path}: cannot read the text of page {n}: {exc}") from None
        for chunk in chunk_text(text, chunk_size, overlap):
            yield chunk, {"page": n}
