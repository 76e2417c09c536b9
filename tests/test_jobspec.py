"""Job files -> JobSpec: the format of docs/jobspec.md and its line-precise errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from lepton import errors, jobspec
from lepton.v1 import types_pb2

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(text: str, source: str = "job.yaml") -> list[types_pb2.JobSpec]:
    return jobspec.load_jobs(textwrap.dedent(text), source)


def error_of(text: str) -> str:
    with pytest.raises(jobspec.JobSpecError) as info:
        load(text)
    return str(info.value)


def test_full_job_maps_every_field():
    (spec,) = load(
        """
        name: trainer
        priority: 7
        type: batch
        count: 3
        command: python3 -c 'print("hi")'
        args: [--epochs, "3"]
        env: {MODE: fast, SEED: 42}
        working_dir: /tmp
        resources: {cpu: 500m, memory: 1Gi, network: 10G, gpus: 2, gpu_memory: 40Gi}
        constraints:
          - zone=a
          - zone!=b
          - "rack in (r1, r2)"
          - "pool not in (spot)"
          - gpu exists
          - "!maintenance"
          - {key: tier, op: in, values: [gold, silver]}
        restart: {mode: on_failure, max_restarts: 4, delay: 1.5s}
        migratable: true
        stop_on_disconnect: true
        kill_timeout: 10s
        distinct_nodes: true
        gpu_model: A100
        meta: {owner: ml-team}
        """
    )
    t = spec.template
    assert (spec.name, spec.priority, spec.type, spec.count) == ("trainer", 7, types_pb2.JOB_TYPE_BATCH, 3)
    assert t.command == "python3"
    assert list(t.args) == ["-c", 'print("hi")', "--epochs", "3"]
    assert dict(t.env) == {"MODE": "fast", "SEED": "42"}
    assert t.working_dir == "/tmp"
    assert (t.resources.cpu_millis, t.resources.memory_bytes) == (500, 2**30)
    assert (t.resources.network_mbps, t.resources.gpus, t.resources.gpu_memory_bytes) == (
        10000,
        2,
        40 * 2**30,
    )
    got = [(c.key, c.op, list(c.values)) for c in t.constraints]
    assert got == [
        ("zone", "=", ["a"]),
        ("zone", "!=", ["b"]),
        ("rack", "in", ["r1", "r2"]),
        ("pool", "not_in", ["spot"]),
        ("gpu", "exists", []),
        ("maintenance", "not_exists", []),
        ("tier", "in", ["gold", "silver"]),
    ]
    assert (t.restart.mode, t.restart.max_restarts, t.restart.delay_ms) == (
        types_pb2.RESTART_MODE_ON_FAILURE,
        4,
        1500,
    )
    assert t.migratable and t.stop_on_disconnect and t.distinct_nodes
    assert t.kill_timeout_ms == 10000
    assert t.gpu_model == "A100"
    assert dict(spec.meta) == {"owner": "ml-team"}


def test_defaults_for_a_minimal_job():
    (spec,) = load("name: tiny\ncommand: [sleep, '60']\n")
    assert spec.count == 1 and spec.priority == 0 and spec.type == types_pb2.JOB_TYPE_SERVICE
    assert spec.template.command == "sleep" and list(spec.template.args) == ["60"]
    assert spec.template.resources.cpu_millis == 100
    assert spec.template.resources.memory_bytes == 128 * 2**20


def test_several_documents_and_jobs_list():
    docs = load("name: a\ncommand: x\n---\nname: b\ncommand: y\n")
    assert [d.name for d in docs] == ["a", "b"]
    listed = load("jobs:\n  - name: a\n    command: x\n  - name: b\n    command: y\n")
    assert [d.name for d in listed] == ["a", "b"]


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "name: a\ncommand: x\nresources:\n  cpu: 1\n  memory: 12XB\n",
            "job.yaml:5: resources.memory: invalid memory '12XB'",
        ),
        (
            "name: a\ncommand: x\nresources:\n  network: fast\n",
            "job.yaml:4: resources.network: invalid network 'fast'",
        ),
        (
            "name: a\ncommand: x\nresources: {cpu: 2 cores}\n",
            "job.yaml:3: resources.cpu: invalid cpu '2 cores'",
        ),
        ("name: a\ncomand: x\n", "job.yaml:2: comand: unknown field (did you mean 'command'?)"),
        ("name: a\n", "job.yaml:1: missing required field 'command'"),
        ("name: a\ncommand: x\ncount: 0\n", "job.yaml:3: count: must be at least 1, got 0"),
        ("name: a\ncommand: x\ncount: lots\n", "job.yaml:3: count: expected an integer, got str 'lots'"),
        (
            "name: a\ncommand: x\ntype: daemon\n",
            "job.yaml:3: type: unknown value 'daemon' (one of batch, service)",
        ),
        ("name: a\ncommand: x\nmigratable: maybe\n", "job.yaml:3: migratable: expected true or false"),
        (
            "name: a\ncommand: x\nconstraints:\n  - zone=a\n  - zone ~ b\n",
            "job.yaml:5: constraints[1]: invalid constraint",
        ),
        (
            "name: a\ncommand: x\nrestart: {mode: sometimes}\n",
            "job.yaml:3: restart.mode: unknown value 'sometimes'",
        ),
        (
            "name: a\ncommand: x\nkill_timeout: 3 days\n",
            "job.yaml:3: kill_timeout: invalid duration '3 days'",
        ),
        ("name: a\ncommand: x\nenv: [A, B]\n", "job.yaml:3: env: expected a mapping, got a list"),
        ("name: 'bad name!'\ncommand: x\n", "job.yaml:1: name: invalid name 'bad name!'"),
        ("name: a\ncommand: x\nname: b\n", "job.yaml:3: name: duplicate key"),
        ("name: a\ncommand: []\n", "job.yaml:2: command: must not be empty"),
        ("name: a\ncommand: x\n  oops: [\n", "job.yaml:3: invalid YAML"),
        ("- just\n- a list\n", "job.yaml:1: expected a mapping, got a list"),
        (
            "jobs:\n  - name: a\n    command: x\n  - name: b\n    command: y\n    resources: {memory: -1Gi}\n",
            "job.yaml:6: jobs[1].resources.memory: invalid memory '-1Gi'",
        ),
        ("name: a\ncommand: x\n---\nname: a\ncommand: y\n", "job.yaml: job name 'a' appears twice"),
        ("", "job.yaml: no jobs in file"),
    ],
)
def test_mistakes_name_line_and_field(text, expected):
    message = error_of(text)
    assert message.startswith(expected), message


def test_error_is_an_invalid_argument():
    with pytest.raises(errors.InvalidArgument):
        load("name: a\n")


def test_missing_file_is_reported_not_raised_as_oserror(tmp_path):
    with pytest.raises(jobspec.JobSpecError) as info:
        jobspec.load_job_file(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(info.value) and "cannot read" in str(info.value)


@pytest.mark.parametrize(
    "expr, key, op, values",
    [
        ("zone=a", "zone", "=", ["a"]),
        ("zone == a", "zone", "=", ["a"]),
        ("zone!=b", "zone", "!=", ["b"]),
        ("zone in (a,b)", "zone", "in", ["a", "b"]),
        ("zone IN ( a , b )", "zone", "in", ["a", "b"]),
        ("zone not in (a)", "zone", "not_in", ["a"]),
        ("gpu exists", "gpu", "exists", []),
        ("gpu not exists", "gpu", "not_exists", []),
        ("!gpu", "gpu", "not_exists", []),
        ("topology.kubernetes.io/zone=x", "topology.kubernetes.io/zone", "=", ["x"]),
    ],
)
def test_constraint_expressions(expr, key, op, values):
    c = jobspec.parse_constraint(expr)
    assert (c.key, c.op, list(c.values)) == (key, op, values)
    again = jobspec.parse_constraint(jobspec.format_constraint(c))
    assert again == c


@pytest.mark.parametrize("expr", ["", "zone", "zone in ()", "= a", "zone ~ a", "!gpu exists"])
def test_bad_constraint_expressions(expr):
    with pytest.raises(ValueError):
        jobspec.parse_constraint(expr)


def test_spec_from_dict_validates_without_line_numbers():
    spec = jobspec.spec_from_dict({"name": "d", "command": ["sleep", "1"], "resources": {"cpu": 2}})
    assert spec.template.resources.cpu_millis == 2000
    with pytest.raises(jobspec.JobSpecError) as info:
        jobspec.spec_from_dict({"name": "d", "command": "x", "resources": {"memory": "lots"}})
    assert str(info.value).startswith("<dict>: resources.memory: invalid memory 'lots'")


def test_worked_example_file():
    specs = jobspec.load_job_file(EXAMPLES / "worked-example.yaml")
    got = {
        s.name: (
            s.priority,
            s.template.resources.cpu_millis,
            s.template.resources.memory_bytes,
            s.template.resources.network_mbps,
        )
        for s in specs
    }
    assert got == {
        "medical": (1, 10_000, 50 * 2**30, 2_000),
        "financial": (2, 20_000, 100 * 2**30, 4_000),
        "manufacturing": (3, 30_000, 150 * 2**30, 6_000),
        "transportation": (4, 40_000, 200 * 2**30, 8_000),
    }
    # Network is the binding dimension: 20 Gbit/s asked of a 10 Gbit/s node.
    assert sum(v[3] for v in got.values()) == 20_000
    assert sum(v[1] for v in got.values()) == 100_000


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_file_loads(path):
    assert jobspec.load_job_file(path)
