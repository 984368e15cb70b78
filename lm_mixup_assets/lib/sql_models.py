"""A tiny dbt-like layer: ``*.sql`` files with a header, ``{{ ref() }}`` and ``{{ var() }}``.

Header lines at the top of a file (SQL comments) declare the model::

    -- description: Rated rows at or above the quality threshold.
    -- group: pool
    -- partitioned_by: source
    -- var: quality_threshold int 4

The body is one SELECT. ``{{ ref('rated_pool') }}`` names an upstream table
(an asset dependency); in a partitioned model it reads only the partition being
built. ``{{ var('quality_threshold') }}`` becomes a bound parameter, never
pasted text. ``{{ partition }}`` is the partition value as a parameter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_HEADER = re.compile(r"^--\s*(description|group|partitioned_by|var|kinds)\s*:\s*(.*?)\s*$")
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

    @property
    def refs(self) -> list[str]:
        return list(dict.fromkeys(_REF.findall(self.body)))

    def render(self, var_values: dict[str, object] | None = None, partition_value: str | None = None) -> tuple[str, dict]:
        """Return (select_sql, named_params) for DuckDB."""
        values = {name: default for name, (_, default) in self.vars.items()}
        values.update(var_values or {})
        params: dict[str, object] = {}
        for name in _VAR.findall(self.body):
            if name not in self.vars:
                raise SqlModelError(f"{self.path.name}: var {name!r} is used but not declared (-- var: {name} int <default>)")
            kind = self.vars[name][0]
            try:
                params[f"var_{name}"] = kind(values[name])
            except (TypeError, ValueError):
                raise SqlModelError(f"{self.path.name}: var {name}={values[name]!r} is not a {kind.__name__}") from None
        if self.partitioned_by:
            if partition_value is None:
                raise SqlModelError(f"{self.path.name} is partitioned by {self.partitioned_by}; a partition value is required")
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
                parts = value.split(None, 2)
                if len(parts) != 3 or parts[1] not in _VAR_TYPES:
                    raise SqlModelError(f"{path.name}: write vars as `-- var: name int|float|str default` (got {value!r})")
                kind = _VAR_TYPES[parts[1]]
                model.vars[parts[0]] = (kind, kind(parts[2]))
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


def materialise_model(con, model: SqlModel, var_values: dict | None = None, partition_value: str | None = None) -> int:
    """Run the model in one transaction: replace its partition (or whole table) with the SELECT's rows."""
    sql, params = model.render(var_values, partition_value)
    table = model.name
    con.execute("begin transaction")
    try:
        con.execute(f'create table if not exists "{table}" as select * from ({sql}) limit 0', params)
        if model.partitioned_by:
            con.execute(f'delete from "{table}" where "{model.partitioned_by}" = $partition', {"partition": partition_value})
        else:
            con.execute(f'delete from "{table}"')
        con.execute(f'insert into "{table}" by name select * from ({sql})', params)
        count = con.execute(
            f'select count(*) from "{table}"' + (f' where "{model.partitioned_by}" = $partition' if model.partitioned_by else ""),
            {"partition": partition_value} if model.partitioned_by else {},
        ).fetchall()[0][0]
        con.execute("commit")
    except Exception:
        con.execute("rollback")
        raise
    return int(count)
