"""Turn a dashboard target into the query Grafana would actually send, so tests (and anyone
debugging a panel) can run it against Prometheus or ClickHouse directly.

What is emulated, and from where:
- Template variables (Grafana's templateSrv): `$var`, `${var}`, `${var:format}`, `[[var]]`.
  "All" with a custom allValue renders the allValue unformatted; otherwise All means every
  option. Prometheus formats multi-value variables as an escaped regex alternation `(a|b)`;
  the ClickHouse plugin joins arrays as `'a','b'`; `:singlequote` quotes each value.
- `$__rate_interval` (Prometheus datasource): max($__interval + scrape interval,
  4 x scrape interval); `$__interval`: the time range over max data points, at least the
  scrape interval.
- grafana-clickhouse-datasource: `$__conditionalAll(condition, $var)` in its frontend (the
  condition, or `1=1` when the variable is All or empty), then its backend macros
  (pkg/macros/macros.go): `$__timeFilter(c)` -> `c >= toDateTime(from) AND c <= toDateTime(to)`,
  `$__timeFilter_ms`, `$__dateFilter`, `$__dateTimeFilter`/`$__dt`, `$__fromTime`,
  `$__toTime` (+ `_ms`), `$__timeInterval(c)` -> `toStartOfInterval(toDateTime(c), INTERVAL n
  second)`, `$__timeInterval_ms`, `$__interval_s`.
Anything else spelled `$__name` is left in place, so a query using a macro nobody expands fails
when it runs instead of silently meaning something else.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

ALL = "$__all"

_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)(?::(\w+))?\}|\[\[(\w+)\]\]")
_PROM_REGEX_SPECIAL = re.compile(r"[$^*{}\[\]'+?.()|]")


@dataclass
class Selection:
    """What the user picked for each variable: a list of values, or ALL."""

    values: dict[str, list[str] | str] = field(default_factory=dict)
    # Every option a variable offers (what "All" expands to when there is no allValue).
    options: dict[str, list[str]] = field(default_factory=dict)
    # Custom allValue per variable, from the dashboard JSON.
    all_values: dict[str, str] = field(default_factory=dict)
    # Plain single-value variables (textbox, constant, datasource).
    constants: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dashboard(cls, model: dict, **constants: str) -> Selection:
        selection = cls(constants=dict(constants))
        for variable in model.get("templating", {}).get("list", []):
            if variable["type"] == "query":
                selection.values[variable["name"]] = ALL
                if variable.get("allValue"):
                    selection.all_values[variable["name"]] = variable["allValue"]
        return selection


def _is_all(value: list[str] | str) -> bool:
    return value == ALL or value == [ALL]


def prometheus_regex_escape(value: str) -> str:
    # Grafana's prometheusSpecialRegexEscape: the backslash itself is doubled again because the
    # value lands inside a PromQL double-quoted string.
    value = value.replace("\\", "\\\\\\\\")
    return _PROM_REGEX_SPECIAL.sub(lambda m: "\\\\" + m.group(0), value)


def _format(value: list[str] | str, fmt: str | None, dialect: str) -> str:
    values = [value] if isinstance(value, str) else list(value)
    if fmt == "singlequote":
        return ",".join("'" + v.replace("'", "\\'") + "'" for v in values)
    if fmt == "doublequote":
        return ",".join('"' + v.replace('"', '\\"') + '"' for v in values)
    if fmt == "csv":
        return ",".join(values)
    if fmt == "regex":
        escaped = [re.escape(v) for v in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    if fmt == "raw":
        return ",".join(values)
    if fmt is not None:
        raise ValueError(f"variable format :{fmt} is not emulated here")
    if dialect == "prometheus":
        escaped = [prometheus_regex_escape(v) for v in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    # grafana-clickhouse-datasource's format(): an array (any multi-value variable, even with
    # one value picked) becomes 'a','b'; a single-value variable's value stays raw.
    if isinstance(value, str):
        return value
    return "'" + "','".join(values) + "'"


def replace_variables(text: str, selection: Selection, dialect: str) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(4)
        fmt = match.group(3)
        if name in selection.constants:
            return selection.constants[name]
        if name not in selection.values:
            return match.group(0)  # built-ins ($__...) and unknown names stay for later steps
        value = selection.values[name]
        if _is_all(value):
            if name in selection.all_values and fmt not in ("text", "percentencode"):
                return selection.all_values[name]
            value = selection.options.get(name, [])
        return _format(value, fmt, dialect)

    return _VARIABLE.sub(substitute, text)


# --- Prometheus --------------------------------------------------------------------------------


def grafana_interval(range_seconds: float, scrape_seconds: float, max_points: int = 1000) -> int:
    """$__interval in seconds: the range spread over the panel's data points, never below the
    scrape interval (the datasource's timeInterval)."""
    return max(int(math.ceil(range_seconds / max_points)), int(scrape_seconds), 1)


def rate_interval(range_seconds: float, scrape_seconds: float, max_points: int = 1000) -> int:
    interval = grafana_interval(range_seconds, scrape_seconds, max_points)
    return int(max(interval + scrape_seconds, 4 * scrape_seconds))


def prometheus_expr(
    expr: str, selection: Selection, range_seconds: float, scrape_seconds: float
) -> str:
    interval = grafana_interval(range_seconds, scrape_seconds)
    text = expr.replace("$__rate_interval", f"{rate_interval(range_seconds, scrape_seconds)}s")
    text = text.replace("${__rate_interval}", f"{rate_interval(range_seconds, scrape_seconds)}s")
    text = text.replace("$__interval", f"{interval}s").replace("${__interval}", f"{interval}s")
    text = text.replace("$__range", f"{int(range_seconds)}s")
    return replace_variables(text, selection, "prometheus")


# --- ClickHouse (grafana-clickhouse-datasource) ------------------------------------------------


def _macro_args(text: str, open_index: int) -> tuple[list[str], int]:
    """Arguments of a macro call whose '(' is at open_index, split on top-level commas, and
    the index just past the closing ')'."""
    depth, start, args = 0, open_index + 1, []
    for i in range(open_index, len(text)):
        ch = text[i]
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                args.append(text[start:i])
                return args, i + 1
        elif ch == "," and depth == 1:
            args.append(text[start:i])
            start = i + 1
    raise ValueError(f"unbalanced parentheses in macro call: {text[open_index : open_index + 60]}")


def apply_conditional_all(sql: str, selection: Selection) -> str:
    macro = "$__conditionalAll("
    index = sql.rfind(macro)
    while index != -1:
        args, end = _macro_args(sql, index + len(macro) - 1)
        if len(args) != 2:
            raise ValueError(f"$__conditionalAll takes 2 arguments, got {len(args)}")
        name_match = re.search(r"(?<=\$\{)\w+(?=[}:])|(?<=\$)\w+", args[1].strip())
        phrase = args[0]
        if name_match:
            value = selection.values.get(name_match.group(0), "")
            if value in ("", []) or _is_all(value):
                phrase = "1=1"
        sql = sql[:index] + phrase + sql[end:]
        index = sql.rfind(macro)
    return sql


def _to_datetime(t: datetime) -> str:
    return f"toDateTime({int(t.timestamp())})"


def _to_datetime64(t: datetime) -> str:
    return f"fromUnixTimestamp64Milli({int(t.timestamp() * 1000)})"


def _to_date(t: datetime) -> str:
    return f"toDate('{t.astimezone(UTC).strftime('%Y-%m-%d')}')"


def _expand_macro(
    name: str, args: list[str], start: datetime, end: datetime, interval: float
) -> str | None:
    def need(n: int) -> None:
        if len(args) != n:
            raise ValueError(f"$__{name} expects {n} argument(s), received {len(args)}")

    seconds = max(int(interval), 1)
    if name == "timeFilter":
        need(1)
        c = args[0].strip()
        return f"{c} >= {_to_datetime(start)} AND {c} <= {_to_datetime(end)}"
    if name == "timeFilter_ms":
        need(1)
        c = args[0].strip()
        return f"{c} >= {_to_datetime64(start)} AND {c} <= {_to_datetime64(end)}"
    if name == "dateFilter":
        need(1)
        c = args[0].strip()
        return f"{c} >= {_to_date(start)} AND {c} <= {_to_date(end)}"
    if name in ("dateTimeFilter", "dt"):
        need(2)
        d, c = args[0].strip(), args[1].strip()
        return (
            f"({d} >= {_to_date(start)} AND {d} <= {_to_date(end)}) AND "
            f"({c} >= {_to_datetime(start)} AND {c} <= {_to_datetime(end)})"
        )
    if name == "timeInterval":
        need(1)
        return f"toStartOfInterval(toDateTime({args[0].strip()}), INTERVAL {seconds} second)"
    if name == "timeInterval_ms":
        need(1)
        ms = max(int(interval * 1000), 1)
        return f"toStartOfInterval(toDateTime64({args[0].strip()}, 3), INTERVAL {ms} millisecond)"
    return None


_NO_ARG_MACROS = {
    "fromTime_ms": lambda s, e, i: _to_datetime64(s),
    "toTime_ms": lambda s, e, i: _to_datetime64(e),
    "fromTime": lambda s, e, i: _to_datetime(s),
    "toTime": lambda s, e, i: _to_datetime(e),
    "interval_s": lambda s, e, i: str(max(int(i), 1)),
}
_MACRO = re.compile(r"\$__(\w+)")


def expand_clickhouse_macros(sql: str, start: datetime, end: datetime, interval: float) -> str:
    out, pos = [], 0
    for match in _MACRO.finditer(sql):
        if match.start() < pos:
            continue
        name = match.group(1)
        if name in _NO_ARG_MACROS:
            out.append(sql[pos : match.start()])
            out.append(_NO_ARG_MACROS[name](start, end, interval))
            pos = match.end()
            continue
        if match.end() < len(sql) and sql[match.end()] == "(":
            args, after = _macro_args(sql, match.end())
            expanded = _expand_macro(name, args, start, end, interval)
            if expanded is not None:
                out.append(sql[pos : match.start()])
                out.append(expanded)
                pos = after
    out.append(sql[pos:])
    return "".join(out)


def clickhouse_sql(
    sql: str, selection: Selection, start: datetime, end: datetime, max_points: int = 1000
) -> str:
    """The SQL grafana-clickhouse-datasource sends to ClickHouse for this selection and range."""
    interval = max((end - start).total_seconds() / max_points, 1.0)
    text = apply_conditional_all(sql, selection)
    text = replace_variables(text, selection, "clickhouse")
    return expand_clickhouse_macros(text, start, end, interval)
