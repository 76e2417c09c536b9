"""Validation of job specs and node registrations: the same rules in servicers and in apply.

Each bad input must be rejected by validate.py with a readable InvalidArgument
and, when it reaches apply anyway, rejected without any state change.
"""

from __future__ import annotations

import pytest

from controller.state import validate
from controller.state.testing import Harness, job_spec, register_node, resources
from lepton.errors import InvalidArgument
from lepton.v1 import commands_pb2, types_pb2


def _spec(**kw):
    return job_spec(**kw)


def _mutate(fn):
    spec = job_spec()
    fn(spec)
    return spec


BAD_SPECS = [
    ("empty name", _spec(name=""), "name is empty"),
    ("uppercase name", _spec(name="Web"), "invalid"),
    ("name too long", _spec(name="a" * 64), "longer than 63"),
    ("name with underscore", _spec(name="my_job"), "invalid"),
    ("zero count", _spec(count=0), "count"),
    ("count too large", _spec(count=10_001), "count"),
    ("negative priority", _spec(priority=-1), "priority"),
    ("priority too large", _spec(priority=1001), "priority"),
    ("empty command", _spec(command_=""), "command is empty"),
    ("blank command", _spec(command_="   "), "command is empty"),
    ("command too long", _spec(command_="x" * 5000), "longer than"),
    ("all-zero resources", _spec(res=resources(0, 0, 0, 0)), "at least one"),
    ("negative cpu", _spec(res=resources(cpu=-1)), "cpu is negative"),
    ("negative memory", _spec(res=resources(mem=-5)), "memory is negative"),
    ("absurd cpu", _spec(res=resources(cpu=10_000_001)), "above the limit"),
    ("absurd memory", _spec(res=resources(mem=2**50 + 1)), "above the limit"),
    ("absurd network", _spec(res=resources(net=1_000_001)), "above the limit"),
    ("absurd gpus", _spec(res=resources(gpus=65)), "above the limit"),
    ("no template", types_pb2.JobSpec(name="x", count=1), "no task template"),
    (
        "bad constraint op",
        _mutate(lambda s: s.template.constraints.add(key="zone", op="~", values=["a"])),
        "unknown op",
    ),
    (
        "constraint without values",
        _mutate(lambda s: s.template.constraints.add(key="zone", op="in")),
        "needs",
    ),
    (
        "exists with values",
        _mutate(lambda s: s.template.constraints.add(key="zone", op="exists", values=["a"])),
        "takes no values",
    ),
    ("bad env key", _mutate(lambda s: s.template.env.update({"1BAD": "x"})), "not a valid variable"),
    ("too many meta", _mutate(lambda s: s.meta.update({f"k{i}": "v" for i in range(65)})), "more than"),
    ("bad restart mode", _mutate(lambda s: setattr(s.template.restart, "mode", 42)), "restart mode"),
    (
        "negative max_restarts",
        _mutate(lambda s: setattr(s.template.restart, "max_restarts", -1)),
        "max_restarts",
    ),
    ("bad job type", _mutate(lambda s: setattr(s, "type", 9)), "job type"),
]


@pytest.mark.parametrize(("case", "spec", "needle"), BAD_SPECS, ids=[c[0] for c in BAD_SPECS])
def test_bad_job_spec_is_rejected_by_validate_and_by_apply(case, spec, needle):
    with pytest.raises(InvalidArgument) as exc:
        validate.validate_job_spec(spec)
    assert needle in str(exc.value)

    h = Harness()
    before = h.state.digest()
    result = h.apply(commands_pb2.SubmitJob(job_id="j1", spec=spec))
    assert isinstance(result, InvalidArgument)
    assert h.state.digest() == before
    assert h.state.jobs(include_finished=True) == []


GOOD_SPECS = [
    ("minimal", _spec()),
    ("network only", _spec(res=resources(0, 0, net=100))),
    ("gpu only", _spec(res=resources(0, 0, gpus=1))),
    ("max count", _spec(count=10_000)),
    ("max priority", _spec(priority=1000)),
    ("63-char name", _spec(name="a" * 63)),
    ("constraints", _mutate(lambda s: s.template.constraints.add(key="zone", op="in", values=["a", "b"]))),
]


@pytest.mark.parametrize(("case", "spec"), GOOD_SPECS, ids=[c[0] for c in GOOD_SPECS])
def test_good_job_spec_passes(case, spec):
    validate.validate_job_spec(spec)


BAD_IDS = [
    ("empty job id", "", "job id"),
    ("job id with dot", "a.b", "job id"),
    ("job id with space", "a b", "job id"),
    ("job id too long", "a" * 65, "job id"),
]


@pytest.mark.parametrize(("case", "job_id", "needle"), BAD_IDS, ids=[c[0] for c in BAD_IDS])
def test_bad_job_id_rejected(case, job_id, needle):
    h = Harness()
    result = h.apply(commands_pb2.SubmitJob(job_id=job_id, spec=job_spec()))
    assert isinstance(result, InvalidArgument)
    assert needle in str(result)


def _node(**kw):
    body = register_node("n1")
    for k, v in kw.items():
        if k == "reserve":
            body.reserve.CopyFrom(v)
        elif k == "capacity":
            body.capacity.CopyFrom(v)
        else:
            setattr(body, k, v)
    return body


BAD_NODES = [
    ("empty id", _node(node_id=""), "node id"),
    ("id with slash", _node(node_id="a/b"), "node id"),
    ("negative capacity", _node(capacity=resources(cpu=-1)), "negative"),
    ("absurd capacity", _node(capacity=resources(mem=2**51)), "above the limit"),
    (
        "reserve above capacity",
        _node(capacity=resources(cpu=1000), reserve=resources(cpu=2000, mem=0)),
        "exceeds",
    ),
    ("hostname too long", _node(hostname="h" * 2000), "hostname"),
]


@pytest.mark.parametrize(("case", "body", "needle"), BAD_NODES, ids=[c[0] for c in BAD_NODES])
def test_bad_node_registration_rejected(case, body, needle):
    with pytest.raises(InvalidArgument) as exc:
        validate.validate_register_node(body)
    assert needle in str(exc.value)
    h = Harness()
    before = h.state.digest()
    assert isinstance(h.apply(body), InvalidArgument)
    assert h.state.digest() == before
    assert h.state.nodes() == []
