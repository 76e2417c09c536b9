"""Input validation for everything that becomes a ClusterState command.

Used twice with the same rules: by the servicers before they propose (so a
person gets INVALID_ARGUMENT with a readable message and nothing reaches the
log), and by `ClusterState.apply` (so an entry that slipped through, or came
from an older/newer proposer, is rejected deterministically without a state
change). Every check raises `lepton.errors.InvalidArgument`; none looks at
the clock, the environment or anything but its arguments.
"""

from __future__ import annotations

import re

from lepton.errors import InvalidArgument
from lepton.v1 import commands_pb2, types_pb2

# Bounds. "Absurd" limits are far above any real machine; they exist so that
# a typo ("1000000" cores) is an error instead of a task that never places.
MAX_COUNT = 10_000
MAX_PRIORITY = 1000
MAX_CPU_MILLIS = 10_000 * 1000  # 10,000 cores
MAX_MEMORY_BYTES = 2**50  # 1 PiB
MAX_NETWORK_MBPS = 1_000_000  # 1 Tbit/s
MAX_GPUS = 64
MAX_GPU_MEMORY_BYTES = 2**40  # 1 TiB per GPU
MAX_COMMAND_LEN = 4096
MAX_ARGS = 1024
MAX_ARGS_TOTAL_LEN = 65536
MAX_ENV = 1024
MAX_LABELS = 64
MAX_LABEL_KEY_LEN = 253
MAX_LABEL_VALUE_LEN = 1024
MAX_CONSTRAINTS = 64
MAX_CONSTRAINT_VALUES = 256
MAX_RESTARTS = 100_000
MAX_DELAY_MS = 24 * 3600 * 1000
MAX_KILL_TIMEOUT_MS = 3600 * 1000
MAX_TEXT_LEN = 1024  # reasons, hostnames, addresses, versions

CONSTRAINT_OPS = ("=", "!=", "in", "not_in", "exists", "not_exists")
_OPS_WITHOUT_VALUES = ("exists", "not_exists")

_JOB_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,252}")
_LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./-]*")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _fail(msg: str) -> None:
    raise InvalidArgument(msg)


def validate_job_name(name: str) -> None:
    if not name:
        _fail("job name is empty")
    if len(name) > 63:
        _fail(f"job name {name[:70]!r} is longer than 63 characters")
    if not _JOB_NAME.fullmatch(name):
        _fail(
            f"job name {name!r} is invalid: use lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )


def validate_job_id(job_id: str) -> None:
    if not _JOB_ID.fullmatch(job_id or ""):
        _fail(f"job id {job_id[:80]!r} is invalid: 1-64 characters of letters, digits, '_' or '-'")


def validate_node_id(node_id: str) -> None:
    if not _NODE_ID.fullmatch(node_id or ""):
        _fail(
            f"node id {node_id[:80]!r} is invalid: 1-253 characters of letters, digits, '_', '.', ':' or '-'"
        )


def validate_text(value: str, what: str, limit: int = MAX_TEXT_LEN) -> None:
    if len(value) > limit:
        _fail(f"{what} is longer than {limit} characters")


def validate_resources(r: types_pb2.Resources, what: str, *, allow_zero: bool) -> None:
    """Non-negative, within the absurd limits, and (unless allow_zero) not all zero."""
    dims = (
        ("cpu", r.cpu_millis, MAX_CPU_MILLIS, "millicores"),
        ("memory", r.memory_bytes, MAX_MEMORY_BYTES, "bytes"),
        ("network", r.network_mbps, MAX_NETWORK_MBPS, "Mbit/s"),
        ("gpus", r.gpus, MAX_GPUS, "GPUs"),
        ("gpu memory", r.gpu_memory_bytes, MAX_GPU_MEMORY_BYTES, "bytes"),
    )
    for name, value, limit, unit in dims:
        if value < 0:
            _fail(f"{what}: {name} is negative ({value})")
        if value > limit:
            _fail(f"{what}: {name} {value} {unit} is above the limit of {limit} {unit}")
    if not allow_zero and not (r.cpu_millis or r.memory_bytes or r.network_mbps or r.gpus):
        _fail(f"{what}: request at least one of cpu, memory, network or gpus")


def validate_labels(labels, what: str) -> None:
    if len(labels) > MAX_LABELS:
        _fail(f"{what}: more than {MAX_LABELS} entries")
    for key in sorted(labels):
        if len(key) > MAX_LABEL_KEY_LEN or not _LABEL_KEY.fullmatch(key):
            _fail(f"{what}: key {key[:80]!r} is invalid")
        if len(labels[key]) > MAX_LABEL_VALUE_LEN:
            _fail(f"{what}: value of {key!r} is longer than {MAX_LABEL_VALUE_LEN} characters")


def validate_constraints(constraints) -> None:
    if len(constraints) > MAX_CONSTRAINTS:
        _fail(f"more than {MAX_CONSTRAINTS} constraints")
    for i, c in enumerate(constraints):
        where = f"constraint {i + 1}"
        if not c.key or len(c.key) > MAX_LABEL_KEY_LEN:
            _fail(f"{where}: key is empty or too long")
        if c.op not in CONSTRAINT_OPS:
            _fail(f"{where}: unknown op {c.op!r} (use one of {', '.join(CONSTRAINT_OPS)})")
        if c.op in _OPS_WITHOUT_VALUES:
            if c.values:
                _fail(f"{where}: op {c.op!r} takes no values")
        elif not c.values:
            _fail(f"{where}: op {c.op!r} needs at least one value")
        if len(c.values) > MAX_CONSTRAINT_VALUES:
            _fail(f"{where}: more than {MAX_CONSTRAINT_VALUES} values")
        for v in c.values:
            validate_text(v, f"{where}: value")


def validate_template(t: types_pb2.TaskTemplate) -> None:
    if not t.command.strip():
        _fail("task command is empty")
    validate_text(t.command, "task command", MAX_COMMAND_LEN)
    if "\x00" in t.command or any("\x00" in a for a in t.args):
        _fail("task command or args contain a NUL character")
    if len(t.args) > MAX_ARGS or sum(len(a) for a in t.args) > MAX_ARGS_TOTAL_LEN:
        _fail(f"task args: at most {MAX_ARGS} arguments and {MAX_ARGS_TOTAL_LEN} characters in total")
    if len(t.env) > MAX_ENV:
        _fail(f"task env: more than {MAX_ENV} variables")
    for key in sorted(t.env):
        if not _ENV_KEY.fullmatch(key):
            _fail(f"task env: {key[:80]!r} is not a valid variable name")
        validate_text(t.env[key], f"task env {key}", MAX_ARGS_TOTAL_LEN)
    validate_text(t.working_dir, "task working_dir", MAX_COMMAND_LEN)
    validate_resources(t.resources, "task resources", allow_zero=False)
    validate_constraints(t.constraints)
    if t.restart.mode not in types_pb2.RestartMode.values():
        _fail(f"restart mode {t.restart.mode} is unknown")
    if not 0 <= t.restart.max_restarts <= MAX_RESTARTS:
        _fail(f"restart max_restarts must be between 0 and {MAX_RESTARTS}")
    if not 0 <= t.restart.delay_ms <= MAX_DELAY_MS:
        _fail(f"restart delay must be between 0 and {MAX_DELAY_MS} ms")
    if not 0 <= t.kill_timeout_ms <= MAX_KILL_TIMEOUT_MS:
        _fail(f"kill_timeout must be between 0 and {MAX_KILL_TIMEOUT_MS} ms")
    validate_text(t.gpu_model, "gpu_model", 256)


def validate_job_spec(spec: types_pb2.JobSpec) -> None:
    """Everything a person can get wrong in a job spec, with a message that says what."""
    validate_job_name(spec.name)
    if not 1 <= spec.count <= MAX_COUNT:
        _fail(f"count must be between 1 and {MAX_COUNT} (got {spec.count})")
    if not 0 <= spec.priority <= MAX_PRIORITY:
        _fail(f"priority must be between 0 and {MAX_PRIORITY} (got {spec.priority})")
    if spec.type not in types_pb2.JobType.values():
        _fail(f"job type {spec.type} is unknown")
    if not spec.HasField("template"):
        _fail("job has no task template")
    validate_template(spec.template)
    validate_labels(spec.meta, "job meta")


def validate_submit(body: commands_pb2.SubmitJob, request_id: str = "") -> None:
    validate_job_id(body.job_id)
    validate_text(request_id, "request id", 256)
    validate_job_spec(body.spec)


def validate_register_node(body: commands_pb2.RegisterNode) -> None:
    """An agent's Hello, as it will be registered."""
    validate_node_id(body.node_id)
    validate_text(body.hostname, "hostname")
    validate_text(body.address, "address")
    validate_text(body.agent_version, "agent version")
    validate_resources(body.capacity, "node capacity", allow_zero=True)
    validate_resources(body.reserve, "node reserve", allow_zero=True)
    cap, res = body.capacity, body.reserve
    for name, c, r in (
        ("cpu", cap.cpu_millis, res.cpu_millis),
        ("memory", cap.memory_bytes, res.memory_bytes),
        ("network", cap.network_mbps, res.network_mbps),
        ("gpus", cap.gpus, res.gpus),
    ):
        if r > c:
            _fail(f"node reserve: {name} reserve {r} exceeds capacity {c}")
    validate_labels(body.labels, "node labels")
    if len(body.gpus) > MAX_GPUS:
        _fail(f"node reports more than {MAX_GPUS} GPUs")


def validate_drain(body: commands_pb2.DrainNode) -> None:
    validate_node_id(body.node_id)
    if body.deadline_ms < 0:
        _fail("drain deadline must not be negative")
    if not 0 <= body.max_parallel <= MAX_COUNT:
        _fail(f"drain max_parallel must be between 0 and {MAX_COUNT}")
