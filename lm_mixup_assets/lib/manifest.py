"""The pool manifest: which source datasets make up the pool, and how to read each.

A manifest is YAML with a ``sources`` mapping; each key is a partition of the
pool assets. An entry names exactly one of:

- ``builtin``: an offline demo source shipped in a PyPI package
  (``chatterbot``, ``chitchat``, ``humaneval``);
- ``path``: a local JSONL / JSON / Parquet / CSV file (format from the
  extension, or ``format:``);
- ``hf``: a Hugging Face dataset id (``split`` defaults to ``train``).

Optional for every entry: ``filter: {column, value}``, ``fields`` (map our
names ``prompt``/``completion``/``instruction``/``input``/``output``/``messages``
to the file's column names), ``limit`` (first N input rows), ``description``,
and ``precomputed``: ratings that already exist, recorded by ``rated_pool`` as a
``precomputed`` judge instead of calling one (docs/method.md, "Precomputed
ratings")::

    precomputed:
      judge_model: "gpt-4o-mini (DS2 release)"   # required: recorded as judge_model
      rubric_version: ds2                        # optional: the rubric they were made with
      # either columns of the source (a dotted name reaches into nested objects) ...
      scores: {overall: gpt_overall, rarity: gpt_rarity}
      # ... or a file of scores aligned with the source's records (entry N = position N)
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
from dataclasses import dataclass, field
from pathlib import Path

import yaml

BUILTIN_MANIFESTS = {"demo", "paper"}
BUILTIN_SOURCES = {"chatterbot", "chitchat", "humaneval"}
FILE_FORMATS = {"jsonl", "json", "parquet", "csv"}
FIELD_NAMES = {"prompt", "completion", "instruction", "input", "output", "messages"}
PRECOMPUTED_SCORE_NAMES = ("rarity", "complexity", "informativeness", "overall", "overall_compressed")
PRECOMPUTED_FILE_HOLDS = ("overall", "overall_compressed", "all_four")
PRECOMPUTED_FILE_FORMATS = {".json", ".pt"}
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
    filter_value: object = None
    fields: dict = field(default_factory=dict)
    limit: int | None = None
    description: str = ""
    precomputed: PrecomputedSpec | None = None

    @property
    def origin(self) -> str:
        return self.builtin and f"builtin:{self.builtin}" or self.path or f"hf:{self.hf}"


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
        raise ManifestError(f"pool manifest not found: {path} (set LM_MIXUP_POOL_MANIFEST to a YAML file, or 'demo'/'paper')")
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
    unknown = set(entry) - {"builtin", "path", "hf", "format", "split", "filter", "fields", "limit", "description",
                            "precomputed"}
    if unknown:
        raise ManifestError(f"{where}: unknown keys {sorted(unknown)}")
    if entry.get("builtin") and entry["builtin"] not in BUILTIN_SOURCES:
        raise ManifestError(f"{where}: unknown builtin {entry['builtin']!r}; known: {sorted(BUILTIN_SOURCES)}")
    path = entry.get("path")
    fmt = entry.get("format")
    if path:
        path_obj = Path(str(path)).expanduser()
        if not path_obj.is_absolute():  # relative paths are relative to the manifest file
            path_obj = manifest_path.parent / path_obj
        path = str(path_obj)
        fmt = fmt or _format_from_suffix(path_obj)
        if fmt not in FILE_FORMATS:
            raise ManifestError(f"{where}: cannot tell the format of {path}; set `format:` to one of {sorted(FILE_FORMATS)}")
    flt = entry.get("filter") or {}
    if flt and (not isinstance(flt, dict) or "column" not in flt or "value" not in flt):
        raise ManifestError(f"{where}: `filter` needs `column` and `value`")
    fields = entry.get("fields") or {}
    if not isinstance(fields, dict) or set(fields) - FIELD_NAMES:
        raise ManifestError(f"{where}: `fields` maps {sorted(FIELD_NAMES)} to column names")
    limit = entry.get("limit")
    if limit is not None and (not isinstance(limit, int) or limit <= 0):
        raise ManifestError(f"{where}: `limit` must be a positive integer")
    return SourceSpec(
        name=name,
        builtin=entry.get("builtin"),
        path=path,
        hf=entry.get("hf"),
        format=fmt,
        split=str(entry.get("split") or "train"),
        filter_column=flt.get("column"),
        filter_value=flt.get("value"),
        fields=dict(fields),
        limit=limit,
        description=str(entry.get("description") or ""),
        precomputed=_parse_precomputed(entry.get("precomputed"), where, manifest_path),
    )


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
            raise ManifestError(f"{where}: `scores` needs exactly one of `overall` (1-10) or `overall_compressed` (0-5)")
        for name, column in columns.items():
            if not isinstance(column, str) or not column.strip():
                raise ManifestError(f"{where}: the column for {name!r} must be a non-empty string")
        return PrecomputedSpec(judge_model=judge_model.strip(), rubric_version=rubric_version.strip(),
                               columns={str(k): v for k, v in columns.items()})
    spec = entry["scores_file"]
    if not isinstance(spec, dict) or set(spec) != {"path", "holds"}:
        raise ManifestError(f"{where}: `scores_file` needs `path` and `holds` ({'/'.join(PRECOMPUTED_FILE_HOLDS)})")
    if spec["holds"] not in PRECOMPUTED_FILE_HOLDS:
        raise ManifestError(f"{where}: `holds` must be one of {list(PRECOMPUTED_FILE_HOLDS)}, got {spec['holds']!r}")
    path = Path(str(spec["path"])).expanduser()
    if not path.is_absolute():
        path = manifest_path.parent / path
    if path.suffix.lower() not in PRECOMPUTED_FILE_FORMATS:
        raise ManifestError(f"{where}: `scores_file` must end in one of {sorted(PRECOMPUTED_FILE_FORMATS)}, got {path.name}")
    return PrecomputedSpec(judge_model=judge_model.strip(), rubric_version=rubric_version.strip(),
                           scores_file=str(path), file_holds=spec["holds"])


def _format_from_suffix(path: Path) -> str | None:
    suffixes = [s.lower().lstrip(".") for s in path.suffixes]
    for s in reversed(suffixes):
        if s in FILE_FORMATS:
            return s
        if s == "ndjson":
            return "jsonl"
    return None
