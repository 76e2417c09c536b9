"""LeptonClient and lepton-ctl against small stand-in ControlService servers on loopback.

The stand-ins are real gRPC servers (127.0.0.1, ephemeral ports) in the test
process: a "leader" that answers from a tiny in-memory model, "followers"
that reject with FAILED_PRECONDITION + the NotLeader trailing metadata, a
leaderless follower, and replicas that fail a number of calls with
UNAVAILABLE. They check the client's failover, redirect and idempotency
logic without a real controller; the CLI is exercised as a subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc
import pytest
import yaml

from lepton import errors
from lepton.client import LeptonClient
from lepton.v1 import control_pb2, control_pb2_grpc, types_pb2

# -- the stand-in ----------------------------------------------------------------


class Model:
    """Shared cluster state for the stand-in replicas (what a real leader would know)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: dict[str, types_pb2.Job] = {}
        self.by_request: dict[str, str] = {}
        self.submits: list[str] = []  # request ids as received (retries included)
        self.tasks: list[types_pb2.Task] = []
        self.events: list[types_pb2.Event] = []
        self.new_event = threading.Condition(self.lock)
        node = types_pb2.Node(
            id="n1",
            hostname="host-1",
            address="127.0.0.1:7100",
            labels={"zone": "a"},
            status=types_pb2.NODE_STATUS_READY,
            state="ready",
            connected=True,
        )
        node.capacity.CopyFrom(
            types_pb2.Resources(cpu_millis=100_000, memory_bytes=2**40, network_mbps=10_000)
        )
        node.allocatable.CopyFrom(node.capacity)
        node.allocated.CopyFrom(
            types_pb2.Resources(cpu_millis=10_000, memory_bytes=50 * 2**30, network_mbps=2_000)
        )
        node.usage.CopyFrom(
            types_pb2.NodeUsage(
                cpu_millis=2_500, memory_used_bytes=8 * 2**30, network_mbps=120, cpu_percent=2.5
            )
        )
        self.nodes = {"n1": node}
        for i in range(3):
            self.add_event("node.joined" if i == 0 else "task.placed", f"event {i}", node_id="n1")

    def add_event(self, type_: str, message: str, **kw: str) -> None:
        with self.new_event:
            self.events.append(
                types_pb2.Event(
                    seq=len(self.events) + 1, time_ms=1_700_000_000_000, type=type_, message=message, **kw
                )
            )
            self.new_event.notify_all()

    def submit(self, req: control_pb2.SubmitJobRequest) -> control_pb2.JobDetail:
        with self.lock:
            self.submits.append(req.request_id)
            job_id = self.by_request.get(req.request_id)
            if job_id is None:
                job_id = f"job-{len(self.jobs) + 1}"
                self.by_request[req.request_id] = job_id
                job = types_pb2.Job(
                    id=job_id, spec=req.spec, state=types_pb2.JOB_STATE_RUNNING, request_id=req.request_id
                )
                self.jobs[job_id] = job
                for i in range(req.spec.count or 1):
                    self.tasks.append(
                        types_pb2.Task(
                            id=f"{job_id}.{i}",
                            job_id=job_id,
                            job_name=req.spec.name,
                            index=i,
                            node_id="n1",
                            state=types_pb2.TASK_STATE_RUNNING,
                            resources=req.spec.template.resources,
                        )
                    )
            return self.detail(job_id)

    def detail(self, job_id: str) -> control_pb2.JobDetail:
        job = self.jobs[job_id]
        return control_pb2.JobDetail(job=job, tasks=[t for t in self.tasks if t.job_id == job_id])

    def find_job(self, key: str) -> str | None:
        if key in self.jobs:
            return key
        return next((j.id for j in self.jobs.values() if j.spec.name == key), None)


class StandIn(control_pb2_grpc.ControlServiceServicer):
    """One replica. role: leader | follower (redirects to leader_address) | leaderless."""

    def __init__(self, model: Model, role: str, replica_id: str) -> None:
        self.model = model
        self.role = role
        self.id = replica_id
        self.address = ""
        self.leader_address = ""
        self.fail_next = 0  # answer this many calls with UNAVAILABLE
        self.fail_after_commit = 0  # SubmitJob: commit, then answer UNAVAILABLE (unknown outcome)
        self.calls: list[str] = []

    def _gate(self, context: grpc.ServicerContext, method: str) -> None:
        self.calls.append(method)
        if self.fail_next > 0:
            self.fail_next -= 1
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.id} is shutting down")
        if self.role == "follower":
            err = errors.NotLeader("c1", self.leader_address, 3)
            context.set_trailing_metadata(err.trailing_metadata())
            context.abort(err.code, str(err))
        if self.role == "leaderless":
            err = errors.NotLeader("", "", 3)
            context.set_trailing_metadata(err.trailing_metadata())
            context.abort(err.code, str(err))

    def GetClusterStatus(self, request, context):
        self._gate(context, "GetClusterStatus")
        s = control_pb2.ClusterStatus(
            leader_id="c1",
            leader_api_address=self.address,
            term=3,
            commit_index=42,
            applied_index=42,
            answered_by=self.id,
            nodes_total=1,
            nodes_ready=1,
            jobs_total=len(self.model.jobs),
        )
        s.members.add(
            id="c1", api_address=self.address, raft_address="127.0.0.1:7201", role="leader", healthy=True
        )
        s.members.add(
            id="c2",
            api_address="127.0.0.1:7002",
            raft_address="127.0.0.1:7202",
            role="follower",
            healthy=True,
        )
        s.tasks_by_state["running"] = len(self.model.tasks)
        return s

    def ListNodes(self, request, context):
        self._gate(context, "ListNodes")
        return control_pb2.ListNodesResponse(nodes=list(self.model.nodes.values()))

    def GetNode(self, request, context):
        self._gate(context, "GetNode")
        node = self.model.nodes.get(request.id)
        if node is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"node {request.id!r} not found")
        return control_pb2.NodeDetail(
            node=node, tasks=[t for t in self.model.tasks if t.node_id == request.id]
        )

    def _set_node(self, request, context, method, **flags):
        self._gate(context, method)
        node = self.model.nodes.get(request.id)
        if node is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"node {request.id!r} not found")
        for k, v in flags.items():
            setattr(node, k, v)
        node.state = "ready" + (",cordoned" if node.cordoned else "") + (",draining" if node.draining else "")
        return node

    def CordonNode(self, request, context):
        return self._set_node(request, context, "CordonNode", cordoned=True)

    def UncordonNode(self, request, context):
        return self._set_node(request, context, "UncordonNode", cordoned=False, draining=False)

    def DrainNode(self, request, context):
        node = self._set_node(request, context, "DrainNode", cordoned=True, draining=not request.cancel)
        if not request.cancel:
            # Move every task "elsewhere" at once: the drain is done by the next poll.
            for t in self.model.tasks:
                if t.node_id == request.id:
                    t.state = types_pb2.TASK_STATE_STOPPED
        return node

    def SubmitJob(self, request, context):
        self._gate(context, "SubmitJob")
        if not request.request_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request_id is required")
        detail = self.model.submit(request)
        if self.fail_after_commit > 0:
            self.fail_after_commit -= 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "connection lost after commit")
        return detail

    def GetJob(self, request, context):
        self._gate(context, "GetJob")
        job_id = self.model.find_job(request.id)
        if job_id is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"job {request.id!r} not found")
        return self.model.detail(job_id)

    def ListJobs(self, request, context):
        self._gate(context, "ListJobs")
        return control_pb2.ListJobsResponse(jobs=list(self.model.jobs.values()))

    def CancelJob(self, request, context):
        self._gate(context, "CancelJob")
        job_id = self.model.find_job(request.id)
        if job_id is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"job {request.id!r} not found")
        self.model.jobs[job_id].state = types_pb2.JOB_STATE_CANCELLED
        return self.model.detail(job_id)

    def ListTasks(self, request, context):
        self._gate(context, "ListTasks")
        tasks = [
            t
            for t in self.model.tasks
            if (not request.job_id or t.job_id == request.job_id)
            and (not request.node_id or t.node_id == request.node_id)
            and (not request.state or t.state == request.state)
        ]
        return control_pb2.ListTasksResponse(tasks=tasks)

    def PlanRebalance(self, request, context):
        self._gate(context, "PlanRebalance")
        plan = control_pb2.RebalancePlan(notes=["n1: below high watermark (25% < 80%)"])
        return plan

    def ApplyRebalance(self, request, context):
        self._gate(context, "ApplyRebalance")
        plan = control_pb2.RebalancePlan(applied=True)
        plan.moves.add(
            task_id="job-1.0",
            job_id="job-1",
            from_node="n1",
            to_node="n2",
            reason="n1 hot",
            score=0.5,
            kind="make_before_break",
        )
        return plan

    def WatchEvents(self, request, context):
        self._gate(context, "WatchEvents")
        sent = request.since_seq
        while context.is_active():
            with self.model.new_event:
                backlog = [e for e in self.model.events if e.seq > sent]
                if not backlog:
                    if not request.follow:
                        return
                    self.model.new_event.wait(0.2)
                    continue
            for e in backlog:
                sent = e.seq
                if request.types and not any(e.type.startswith(p) for p in request.types):
                    continue
                yield e
            if not request.follow:
                return


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self) -> None:
        self.model = Model()
        self.servers: list[grpc.Server] = []
        self.replicas: dict[str, StandIn] = {}

    def add(self, replica_id: str, role: str) -> StandIn:
        servicer = StandIn(self.model, role, replica_id)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        control_pb2_grpc.add_ControlServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servicer.address = f"127.0.0.1:{port}"
        self.servers.append(server)
        self.replicas[replica_id] = servicer
        return servicer

    def close(self) -> None:
        for s in self.servers:
            s.stop(grace=None)


@pytest.fixture
def cluster():
    c = Cluster()
    leader = c.add("c1", "leader")
    for rid in ("c2", "c3"):
        c.add(rid, "follower").leader_address = leader.address
    try:
        yield c
    finally:
        c.close()


def dead_address() -> str:
    # A port nobody listens on: bound by the OS, then released.
    return f"127.0.0.1:{free_port()}"


# -- client --------------------------------------------------------------------------


def test_follows_not_leader_redirect(cluster):
    follower = cluster.replicas["c2"]
    with LeptonClient(follower.address, timeout=5) as client:
        status = client.cluster_status()
        assert status.answered_by == "c1"
        assert follower.calls == ["GetClusterStatus"]
        # The leader is remembered: the next call goes straight there.
        client.list_nodes()
        assert follower.calls == ["GetClusterStatus"]


def test_skips_unreachable_controllers(cluster):
    addrs = [dead_address(), dead_address(), cluster.replicas["c3"].address]
    with LeptonClient(addrs, timeout=5) as client:
        assert [n.id for n in client.list_nodes()] == ["n1"]


def test_none_reachable_names_every_address():
    addrs = [dead_address(), dead_address()]
    with LeptonClient(",".join(addrs), timeout=5) as client, pytest.raises(errors.Unavailable) as info:
        client.list_nodes()
    for a in addrs:
        assert a in str(info.value)


def test_redirect_to_unreachable_leader_then_leaderless_times_out(cluster):
    c2 = cluster.replicas["c2"]
    c2.leader_address = dead_address()
    lonely = cluster.add("c4", "leaderless")
    with (
        LeptonClient([c2.address, lonely.address], timeout=1.0) as client,
        pytest.raises(errors.Unavailable) as info,
    ):
        client.cluster_status()
    msg = str(info.value)
    assert c2.address in msg and lonely.address in msg and c2.leader_address in msg
    # Leaderless replicas are asked again while an election may finish.
    assert len(lonely.calls) >= 2


def test_redirect_loop_is_bounded(cluster):
    a, b = cluster.add("x1", "follower"), cluster.add("x2", "follower")
    a.leader_address, b.leader_address = b.address, a.address
    with LeptonClient(a.address, timeout=5) as client, pytest.raises(errors.Unavailable) as info:
        client.list_nodes()
    assert "redirects" in str(info.value)
    assert len(a.calls) + len(b.calls) <= 7


def test_retry_after_unknown_outcome_reuses_request_id(cluster):
    leader = cluster.replicas["c1"]
    leader.fail_after_commit = 1  # the first attempt commits but the reply is lost
    spec = types_pb2.JobSpec(name="once", count=1, template=types_pb2.TaskTemplate(command="sleep"))
    # A second address so that the client has somewhere to retry; it redirects to the leader.
    with LeptonClient([leader.address, cluster.replicas["c2"].address], timeout=5) as client:
        detail = client.submit_job(spec)
    assert len(cluster.model.submits) == 2
    assert cluster.model.submits[0] == cluster.model.submits[1]
    assert len(cluster.model.jobs) == 1
    assert detail.job.id == "job-1"


def test_each_submit_call_gets_its_own_request_id(cluster):
    with LeptonClient(cluster.replicas["c1"].address, timeout=5) as client:
        client.submit_job({"name": "a", "command": "sleep 1"})
        client.submit_job({"name": "a", "command": "sleep 1"})
        client.submit_job({"name": "b", "command": "sleep 1"}, request_id="fixed")
    ids = cluster.model.submits
    assert len(set(ids)) == 3 and ids[2] == "fixed"


def test_errors_are_lepton_errors(cluster):
    with LeptonClient(cluster.replicas["c1"].address, timeout=5) as client:
        with pytest.raises(errors.NotFound):
            client.get_node("nope")
        with pytest.raises(errors.InvalidArgument):
            client.list_tasks(state="sleepy")


def test_transient_unavailable_moves_to_next_replica(cluster):
    leader = cluster.replicas["c1"]
    leader.fail_next = 1
    with LeptonClient([leader.address, cluster.replicas["c2"].address], timeout=5) as client:
        assert client.cluster_status().leader_id == "c1"


def test_watch_events_redirects_and_filters(cluster):
    with LeptonClient(cluster.replicas["c3"].address, timeout=5) as client:
        seqs = [e.seq for e in client.watch_events()]
        assert seqs == [1, 2, 3]
        assert [e.seq for e in client.watch_events(since_seq=1)] == [2, 3]
        assert [e.type for e in client.watch_events(types=["node."])] == ["node.joined"]


def test_watch_events_follow_yields_new_events(cluster):
    with LeptonClient(cluster.replicas["c1"].address, timeout=5) as client:
        stream = client.watch_events(since_seq=2, follow=True)
        assert next(stream).seq == 3
        cluster.model.add_event("job.submitted", "later")
        assert next(stream).type == "job.submitted"
        stream.close()


def test_wait_drained_reports_progress(cluster):
    with LeptonClient(cluster.replicas["c1"].address, timeout=5) as client:
        client.submit_job({"name": "w", "command": "sleep 1", "count": 2})
        assert len(client.tasks_on_node("n1")) == 2
        client.drain("n1")
        seen: list[int] = []
        client.wait_drained("n1", timeout=5, poll=0.05, progress=lambda left: seen.append(len(left)))
        assert seen[-1] == 0


# -- lepton-ctl against the stand-in ---------------------------------------------------

# The installed console script when there is one, else the same entry point via -m.
_SCRIPT = Path(sys.executable).with_name("lepton-ctl")
CTL = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "leptonctl.main"]


def ctl(*args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.pop("LEPTON_CONTROLLERS", None)
    full_env.update(env or {})
    return subprocess.run(
        [*CTL, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
    )


def ctl_json(cluster: Cluster, *args: str):
    # Through a follower, so every command also exercises the redirect.
    r = ctl("--controllers", cluster.replicas["c2"].address, "-o", "json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_cli_cluster_status_json(cluster):
    d = ctl_json(cluster, "cluster", "status")
    assert d["leader"] == "c1" and d["term"] == 3 and d["commit_index"] == 42
    assert [set(m) >= {"id", "api_address", "raft_address", "role", "healthy"} for m in d["members"]] == [
        True,
        True,
    ]
    members = ctl_json(cluster, "cluster", "members")
    assert [m["role"] for m in members] == ["leader", "follower"]


def test_cli_nodes_json_and_table(cluster):
    (n,) = ctl_json(cluster, "nodes", "list")
    assert (
        n["id"] == "n1"
        and n["hostname"] == "host-1"
        and n["state"] == "ready"
        and n["labels"] == {"zone": "a"}
    )
    assert n["capacity"] == {
        "cpu_millis": 100_000,
        "memory_bytes": 2**40,
        "network_mbps": 10_000,
        "gpus": 0,
        "gpu_memory_bytes": 0,
    }
    assert n["allocated"]["network_mbps"] == 2_000 and n["usage"]["cpu_millis"] == 2_500
    r = ctl("--controllers", cluster.replicas["c1"].address, "nodes", "list")
    assert r.returncode == 0
    assert "10/100" in r.stdout and "50Gi/1Ti" in r.stdout and "2G/10G" in r.stdout
    shown = ctl_json(cluster, "nodes", "show", "n1")
    assert shown["id"] == "n1" and shown["tasks"] == []
    assert ctl_json(cluster, "nodes", "cordon", "n1")["cordoned"] is True
    assert ctl_json(cluster, "nodes", "uncordon", "n1")["cordoned"] is False


def test_cli_jobs_lifecycle(cluster, tmp_path):
    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        "name: web\npriority: 5\ncount: 2\ncommand: sleep 3600\nresources: {cpu: 500m, memory: 1Gi}\n"
    )
    j = ctl_json(cluster, "jobs", "submit", str(job_file))
    assert (j["name"], j["priority"], j["count"], j["state"]) == ("web", 5, 2, "running")
    assert [t["state"] for t in j["tasks"]] == ["running", "running"]
    assert set(j["tasks"][0]) >= {"id", "node", "state", "reason"}
    assert j["resources"]["cpu_millis"] == 500 and j["resources"]["memory_bytes"] == 2**30

    r = ctl(
        "--controllers", cluster.replicas["c1"].address, "-o", "json", "jobs", "run", "probe",
        "--cpu", "2", "--memory", "512Mi", "--network", "100M", "--count", "1", "--priority", "3",
        "--label", "zone=a", "--constraint", "gpu exists", "--type", "batch",
        "--", "python3", "-c", "print(1)",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    run = json.loads(r.stdout)
    assert run["command"] == ["python3", "-c", "print(1)"] and run["type"] == "batch"
    assert run["resources"] == {
        "cpu_millis": 2000,
        "memory_bytes": 512 * 2**20,
        "network_mbps": 100,
        "gpus": 0,
        "gpu_memory_bytes": 0,
    }
    assert run["constraints"] == ["zone=a", "gpu exists"]

    listed = ctl_json(cluster, "jobs", "list")
    assert [x["name"] for x in listed] == ["web", "probe"]
    assert ctl_json(cluster, "jobs", "show", "web")["id"] == j["id"]
    tasks = ctl_json(cluster, "tasks", "list", "--job", j["id"], "--state", "running")
    assert len(tasks) == 2 and tasks[0]["node"] == "n1"
    assert ctl_json(cluster, "jobs", "cancel", "web")["state"] == "cancelled"


def test_cli_submit_from_stdin_yaml_output(cluster):
    text = "name: a\ncommand: x\n---\nname: b\ncommand: y\n"
    r = ctl("--controllers", cluster.replicas["c1"].address, "jobs", "submit", "-", "-o", "yaml", stdin=text)
    assert r.returncode == 0, r.stderr
    jobs = yaml.safe_load(r.stdout)
    assert [x["name"] for x in jobs] == ["a", "b"]


def test_cli_rebalance_events_top(cluster):
    plan = ctl_json(cluster, "rebalance", "plan")
    assert plan == {"applied": False, "moves": [], "notes": ["n1: below high watermark (25% < 80%)"]}
    applied = ctl_json(cluster, "rebalance", "apply")
    assert applied["applied"] and applied["moves"][0]["to_node"] == "n2"
    ev = ctl_json(cluster, "events", "--since", "1")
    assert [e["seq"] for e in ev] == [2, 3] and ev[0]["type"] == "task.placed"
    top = ctl_json(cluster, "top", "--once")
    assert top["nodes"][0]["id"] == "n1"
    r = ctl("--controllers", cluster.replicas["c1"].address, "top", "--once")
    assert r.returncode == 0, r.stderr
    assert "n1" in r.stdout and "2.5/100" in r.stdout and "10/100" in r.stdout


def test_cli_drain_wait_shows_progress(cluster):
    with LeptonClient(cluster.replicas["c1"].address) as client:
        client.submit_job({"name": "d", "command": "sleep 1", "count": 2})
    r = ctl(
        "--controllers",
        cluster.replicas["c1"].address,
        "-o",
        "json",
        "nodes",
        "drain",
        "n1",
        "--wait",
        "--deadline",
        "30s",
    )
    assert r.returncode == 0, r.stderr
    assert "0 task(s) left" in r.stderr
    assert json.loads(r.stdout)["draining"] is True


def test_cli_not_found_and_env_controllers(cluster):
    r = ctl("jobs", "show", "ghost", env={"LEPTON_CONTROLLERS": cluster.replicas["c2"].address})
    assert r.returncode == 3
    assert r.stderr.strip() == "lepton-ctl: job 'ghost' not found"


def test_cli_top_refreshes_until_interrupted(cluster):
    proc = subprocess.Popen(
        [*CTL, "--controllers", cluster.replicas["c1"].address, "top", "--interval", "0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        frames = 0
        while frames < 2:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            if line.startswith("\x1b[H\x1b[2J"):
                frames += 1
                assert "lepton top" in line
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
