"""The authors' released MIXTURE read into rows of our ``mixture`` table (docs/method.md, MIXTURE).

Pure Python; no Dagster.  The release is the Hugging Face dataset ``dokiik/MIXTURE``;
a local folder in the same layout works the same way (and offline):

``data_sft/<tag>/merged_<split>_<tag>_noisy.json``
    ``<tag>`` one of ``qa``, ``mcq``, ``tfq``, ``cs``, ``para``; ``<split>`` ``train`` or
    ``test``.  A JSON list of ``{"instruction", "input", "output", "cot"}``.  The files
    may also sit directly in ``data_sft/`` (no per-task folder), and the path given
    may be the ``data_sft`` folder itself (the reference's ``sft/data`` copy).
``data_grpo/train.json``, ``data_grpo/test.json``
    A JSON list of ``{"input", "output", "task_type"}`` with ``task_type`` ``<tag>_mixup``.

Task spellings of the release map onto ours (``TASK_TYPES``): ``para`` / ``para_mixup``
is ``paragraph``; the others keep their names.  Every row keeps its lineage: the file
(relative to the release root), its 0-based position in that file's list, and the
task spelling as released.

``input`` of a row is the user turn the reference's SFT script builds
(``instruction + "\\n" + input``; either alone when the other is empty), so the
training stage, which uses ``input`` as the user turn when it starts with the
instruction, sees the same text the authors trained on.  ``n_variants`` is inferred
(the release does not list the variants): the number of blank-line-separated
blocks of the released ``input``.

``hf:<owner>/<name>`` paths are downloaded once with ``huggingface_hub`` (a
dependency of ``datasets``) into its cache; that needs network unless the files are
cached already.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .mixture_tasks import TASK_TYPES

__all__ = [
    "HF_PREFIX",
    "RELEASED_PARTS",
    "ReleaseFile",
    "ReleasedMixture",
    "task_from_released",
    "count_variant_blocks",
    "reference_user_turn",
    "resolve_release_root",
    "find_release_files",
    "read_release_file",
    "load_released_mixture",
]

HF_PREFIX = "hf:"
RELEASED_PARTS = ("data_sft", "data_grpo")
SPLITS = ("train", "test")

# The release spells paragraph "para" (folder names and task_type "para_mixup").
_RELEASED_TO_OURS = {"qa": "qa", "mcq": "mcq", "tfq": "tfq", "cs": "cs", "para": "paragraph", "paragraph": "paragraph"}
_SFT_NAME_RE = re.compile(r"^merged_(train|test)_([a-z]+)_noisy\.json$")


def task_from_released(name: str) -> str:
    """Our task type for a released spelling: ``para`` / ``para_mixup`` -> ``paragraph``,
    ``qa_mixup`` -> ``qa``; anything else raises ``ValueError``."""
    key = str(name or "").strip().lower().removesuffix("_mixup")
    if key not in _RELEASED_TO_OURS:
        raise ValueError(
            f"unknown released task type {name!r}; expected one of "
            f"{sorted(set(_RELEASED_TO_OURS) - {'paragraph'})} (optionally with '_mixup')"
        )
    task = _RELEASED_TO_OURS[key]
    assert task in TASK_TYPES
    return task


def count_variant_blocks(text: str) -> int:
    """Non-empty blocks of ``text`` separated by blank lines (how the variants of a
    cluster are joined); the inferred ``n_variants`` of a released row."""
    return sum(1 for block in re.split(r"\n\s*\n", text or "") if block.strip())


def reference_user_turn(instruction: str, inp: str) -> str:
    """The user message of the reference's SFT and evaluation scripts: instruction and
    input joined by one newline, or whichever of the two is non-empty."""
    instruction, inp = (instruction or "").strip(), (inp or "").strip()
    if instruction and inp:
        return f"{instruction}\n{inp}"
    return instruction or inp


@dataclass(frozen=True)
class ReleaseFile:
    path: Path
    relative: str  # e.g. "data_sft/qa/merged_train_qa_noisy.json"
    split: str  # train | test
    tag: str | None  # the task tag of a data_sft file; None for data_grpo (per row)


@dataclass
class ReleasedMixture:
    rows: list[dict[str, Any]]
    rejects: list[dict[str, Any]]  # {"origin_file", "origin_row", "reason"}
    files: list[ReleaseFile]
    label: str  # where it came from: a local path or "hf:<repo>@<revision>"
    part: str
    per_file: dict[str, int] = field(default_factory=dict)  # rows read per file


def resolve_release_root(path: str) -> tuple[Path, str]:
    """(local folder, label) for a local path or ``hf:<owner>/<name>[@revision]``."""
    path = (path or "").strip()
    if not path:
        raise ValueError(
            "no released MIXTURE path: give a local folder in the dokiik/MIXTURE layout or hf:dokiik/MIXTURE"
        )
    if not path.startswith(HF_PREFIX):
        root = Path(path).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"released MIXTURE folder {root} does not exist")
        return root.resolve(), str(root.resolve())
    repo, _, revision = path[len(HF_PREFIX) :].partition("@")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - datasets brings it
        raise ImportError("reading hf: paths needs huggingface_hub (installed with `datasets`)") from exc
    try:
        local = snapshot_download(
            repo_id=repo,
            repo_type="dataset",
            revision=revision or None,
            allow_patterns=[f"{p}/**" for p in RELEASED_PARTS],
        )
    except Exception as exc:  # offline, unknown repo, auth: say which and why
        raise FileNotFoundError(
            f"could not fetch the dataset {repo!r} from the Hugging Face hub "
            f"({type(exc).__name__}: {exc}); download it once while online or point "
            f"released_path at a local copy"
        ) from None
    local_path = Path(local)
    # snapshot folders are named by the commit they hold
    return local_path, f"{HF_PREFIX}{repo}@{local_path.name}"


def _part_folder(root: Path, part: str) -> Path:
    """The folder holding ``part``: ``root/part`` or, when ``root`` is that folder already, ``root``."""
    return root / part if (root / part).is_dir() else root


def find_release_files(root: Path, part: str = "data_sft") -> list[ReleaseFile]:
    """The files of one part of a release under ``root``, in a stable order (task, split)."""
    if part not in RELEASED_PARTS:
        raise ValueError(f"released part must be one of {RELEASED_PARTS}, got {part!r}")
    base = _part_folder(root, part)
    files: list[ReleaseFile] = []
    if part == "data_sft":
        for path in sorted(base.rglob("merged_*_noisy.json")):
            m = _SFT_NAME_RE.match(path.name)
            if not m:
                continue
            task_from_released(m.group(2))  # an unknown tag is an error, not a skipped file
            files.append(ReleaseFile(path, path.relative_to(root).as_posix(), m.group(1), m.group(2)))
        seen: dict[tuple[str, str], str] = {}
        for f in files:
            key = (f.tag, f.split)
            if key in seen:
                raise ValueError(
                    f"two released files for task {f.tag!r}, split {f.split!r}: {seen[key]} and {f.relative}"
                )
            seen[key] = f.relative
    else:
        for split in SPLITS:
            path = base / f"{split}.json"
            if path.is_file():
                files.append(ReleaseFile(path, path.relative_to(root).as_posix(), split, None))
    if not files:
        pattern = "<task>/merged_<split>_<task>_noisy.json" if part == "data_sft" else "train.json / test.json"
        raise FileNotFoundError(f"no released MIXTURE files ({part}: {pattern}) under {base}")
    return files


def _load_json_list(path: Path, relative: str) -> list:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{relative}: not valid JSON ({exc})") from None
    if not isinstance(data, list):
        raise ValueError(f"{relative}: expected a JSON list of records, got {type(data).__name__}")
    return data


def _text(record: dict, key: str) -> str:
    value = record.get(key)
    return "" if value is None else str(value)


def read_release_file(f: ReleaseFile) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rows, rejects) of one released file.  A row without ``output`` or ``input``, a
    record that is not an object, or an unknown ``task_type`` is rejected with its
    position and the reason (the reference's SFT script also drops empty outputs)."""
    rows, rejects = [], []
    for i, record in enumerate(_load_json_list(f.path, f.relative)):

        def reject(reason: str, row: int = i) -> None:
            rejects.append({"origin_file": f.relative, "origin_row": row, "reason": reason})

        if not isinstance(record, dict):
            reject(f"record is a {type(record).__name__}, not an object")
            continue
        raw_task = f.tag if f.tag is not None else _text(record, "task_type")
        try:
            task = task_from_released(raw_task)
        except ValueError as exc:
            reject(str(exc))
            continue
        inp, output = _text(record, "input").strip(), _text(record, "output").strip()
        if not output:
            reject("empty output")
            continue
        if not inp:
            reject("empty input")
            continue
        instruction = _text(record, "instruction").strip()
        rows.append(
            {
                "task": task,
                "split": f.split,
                "instruction": instruction,
                "input": reference_user_turn(instruction, inp),
                "output": output,
                "cot": _text(record, "cot").strip(),
                "n_variants": count_variant_blocks(inp),
                "origin_file": f.relative,
                "origin_row": i,
                "origin_task_type": raw_task,
            }
        )
    return rows, rejects


def _row_id(label_free_file: str, row: int, inp: str, output: str) -> str:
    # Position and content: a re-release that edits a row gets a new id.
    raw = "\x1f".join(["released", label_free_file, str(row), inp, output])
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:16]


def load_released_mixture(
    path: str, part: str = "data_sft", tasks: tuple[str, ...] | list[str] | None = None
) -> ReleasedMixture:
    """Every row of one part of the release at ``path`` (a folder or ``hf:<repo>``),
    with ``example_id`` and lineage; ``tasks`` keeps only those task types."""
    root, label = resolve_release_root(path)
    files = find_release_files(root, part)
    wanted = set(tasks) if tasks else set(TASK_TYPES)
    unknown = wanted - set(TASK_TYPES)
    if unknown:
        raise ValueError(f"tasks must be from {TASK_TYPES}, got {sorted(unknown)}")
    rows, rejects, per_file = [], [], {}
    for f in files:
        if f.tag is not None and task_from_released(f.tag) not in wanted:
            continue
        file_rows, file_rejects = read_release_file(f)
        file_rows = [r for r in file_rows if r["task"] in wanted]
        for r in file_rows:
            r["example_id"] = _row_id(r["origin_file"], r["origin_row"], r["input"], r["output"])
        rows.extend(file_rows)
        rejects.extend(file_rejects)
        per_file[f.relative] = len(file_rows)
    return ReleasedMixture(rows=rows, rejects=rejects, files=files, label=label, part=part, per_file=per_file)
