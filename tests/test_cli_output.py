"""lepton-ctl's presentation layer without a cluster: views (the JSON schema), tables, top, exit codes."""

from __future__ import annotations

import io
import json

import pytest

from lepton import errors
from lepton.v1 import control_pb2, types_pb2
from leptonctl import main, render, top, views


def sample_node() -> types_pb2.Node:
    n = types_pb2.Node(
        id="big", hostname="vm", state="ready,cordoned", status=types_pb2.NODE_STATUS_READY, cordoned=True
    )
    n.labels["zone"] = "a"
    n.capacity.CopyFrom(types_pb2.Resources(cpu_millis=100_000, memory_bytes=2**40, network_mbps=10_000))
    n.allocatable.CopyFrom(n.capacity)
    n.allocated.CopyFrom(
        types_pb2.Resources(cpu_millis=50_000, memory_bytes=250 * 2**30, network_mbps=10_000)
    )
    n.usage.CopyFrom(
        types_pb2.NodeUsage(cpu_millis=1_500, memory_used_bytes=2**30, network_mbps=40, gpus_busy=0)
    )
    return n


def test_node_view_has_documented_keys_and_integer_units():
    d = views.node(sample_node())
    assert set(d) >= {"id", "hostname", "state", "labels", "capacity", "allocatable", "allocated", "usage"}
    for key in ("capacity", "allocatable", "allocated", "usage"):
        assert {"cpu_millis", "memory_bytes", "network_mbps", "gpus"} <= set(d[key])
        assert all(isinstance(d[key][k], int) for k in ("cpu_millis", "memory_bytes", "network_mbps", "gpus"))
    assert d["capacity"]["memory_bytes"] == 2**40 and d["usage"]["memory_bytes"] == 2**30
    assert d["state"] == "ready,cordoned" and d["status"] == "ready"
    json.dumps(d)  # plain data only


def test_job_view_tasks_sorted_and_enums_short():
    job = types_pb2.Job(id="j", state=types_pb2.JOB_STATE_PENDING)
    job.spec.name, job.spec.priority, job.spec.count = "web", 3, 2
    job.spec.template.command = "sleep"
    job.spec.template.args.append("60")
    job.spec.template.constraints.add(key="zone", op="in", values=["a", "b"])
    tasks = [
        types_pb2.Task(
            id="j.1", index=1, state=types_pb2.TASK_STATE_PENDING, reason="insufficient network on 1 node"
        ),
        types_pb2.Task(id="j.0", index=0, node_id="big", state=types_pb2.TASK_STATE_RUNNING),
    ]
    d = views.job_detail(control_pb2.JobDetail(job=job, tasks=tasks))
    assert (d["id"], d["name"], d["priority"], d["count"], d["state"], d["type"]) == (
        "j",
        "web",
        3,
        2,
        "pending",
        "service",
    )
    assert d["command"] == ["sleep", "60"] and d["constraints"] == ["zone in (a,b)"]
    assert d["tasks"] == [
        {"id": "j.0", "node": "big", "state": "running", "reason": ""},
        {"id": "j.1", "node": "", "state": "pending", "reason": "insufficient network on 1 node"},
    ]


def test_unknown_enum_value_does_not_crash():
    assert views.task_state(99) == "unknown(99)"


def test_cluster_status_view():
    s = control_pb2.ClusterStatus(leader_id="c1", term=4, commit_index=17)
    s.members.add(id="c1", api_address="a:1", raft_address="a:2", role="leader", healthy=True)
    d = views.cluster_status(s)
    assert (d["leader"], d["term"], d["commit_index"]) == ("c1", 4, 17)
    assert d["members"] == [
        {
            "id": "c1",
            "api_address": "a:1",
            "raft_address": "a:2",
            "role": "leader",
            "healthy": True,
            "match_index": 0,
        }
    ]


def test_table_alignment_and_empty():
    text = render.table(("A", "LONGER"), [("xxxx", 1), ("y", None)])
    assert text.splitlines() == ["A     LONGER", "xxxx  1", "y"]
    assert render.table(("A",), [], "nothing here") == "nothing here"


def test_emit_formats():
    data = {"a": 1, "b": [1, 2]}
    for fmt, check in (("json", json.loads), ("yaml", __import__("yaml").safe_load)):
        out = io.StringIO()
        render.emit(data, fmt, lambda d: "human", out)
        assert check(out.getvalue()) == data
    out = io.StringIO()
    render.emit(data, "table", lambda d: "human", out)
    assert out.getvalue() == "human\n"


def test_top_frame_shows_use_and_reservations():
    snap = {"time_ms": 0, "nodes": [dict(views.node(sample_node()), tasks=2)]}
    text = top.frame(snap)
    assert "big" in text and "ready,cordoned" in text
    assert "[##########] 10G/10G 100%" in text  # network fully reserved
    assert "1.5/100 2%" in text and "50/100 50%" in text
    assert "gpu" not in text.split("\n", 2)[2]  # no GPU row for a node without GPUs
    assert top.bar(1, 0) == "[    -     ]"


@pytest.mark.parametrize(
    "err, code",
    [
        (errors.NotFound("x"), 3),
        (errors.Unavailable("x"), 4),
        (errors.NotLeader(), 4),
        (errors.InvalidArgument("x"), 5),
        (errors.AlreadyExists("x"), 6),
        (errors.FailedPrecondition("x"), 6),
        (errors.OutcomeUnknown("x"), 7),
        (errors.LeptonError("x"), 1),
    ],
)
def test_exit_codes(err, code):
    assert main.exit_code_for(err) == code
