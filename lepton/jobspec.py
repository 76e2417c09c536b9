"""Job files: YAML (or plain dicts) -> validated `lepton.v1.JobSpec` messages.

The format is documented in docs/jobspec.md. A file holds one job, several
YAML documents separated by `---`, or a top-level `jobs:` list. Parsing goes
through PyYAML's *node* API (`compose_all`) rather than `safe_load`, so every
value keeps the line it came from and a mistake is reported as
`FILE:LINE: FIELD.PATH: what is wrong` (e.g.
`job.yaml:7: resources.memory: invalid memory '12XB' ...`).

Also home to `parse_constraint`, the one parser of constraint expressions
("zone=a", "zone!=b", "zone in (a,b)", "gpu exists"), shared with
`lepton-ctl jobs run --constraint`.
"""

from __future__ import annotations

import difflib
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from lepton import errors, units
from lepton.v1 import types_pb2

# Requests given to a task that names no resources at all: small enough to
# fit anywhere, non-zero so that placement still accounts for it.
DEFAULT_CPU = "100m"
DEFAULT_MEMORY = "128Mi"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?$")

JOB_TYPES = {"service": types_pb2.JOB_TYPE_SERVICE, "batch": types_pb2.JOB_TYPE_BATCH}
RESTART_MODES = {
    "never": types_pb2.RESTART_MODE_NEVER,
    "on_failure": types_pb2.RESTART_MODE_ON_FAILURE,
    "on-failure": types_pb2.RESTART_MODE_ON_FAILURE,
    "always": types_pb2.RESTART_MODE_ALWAYS,
}
CONSTRAINT_OPS = ("=", "!=", "in", "not_in", "exists", "not_exists")


class JobSpecError(errors.InvalidArgument):
    """A mistake in a job file, with where it is (file, line, field path)."""

    def __init__(self, message: str, source: str = "", line: int = 0, path: str = "") -> None:
        where = ":".join(p for p in (source, str(line) if line else "") if p)
        text = ": ".join(p for p in (where, path, message) if p)
        super().__init__(text)
        self.source = source
        self.line = line
        self.path = path
        self.reason = message


# -- constraint expressions ---------------------------------------------------

_EXPR_SET = re.compile(r"^\s*([^\s=!()]+)\s+(not\s+in|notin|in)\s*\(([^)]*)\)\s*$", re.IGNORECASE)
_EXPR_CMP = re.compile(r"^\s*([^\s=!()]+)\s*(==|!=|=)\s*([^\s()]*)\s*$")
_EXPR_EXISTS = re.compile(r"^\s*(!)?\s*([^\s=!()]+)\s*(?:(not\s+exists|exists))?\s*$", re.IGNORECASE)


def parse_constraint(expr: str) -> types_pb2.Constraint:
    """'zone=a', 'zone!=b', 'zone in (a,b)', 'zone not in (a,b)', 'gpu exists', '!gpu'.

    Raises ValueError naming the expression when it is none of these.
    """
    m = _EXPR_SET.match(expr)
    if m:
        key, op, values = m.group(1), m.group(2).lower(), m.group(3)
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not vals:
            raise ValueError(f"invalid constraint {expr!r}: empty value list")
        return _constraint(expr, key, "in" if op == "in" else "not_in", vals)
    m = _EXPR_CMP.match(expr)
    if m:
        key, op, value = m.groups()
        return _constraint(expr, key, "!=" if op == "!=" else "=", [value])
    m = _EXPR_EXISTS.match(expr)
    if m and (m.group(1) or m.group(3)):
        negated = bool(m.group(1)) or (m.group(3) or "").lower().startswith("not")
        if m.group(1) and m.group(3):
            raise ValueError(f"invalid constraint {expr!r}: use either '!key' or 'key not exists'")
        return _constraint(expr, m.group(2), "not_exists" if negated else "exists", [])
    raise ValueError(
        f"invalid constraint {expr!r}: expected 'key=value', 'key!=value', 'key in (a,b)', "
        "'key not in (a,b)', 'key exists' or '!key'"
    )


def _constraint(expr: str, key: str, op: str, values: list[str]) -> types_pb2.Constraint:
    if not _LABEL_KEY_RE.match(key):
        raise ValueError(f"invalid constraint {expr!r}: bad label key {key!r}")
    return types_pb2.Constraint(key=key, op=op, values=values)


def format_constraint(c: types_pb2.Constraint) -> str:
    """The inverse of parse_constraint, for display."""
    if c.op in ("=", "!="):
        return f"{c.key}{c.op}{c.values[0] if c.values else ''}"
    if c.op in ("in", "not_in"):
        return f"{c.key} {'in' if c.op == 'in' else 'not in'} ({','.join(c.values)})"
    if c.op == "exists":
        return f"{c.key} exists"
    if c.op == "not_exists":
        return f"!{c.key}"
    return f"{c.key} {c.op} {','.join(c.values)}"


# -- YAML nodes -> JobSpec ------------------------------------------------------

_constructor = yaml.constructor.SafeConstructor()


class _Ctx:
    """Where we are while walking a document: the file name for messages."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, node: yaml.Node | None, path: str, message: str) -> JobSpecError:
        line = node.start_mark.line + 1 if node is not None and node.start_mark is not None else 0
        return JobSpecError(message, self.source, line, path)


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    value = _scalar(node)
    return "null" if value is None else f"{type(value).__name__} {value!r}"


def _scalar(node: yaml.Node) -> Any:
    return _constructor.construct_object(node, deep=True)


def _mapping(ctx: _Ctx, node: yaml.Node, path: str) -> list[tuple[str, yaml.Node, yaml.Node]]:
    if not isinstance(node, yaml.MappingNode):
        raise ctx.fail(node, path, f"expected a mapping, got {_kind(node)}")
    out: list[tuple[str, yaml.Node, yaml.Node]] = []
    seen: set[str] = set()
    for knode, vnode in node.value:
        if not isinstance(knode, yaml.ScalarNode):
            raise ctx.fail(knode, path, "keys must be plain strings")
        key = str(_scalar(knode))
        if key in seen:
            raise ctx.fail(knode, _join(path, key), "duplicate key")
        seen.add(key)
        out.append((key, knode, vnode))
    return out


def _str(ctx: _Ctx, node: yaml.Node, path: str) -> str:
    if not isinstance(node, yaml.ScalarNode):
        raise ctx.fail(node, path, f"expected a string, got {_kind(node)}")
    value = _scalar(node)
    if value is None or isinstance(value, bool):
        raise ctx.fail(node, path, f"expected a string, got {_kind(node)}")
    return str(value)


def _int(ctx: _Ctx, node: yaml.Node, path: str, minimum: int | None = None) -> int:
    value = _scalar(node) if isinstance(node, yaml.ScalarNode) else None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ctx.fail(node, path, f"expected an integer, got {_kind(node)}")
    if minimum is not None and value < minimum:
        raise ctx.fail(node, path, f"must be at least {minimum}, got {value}")
    if value > 2**31 - 1:
        raise ctx.fail(node, path, f"too large: {value}")
    return value


def _bool(ctx: _Ctx, node: yaml.Node, path: str) -> bool:
    value = _scalar(node) if isinstance(node, yaml.ScalarNode) else None
    if not isinstance(value, bool):
        raise ctx.fail(node, path, f"expected true or false, got {_kind(node)}")
    return value


def _str_list(ctx: _Ctx, node: yaml.Node, path: str) -> list[str]:
    if not isinstance(node, yaml.SequenceNode):
        raise ctx.fail(node, path, f"expected a list of strings, got {_kind(node)}")
    return [_str(ctx, item, _join(path, i)) for i, item in enumerate(node.value)]


def _str_map(ctx: _Ctx, node: yaml.Node, path: str) -> dict[str, str]:
    return {key: _str(ctx, v, _join(path, key)) for key, _, v in _mapping(ctx, node, path)}


def _quantity(ctx: _Ctx, node: yaml.Node, path: str, parse: Callable[[Any], int | float]) -> Any:
    value = _scalar(node) if isinstance(node, yaml.ScalarNode) else None
    if value is None or isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ctx.fail(node, path, f"expected a quantity, got {_kind(node)}")
    try:
        result = parse(value)
    except ValueError as e:
        raise ctx.fail(node, path, str(e)) from None
    if result < 0:
        raise ctx.fail(node, path, f"must not be negative, got {value!r}")
    return result


def _enum(ctx: _Ctx, node: yaml.Node, path: str, choices: dict[str, int]) -> int:
    text = _str(ctx, node, path).strip().lower()
    if text not in choices:
        raise ctx.fail(node, path, f"unknown value {text!r} (one of {', '.join(sorted(set(choices)))})")
    return choices[text]


def _check_keys(ctx: _Ctx, items: list[tuple[str, yaml.Node, yaml.Node]], path: str, allowed: tuple) -> None:
    for key, knode, _ in items:
        if key not in allowed:
            hint = difflib.get_close_matches(key, allowed, n=1)
            also = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ctx.fail(knode, _join(path, key), f"unknown field{also}")


_RESOURCE_FIELDS = ("cpu", "memory", "network", "gpus", "gpu_memory")


def _resources(ctx: _Ctx, node: yaml.Node, path: str, res: types_pb2.Resources) -> None:
    items = _mapping(ctx, node, path)
    _check_keys(ctx, items, path, _RESOURCE_FIELDS)
    for key, _, v in items:
        p = _join(path, key)
        if key == "cpu":
            res.cpu_millis = _quantity(ctx, v, p, units.parse_cpu)
        elif key == "memory":
            res.memory_bytes = _quantity(ctx, v, p, units.parse_memory)
        elif key == "network":
            res.network_mbps = _quantity(ctx, v, p, units.parse_network)
        elif key == "gpus":
            res.gpus = _int(ctx, v, p, minimum=0)
        elif key == "gpu_memory":
            res.gpu_memory_bytes = _quantity(ctx, v, p, units.parse_memory)


def _constraints(ctx: _Ctx, node: yaml.Node, path: str) -> list[types_pb2.Constraint]:
    if not isinstance(node, yaml.SequenceNode):
        raise ctx.fail(node, path, f"expected a list of constraints, got {_kind(node)}")
    out = []
    for i, item in enumerate(node.value):
        p = _join(path, i)
        if isinstance(item, yaml.ScalarNode):
            try:
                out.append(parse_constraint(_str(ctx, item, p)))
            except ValueError as e:
                raise ctx.fail(item, p, str(e)) from None
            continue
        items = _mapping(ctx, item, p)
        _check_keys(ctx, items, p, ("key", "op", "values", "value"))
        fields = {k: (kn, v) for k, kn, v in items}
        if "key" not in fields:
            raise ctx.fail(item, p, "missing field 'key'")
        key = _str(ctx, fields["key"][1], _join(p, "key"))
        op = _str(ctx, fields["op"][1], _join(p, "op")) if "op" in fields else "="
        op = {"==": "=", "notin": "not_in", "not in": "not_in", "not-in": "not_in"}.get(op, op)
        if op not in CONSTRAINT_OPS:
            raise ctx.fail(
                fields["op"][1], _join(p, "op"), f"unknown op {op!r} (one of {', '.join(CONSTRAINT_OPS)})"
            )
        values: list[str] = []
        if "values" in fields:
            values = _str_list(ctx, fields["values"][1], _join(p, "values"))
        if "value" in fields:
            values.append(_str(ctx, fields["value"][1], _join(p, "value")))
        if op in ("exists", "not_exists") and values:
            raise ctx.fail(item, p, f"op {op!r} takes no values")
        if op in ("=", "!=") and len(values) != 1:
            raise ctx.fail(item, p, f"op {op!r} takes exactly one value")
        if op in ("in", "not_in") and not values:
            raise ctx.fail(item, p, f"op {op!r} needs at least one value")
        if not _LABEL_KEY_RE.match(key):
            raise ctx.fail(fields["key"][1], _join(p, "key"), f"bad label key {key!r}")
        out.append(types_pb2.Constraint(key=key, op=op, values=values))
    return out


def _restart(ctx: _Ctx, node: yaml.Node, path: str, policy: types_pb2.RestartPolicy) -> None:
    if isinstance(node, yaml.ScalarNode):  # shorthand: `restart: always`
        policy.mode = _enum(ctx, node, path, RESTART_MODES)
        return
    items = _mapping(ctx, node, path)
    _check_keys(ctx, items, path, ("mode", "max_restarts", "delay"))
    for key, _, v in items:
        p = _join(path, key)
        if key == "mode":
            policy.mode = _enum(ctx, v, p, RESTART_MODES)
        elif key == "max_restarts":
            policy.max_restarts = _int(ctx, v, p, minimum=0)
        elif key == "delay":
            policy.delay_ms = int(round(_quantity(ctx, v, p, units.parse_duration) * 1000))


JOB_FIELDS = (
    "name",
    "priority",
    "type",
    "count",
    "command",
    "args",
    "env",
    "working_dir",
    "resources",
    "constraints",
    "restart",
    "migratable",
    "stop_on_disconnect",
    "kill_timeout",
    "distinct_nodes",
    "gpu_model",
    "meta",
)


def _job(ctx: _Ctx, node: yaml.Node, path: str) -> types_pb2.JobSpec:
    items = _mapping(ctx, node, path)
    _check_keys(ctx, items, path, JOB_FIELDS)
    fields = {k: v for k, _, v in items}
    spec = types_pb2.JobSpec(count=1, type=types_pb2.JOB_TYPE_SERVICE)
    tmpl = spec.template
    tmpl.resources.cpu_millis = units.parse_cpu(DEFAULT_CPU)
    tmpl.resources.memory_bytes = units.parse_memory(DEFAULT_MEMORY)
    for required in ("name", "command"):
        if required not in fields:
            raise ctx.fail(node, path, f"missing required field {required!r}")
    command: list[str] = []
    for key, v in fields.items():
        p = _join(path, key)
        if key == "name":
            spec.name = _str(ctx, v, p)
            if not _NAME_RE.match(spec.name):
                raise ctx.fail(
                    v, p, f"invalid name {spec.name!r}: letters, digits, '.', '_', '-'; at most 63"
                )
        elif key == "priority":
            spec.priority = _int(ctx, v, p, minimum=0)
        elif key == "type":
            spec.type = _enum(ctx, v, p, JOB_TYPES)
        elif key == "count":
            spec.count = _int(ctx, v, p, minimum=1)
        elif key == "command":
            if isinstance(v, yaml.SequenceNode):
                command = _str_list(ctx, v, p)
            else:
                text = _str(ctx, v, p)
                try:
                    # Split like a shell would, but no shell runs the task:
                    # use [sh, -c, "..."] for pipes and expansions.
                    command = shlex.split(text)
                except ValueError as e:
                    raise ctx.fail(v, p, f"cannot split command: {e}") from None
            if not command or not command[0]:
                raise ctx.fail(v, p, "must not be empty")
        elif key == "args":
            pass  # appended after the command's own words, below
        elif key == "env":
            tmpl.env.update(_str_map(ctx, v, p))
        elif key == "working_dir":
            tmpl.working_dir = _str(ctx, v, p)
        elif key == "resources":
            _resources(ctx, v, p, tmpl.resources)
        elif key == "constraints":
            tmpl.constraints.extend(_constraints(ctx, v, p))
        elif key == "restart":
            _restart(ctx, v, p, tmpl.restart)
        elif key == "migratable":
            tmpl.migratable = _bool(ctx, v, p)
        elif key == "stop_on_disconnect":
            tmpl.stop_on_disconnect = _bool(ctx, v, p)
        elif key == "kill_timeout":
            tmpl.kill_timeout_ms = int(round(_quantity(ctx, v, p, units.parse_duration) * 1000))
        elif key == "distinct_nodes":
            tmpl.distinct_nodes = _bool(ctx, v, p)
        elif key == "gpu_model":
            tmpl.gpu_model = _str(ctx, v, p)
        elif key == "meta":
            spec.meta.update(_str_map(ctx, v, p))
    tmpl.command = command[0]
    tmpl.args.extend(command[1:])
    if "args" in fields:
        tmpl.args.extend(_str_list(ctx, fields["args"], _join(path, "args")))
    return spec


def _documents(ctx: _Ctx, text: str) -> list[tuple[yaml.Node, str]]:
    """Job nodes of a file with their path prefix: plain documents or `jobs:` lists."""
    try:
        docs = [d for d in yaml.compose_all(text, Loader=yaml.SafeLoader) if d is not None]
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else 0
        raise JobSpecError(f"invalid YAML: {e.problem or e.context}", ctx.source, line) from None
    except yaml.YAMLError as e:
        raise JobSpecError(f"invalid YAML: {e}", ctx.source) from None
    out: list[tuple[yaml.Node, str]] = []
    for doc in docs:
        if isinstance(doc, yaml.MappingNode) and any(
            isinstance(k, yaml.ScalarNode) and k.value == "jobs" for k, _ in doc.value
        ):
            items = _mapping(ctx, doc, "")
            _check_keys(ctx, items, "", ("jobs",))
            jobs = items[0][2]
            if not isinstance(jobs, yaml.SequenceNode):
                raise ctx.fail(jobs, "jobs", f"expected a list of jobs, got {_kind(jobs)}")
            out.extend((item, f"jobs[{i}]") for i, item in enumerate(jobs.value))
        else:
            out.append((doc, ""))
    return out


def load_jobs(text: str, source: str = "<stdin>") -> list[types_pb2.JobSpec]:
    """Every job in a job file's text; raises JobSpecError at the first mistake."""
    ctx = _Ctx(source)
    jobs = [_job(ctx, node, path) for node, path in _documents(ctx, text)]
    if not jobs:
        raise JobSpecError("no jobs in file", source)
    names: dict[str, int] = {}
    for i, job in enumerate(jobs):
        if job.name in names:
            raise JobSpecError(
                f"job name {job.name!r} appears twice (jobs {names[job.name] + 1} and {i + 1})", source
            )
        names[job.name] = i
    return jobs


def load_job_file(path: str | Path) -> list[types_pb2.JobSpec]:
    """Reads and parses a job file; `-` reads standard input."""
    if str(path) == "-":
        import sys

        return load_jobs(sys.stdin.read(), "<stdin>")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise JobSpecError(f"cannot read job file: {e.strerror or e}", str(path)) from None
    except UnicodeDecodeError:
        raise JobSpecError("not a UTF-8 text file", str(path)) from None
    return load_jobs(text, str(path))


def spec_from_dict(job: dict, source: str = "<dict>") -> types_pb2.JobSpec:
    """One job given as a Python dict in the job-file format (same validation)."""
    try:
        return load_jobs(yaml.safe_dump(job), source)[0]
    except JobSpecError as e:
        # Line numbers of the intermediate YAML would mean nothing to the caller.
        raise JobSpecError(e.reason, source, 0, e.path) from None
