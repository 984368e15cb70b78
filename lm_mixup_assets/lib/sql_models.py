"""A tiny dbt-like layer: ``*.sql`` files with a header, ``{{ ref() }}`` and ``{{ var() }}``.

Header lines at the top of a file (SQL comments) declare the model::

    -- description: Rated rows at or above the quality threshold.
    -- group: pool
    -- partitioned_by: source
    -- step: quality_split
    -- var: quality_threshold int 4 | What the threshold means (shown in the launchpad).

The body is one SELECT. ``{{ ref('rated_pool') }}`` names an upstream table
(an asset dependency); in a partitioned model it reads only the partition being
built. ``{{ var('quality_threshold') }}`` becomes a bound parameter, never
pasted text. ``{{ partition }}`` is the partition value as a parameter.

Models that name the same ``step`` are built together, in one transaction,
from one set of var values: a split into two tables (high / low quality) can
then never be built with two different thresholds (see ``group_steps``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_HEADER = re.compile(r"^--\s*(description|group|partitioned_by|var|kinds|step)\s*:\s*(.*?)\s*$")
_REF = re.compile(r"\{\{\s*ref\(\s*['\"]([A-Za-z_][A-Za-z0-9_]*)['\"]\s*\)\s*\}\}")
_VAR = re.compile(r"\{\{\s*var\(\s*['\"]([A-Za-z_][A-Za-z0-9_]*)['\"]\s*\)\s*\}\}")
_PARTITION = re.compile(r"\{\{\s*partition\s*\}\}")
_VAR_TYPES = {"int": int, "float": float, "str": str}


class SqlModelError(ValueError):
    pass


@dataclass
class SqlModel:
    name: str
    path: Path
    body: str
    description: str = ""
    group: str = "default"
    partitioned_by: str | None = None
    kinds: list[str] = field(default_factory=lambda: ["sql", "duckdb"])
    vars: dict[str, tuple[type, object]] = field(default_factory=dict)
    var_descriptions: dict[str, str] = field(default_factory=dict)
    # Models sharing a step are materialised together; None: a step of its own.
    step: str | None = None

    @property
    def refs(self) -> list[str]:
        return list(dict.fromkeys(_REF.findall(self.body)))

    def render(
        self, var_values: dict[str, object] | None = None, partition_value: str | None = None
    ) -> tuple[str, dict]:
        """Return (select_sql, named_params) for DuckDB."""
        values = {name: default for name, (_, default) in self.vars.items()}
        values.update(var_values or {})
        params: dict[str, object] = {}
        for name in _VAR.findall(self.body):
            if name not in self.vars:
                raise SqlModelError(
                    f"{self.path.name}: var {name!r} is used but not declared (-- var: {name} int <default>)"
                )
            kind = self.vars[name][0]
            try:
                params[f"var_{name}"] = kind(values[name])
            except (TypeError, ValueError):
                raise SqlModelError(f"{self.path.name}: var {name}={values[name]!r} is not a {kind.__name__}") from None
        if self.partitioned_by:
            if partition_value is None:
                raise SqlModelError(
                    f"{self.path.name} is partitioned by {self.partitioned_by}; a partition value is required"
                )
            params["partition"] = partition_value
            col = self.partitioned_by
            sql = _REF.sub(lambda m: f'(select * from "{m.group(1)}" where "{col}" = $partition)', self.body)
        else:
            sql = _REF.sub(lambda m: f'"{m.group(1)}"', self.body)
        sql = _VAR.sub(lambda m: f"$var_{m.group(1)}", sql)
        sql = _PARTITION.sub("$partition", sql)
        return sql.strip().rstrip(";"), params


def parse_model(path: Path) -> SqlModel:
    model = SqlModel(name=path.stem, path=path, body="")
    body_lines = []
    in_header = True
    for line in path.read_text(encoding="utf-8").splitlines():
        m = _HEADER.match(line) if in_header else None
        if m:
            key, value = m.groups()
            if key == "var":
                spec, _, description = value.partition("|")
                parts = spec.split(None, 2)
                if len(parts) != 3 or parts[1] not in _VAR_TYPES:
                    raise SqlModelError(
                        f"{path.name}: write vars as `-- var: name int|float|str default | description` (got {value!r})"
                    )
                kind = _VAR_TYPES[parts[1]]
                model.vars[parts[0]] = (kind, kind(parts[2].strip()))
                if description.strip():
                    model.var_descriptions[parts[0]] = description.strip()
            elif key == "kinds":
                model.kinds = [k.strip() for k in value.split(",") if k.strip()]
            else:
                setattr(model, key, value)
            continue
        if in_header and line.strip() and not line.lstrip().startswith("--"):
            in_header = False
        body_lines.append(line)
    model.body = "\n".join(body_lines)
    if not re.search(r"\bselect\b", model.body, re.IGNORECASE):
        raise SqlModelError(f"{path.name}: the model body must be a SELECT")
    return model


def load_models(folder: Path) -> list[SqlModel]:
    return [parse_model(p) for p in sorted(Path(folder).glob("*.sql"))]


@dataclass
class SqlStep:
    """One or more models built together from the same inputs and var values."""

    name: str
    models: list[SqlModel]

    @property
    def group(self) -> str:
        return self.models[0].group

    @property
    def partitioned_by(self) -> str | None:
        return self.models[0].partitioned_by

    @property
    def vars(self) -> dict[str, tuple[type, object]]:
        merged: dict[str, tuple[type, object]] = {}
        for model in self.models:
            merged.update(model.vars)
        return merged

    @property
    def var_descriptions(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for model in self.models:
            merged.update(model.var_descriptions)
        return merged


def group_steps(models: list[SqlModel]) -> list[SqlStep]:
    """Group models by ``step`` (in file order); a model without one is a step named after itself.

    Models of one step must agree on group, partitioning and every shared var's
    type and default, and must not read each other (they are built side by side).
    """
    steps: dict[str, SqlStep] = {}
    for model in models:
        name = model.step or model.name
        if name in steps and not model.step:
            raise SqlModelError(f"{model.path.name}: model {model.name!r} has the name of a step")
        steps.setdefault(name, SqlStep(name, [])).models.append(model)
    names = {m.name for m in models}
    for step in steps.values():
        if step.name in names and len(step.models) > 1:
            raise SqlModelError(f"step {step.name!r} has the name of a model; name steps apart from tables")
        first = step.models[0]
        members = {m.name for m in step.models}
        for model in step.models:
            where = f"{model.path.name} (step {step.name!r})"
            if (model.group, model.partitioned_by) != (first.group, first.partitioned_by):
                raise SqlModelError(
                    f"{where}: group/partitioned_by differ from {first.path.name}'s; one step has one of each"
                )
            if members & set(model.refs):
                raise SqlModelError(f"{where}: reads {sorted(members & set(model.refs))}, built in the same step")
            for var, spec in model.vars.items():
                other = next((m for m in step.models if var in m.vars and m.vars[var] != spec), None)
                if other is not None:
                    raise SqlModelError(
                        f"{where}: var {var} is {spec[0].__name__} {spec[1]!r} here but "
                        f"{other.vars[var][0].__name__} {other.vars[var][1]!r} in {other.path.name}"
                    )
    return list(steps.values())


def materialise_model(con, model: SqlModel, var_values: dict | None = None, partition_value: str | None = None) -> int:
    """Run the model in one transaction: replace its partition (or whole table) with the SELECT's rows."""
    return materialise_step(con, [model], var_values, partition_value)[model.name]


def materialise_step(
    con,
    models: list[SqlModel],
    var_values: dict | None = None,
    partition_value: str | None = None,
    in_transaction: bool = False,
) -> dict[str, int]:
    """Replace every model's partition (or whole table) in ONE transaction, with the same var values.

    Either all tables change or none does. Returns rows per table (in the partition).
    ``in_transaction``: the caller holds the transaction and commits it.
    """
    rendered = [(model, *model.render(var_values, partition_value)) for model in models]
    counts: dict[str, int] = {}
    if not in_transaction:
        con.execute("begin transaction")
    try:
        for model, sql, params in rendered:
            table = model.name
            con.execute(f'create table if not exists "{table}" as select * from ({sql}) limit 0', params)
            if model.partitioned_by:
                con.execute(
                    f'delete from "{table}" where "{model.partitioned_by}" = $partition', {"partition": partition_value}
                )
            else:
                con.execute(f'delete from "{table}"')
            con.execute(f'insert into "{table}" by name select * from ({sql})', params)
            counts[table] = int(
                con.execute(
                    f'select count(*) from "{table}"'
                    + (f' where "{model.partitioned_by}" = $partition' if model.partitioned_by else ""),
                    {"partition": partition_value} if model.partitioned_by else {},
                ).fetchall()[0][0]
            )
        if not in_transaction:
            con.execute("commit")
    except Exception:
        con.execute("rollback")
        raise
    return counts
