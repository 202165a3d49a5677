"""One data file's records, as written, each checked where it is read.

CSV fields are strings and nothing else: ``002`` stays ``002``, ``None``, ``NA`` and an empty field
stay text (no type is ever guessed). JSON values are what the file says, and a prompt or an answer
must be text there: a number, ``NaN``, ``Infinity``, ``true`` or ``null`` is refused, naming the file
and the line, rather than trained as the string Python would make of it. An answer may be an
integer (a class id of a classification task, read back exactly as written); a margin must be a
finite number. ``data.columns`` renames a record's columns before anything reads them.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Callable, Optional

from peftlab.errors import DataError

WHERE = "__where__"  # each record remembers its file and line, for errors about it later
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
# the data keys whose values are text (data.<key> names the field)
TEXT_KEYS = ("prompt_field", "response_field", "chosen_field", "rejected_field")
NUMBER_KEYS = ("margin_field",)
Accept = Callable[[dict[str, Any], str], dict[str, Any]]  # (record as read, where) -> the record kept


def shown(value: Any) -> str:
    """A value as the error names it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return repr(value)
    return {"list": "a list", "dict": "an object"}.get(type(value).__name__, f"a {type(value).__name__}")


def _finite(value: Any) -> bool:
    if isinstance(value, str):  # a CSV field: the task parses it, but never into NaN or infinity
        try:
            return math.isfinite(float(value))
        except ValueError:
            return True
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def renamed(row: dict[str, Any], columns: Optional[dict[str, str]], where: str) -> dict[str, Any]:
    """``row`` with its columns renamed by ``columns`` (``data.columns``: column -> field name)."""
    if not columns:
        return row
    for source, target in columns.items():
        if source not in row:
            present = ", ".join(map(str, row))
            raise DataError(f"{where}: missing column {source!r} (data.columns renames it to {target!r}; fields "
                            f"present: {present})")
        if target in row and target not in columns:
            raise DataError(f"{where}: data.columns renames {source!r} to {target!r}, a field the record holds "
                            "already")
    return {columns.get(key, key): value for key, value in row.items()}


def check_record(row: dict[str, Any], fields: dict[str, str], where: str) -> None:
    """Every field of ``fields`` (data key -> field name) present, not null, and of its kind."""
    for key, field in fields.items():
        if field not in row:
            present = ", ".join(map(str, row))
            raise DataError(f"{where}: missing field {field!r} (data.{key}; fields present: {present})")
        value = row[field]
        if value is None:
            raise DataError(f"{where}: field {field!r} is null (data.{key})")
        if key in TEXT_KEYS and not isinstance(value, str) and not (
                key == "response_field" and isinstance(value, int) and not isinstance(value, bool)):
            raise DataError(f"{where}: field {field!r} holds {shown(value)}, not text (data.{key}; in JSON, "
                            "text is written in quotes)")
        if key in NUMBER_KEYS and not _finite(value):
            raise DataError(f"{where}: field {field!r} holds {shown(value)}, not a finite number (data.{key})")


def _decode(raw: bytes, path: Path, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path} line {lineno}: not UTF-8 text (byte {raw[err.start]:#04x} at column "
                        f"{err.start + 1}); save the file as UTF-8") from None


def _text(path: Path) -> str:
    """The whole file as text; bytes that are not UTF-8 are refused naming their line."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        lineno = raw[:err.start].count(b"\n") + 1
        _decode(raw.splitlines()[lineno - 1], path, lineno)
        raise


def accepting(fields: dict[str, str], columns: Optional[dict[str, str]] = None) -> Accept:
    """What every record read goes through: ``data.columns`` renames its columns, then it must hold
    ``fields`` (data key -> field name); the record kept remembers where it was read."""

    def accept(row: dict[str, Any], where: str) -> dict[str, Any]:
        row = renamed(row, columns, where)
        check_record(row, fields, where)
        return {**row, WHERE: where}

    return accept


def read_jsonl(path: Path, accept: Accept) -> list[dict[str, Any]]:
    rows = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = _decode(raw, path, lineno)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path} line {lineno}: malformed JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path} line {lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append(accept(row, f"{path} line {lineno}"))
    return rows


def _element_lines(text: str) -> Optional[list[int]]:
    """The line each element of the file's list starts on (a list, or ``{"key": [...]}``); None for
    any other shape. The text is known to be valid JSON."""
    decoder, blank = json.JSONDecoder(), " \t\r\n"

    def skip(i: int) -> int:
        while i < len(text) and text[i] in blank:
            i += 1
        return i

    i = skip(0)
    if text.startswith("{", i):
        _, i = decoder.raw_decode(text, skip(i + 1))  # the one key
        i = skip(skip(i) + 1)  # past the colon
    if not text.startswith("[", i):
        return None
    lines, line, seen, i = [], 1, 0, skip(i + 1)
    while not text.startswith("]", i):
        line, seen = line + text.count("\n", seen, i), i
        lines.append(line)
        _, i = decoder.raw_decode(text, i)
        i = skip(i)
        i = skip(i + 1) if text.startswith(",", i) else i
    return lines


def _read_json(path: Path, accept: Accept) -> list[dict[str, Any]]:
    text = _text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # JSON lines in a .json file
            return read_jsonl(path, accept)
        raise DataError(f"{path} line {err.lineno}: malformed JSON ({err.msg} at column {err.colno})") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]}
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError(f"{path}: expected a list of JSON objects (or one object per line)")
    lines = _element_lines(text) or []
    wheres = ([f"{path} line {n}" for n in lines] if len(lines) == len(data)
              else [f"{path} record {i + 1}" for i in range(len(data))])
    return [accept(row, where) for row, where in zip(data, wheres, strict=True)]


def _read_csv(path: Path, accept: Accept) -> list[dict[str, Any]]:
    """Every field a string, as written (the csv module; no type is guessed)."""
    text = _text(path).removeprefix("\ufeff")  # the byte-order mark spreadsheets write
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))  # a long prompt is no error
    reader = csv.reader(io.StringIO(text, newline=""))
    rows, wheres = [], []
    try:
        header = next(reader, None)
        if header is None:
            return []
        twice = next((name for i, name in enumerate(header) if name in header[:i]), None)
        if twice is not None:
            raise DataError(f"{path} line 1: the column {twice!r} is named twice")
        start = reader.line_num + 1
        for cells in reader:
            lineno, start = start, reader.line_num + 1
            if not cells:  # a blank line
                continue
            if len(cells) != len(header):
                raise DataError(f"{path} line {lineno}: {len(cells)} fields, but the header names {len(header)}")
            rows.append(dict(zip(header, cells, strict=True)))
            wheres.append(f"{path} line {lineno}")
    except csv.Error as err:
        raise DataError(f"{path} line {reader.line_num}: not readable as CSV ({err})") from None
    return [accept(row, where) for row, where in zip(rows, wheres, strict=True)]


def _read_parquet(path: Path, accept: Accept) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: cannot read as parquet: {str(err).splitlines()[0]}") from None
    return [accept(row, f"{path} row {i + 1}") for i, row in enumerate(rows)]


def read_file(path: Path, fields: dict[str, str], columns: Optional[dict[str, str]] = None) -> list[dict[str, Any]]:
    """The records of one file; ``data.columns`` (``columns``) renames their columns, and every record
    must then hold ``fields`` (data key -> field name)."""
    readers = {".jsonl": read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unsupported file type {path.suffix.lower()!r} (use one of {', '.join(SUFFIXES)})")
    return reader(path, accepting(fields, columns))
