"""Every lepton-ctl command against a real cluster: 3 lepton-controller processes + 2 lepton-agents.

One cluster per module (starting it is the expensive part); the tests run in
file order and build on each other like an operator's session: look at the
cluster, submit the idea's worked example (network is the binding dimension),
run a job from flags, cordon/drain, cancel, follow events, and finally kill
the leader and check the CLI finds the new one. Output is parsed from
`-o json`. Waits poll for a state with a generous deadline; nothing asserts
on how long something took.

Task commands carry a unique marker in their argv so that teardown can find
and kill any task process an agent left behind, and only those.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.support.procs import ControllerCluster

ROOT = Path(__file__).resolve().parent.parent
_SCRIPT = Path(sys.executable).with_name("lepton-ctl")
CTL = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "leptonctl.main"]
MARKER = f"lepton-cli-test-{uuid.uuid4().hex[:12]}"
SLEEP = ["python3", "-c", "import sys, time; time.sleep(3600)", MARKER]

pytestmark = pytest.mark.timeout(600)


class Agent:
    def __init__(self, node_id: str, controllers: str, root: Path, *flags: str) -> None:
        self.node_id = node_id
        self.log = root / f"agent-{node_id}.log"
        argv = [
            sys.executable, "-m", "agent.main", "--controllers", controllers, "--node-id", node_id,
            "--data-dir", str(root / f"agent-{node_id}"), "--drain-on-exit", *flags,
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )  # fmt: skip

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # --drain-on-exit: it stops its tasks
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def kill_marked_tasks() -> None:
    """Kills task processes of this module (argv holds MARKER) that outlived their agent."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if MARKER.encode() in argv:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


class Env:
    def __init__(self, root: Path) -> None:
        self.controllers = ControllerCluster(root, n=3)
        self.addresses = ",".join(self.controllers.api_addresses)
        self.agents: list[Agent] = []
        self.root = root

    def ctl(self, *args: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        env = dict(os.environ)
        env.pop("LEPTON_CONTROLLERS", None)
        return subprocess.run(
            [*CTL, "--controllers", self.addresses, *args],
            input=stdin, capture_output=True, text=True, env=env, timeout=timeout,
        )  # fmt: skip

    def json(self, *args: str):
        r = self.ctl("-o", "json", *args)
        assert r.returncode == 0, f"lepton-ctl {' '.join(args)}: rc={r.returncode} {r.stderr}"
        return json.loads(r.stdout)

    def wait_for(self, what: str, check, deadline: float = 60.0):
        """Polls `check()` until it returns something truthy; fails with `what` after `deadline`."""
        end = time.monotonic() + deadline
        last = None
        while time.monotonic() < end:
            try:
                last = check()
            except AssertionError as e:
                last = e
            else:
                if last:
                    return last
            time.sleep(0.3)
        pytest.fail(f"timed out waiting for {what}; last: {last}\n{self.logs()}")

    def logs(self) -> str:
        tails = [self.controllers.logs()]
        for a in self.agents:
            try:
                tails.append(f"--- {a.log.name} ---\n" + "\n".join(a.log.read_text().splitlines()[-20:]))
            except OSError:
                pass
        return "\n".join(tails)

    def job(self, name: str) -> dict:
        return self.json("jobs", "show", name)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-cluster")
    e = Env(root)
    try:
        e.controllers.start()
        # "big" is the idea's machine; "small" gives drains somewhere to move from.
        e.agents.append(
            Agent(
                "big",
                e.addresses,
                root,
                "--cpus",
                "100",
                "--memory",
                "1Ti",
                "--network",
                "10G",
                "--label",
                "zone=a",
            )
        )
        e.agents.append(
            Agent(
                "small",
                e.addresses,
                root,
                "--cpus",
                "4",
                "--memory",
                "8Gi",
                "--network",
                "1G",
                "--label",
                "zone=b",
            )
        )
        yield e
    finally:
        for a in e.agents:
            try:
                a.stop()
            except Exception:  # keep stopping the rest
                pass
        e.controllers.close()
        kill_marked_tasks()


def running_on(e: Env, job: str) -> str | None:
    tasks = e.job(job)["tasks"]
    return tasks[0]["node"] if tasks and tasks[0]["state"] == "running" else None


def test_cluster_status_and_members(env):
    def ready():
        d = env.json("cluster", "status")
        return d if d["leader"] and d["nodes_ready"] == 2 else None

    d = env.wait_for("a leader and two ready nodes", ready)
    assert d["term"] >= 1 and d["commit_index"] >= 1
    ids = {m["id"] for m in d["members"]}
    assert ids == {"c1", "c2", "c3"}
    leader = [m for m in d["members"] if m["role"] == "leader"]
    assert [m["id"] for m in leader] == [d["leader"]]
    assert leader[0]["api_address"] in env.addresses.split(",")
    members = env.json("cluster", "members")
    assert {m["id"] for m in members} == ids
    assert all(set(m) >= {"id", "api_address", "raft_address", "role", "healthy"} for m in members)
    table = env.ctl("cluster", "status")
    assert table.returncode == 0 and "Leader:" in table.stdout and d["leader"] in table.stdout


def test_nodes_list_and_show(env):
    nodes = {n["id"]: n for n in env.json("nodes", "list")}
    assert set(nodes) == {"big", "small"}
    big = nodes["big"]
    assert big["capacity"]["cpu_millis"] == 100_000
    assert big["capacity"]["memory_bytes"] == 2**40
    assert big["capacity"]["network_mbps"] == 10_000
    assert big["labels"] == {"zone": "a"} and big["state"] == "ready"
    for key in ("capacity", "allocatable", "allocated", "usage"):
        assert set(big[key]) >= {"cpu_millis", "memory_bytes", "network_mbps", "gpus"}
    shown = env.json("nodes", "show", "small")
    assert shown["id"] == "small" and shown["capacity"]["network_mbps"] == 1_000
    table = env.ctl("nodes", "list")
    assert table.returncode == 0 and "big" in table.stdout and "1Ti" in table.stdout


def test_worked_example_priority_decides_on_the_network(env, tmp_path):
    # The example file as shipped, with the marker added to each task's argv.
    text = (ROOT / "examples" / "worked-example.yaml").read_text()
    marked = text.replace('"import time; time.sleep(3600)"]', f'"import time; time.sleep(3600)", {MARKER}]')
    assert marked.count(MARKER) == 4
    f = tmp_path / "worked-example.yaml"
    f.write_text(marked)
    submitted = env.json("jobs", "submit", str(f))
    assert [j["name"] for j in submitted] == ["medical", "financial", "manufacturing", "transportation"]
    assert all(j["count"] == 1 and len(j["tasks"]) == 1 for j in submitted)

    # 10 Gbit/s on "big" (and 1 Gbit/s on "small", too little for any of them):
    # transportation (8G, priority 4) first, then only medical (2G) still fits.
    env.wait_for(
        "transportation and medical running on big",
        lambda: running_on(env, "transportation") == "big" and running_on(env, "medical") == "big",
    )
    for name in ("financial", "manufacturing"):
        j = env.job(name)
        # The CLI submits the file's jobs one RPC at a time, so a placement
        # round can run between them: a lower-priority job may start, then be
        # preempted when transportation arrives. A job that has started stays
        # RUNNING (docs/state-machine.md), so its expected state follows from
        # whether the event log shows one of its tasks started.
        started = env.json("events", "--job", j["id"], "--type", "task.started")
        assert j["state"] == ("running" if started else "pending"), j
        assert j["tasks"][0]["state"] == "pending" and j["tasks"][0]["node"] == ""
        assert j["tasks"][0]["reason"]
    big = env.json("nodes", "show", "big")
    assert big["allocated"]["network_mbps"] == 10_000
    assert big["allocated"]["cpu_millis"] == 50_000
    assert sorted(t["job_name"] for t in big["tasks"] if t["state"] == "running") == [
        "medical",
        "transportation",
    ]


def test_jobs_list_and_tasks_filters(env):
    jobs = {j["name"]: j for j in env.json("jobs", "list")}
    assert {"medical", "financial", "manufacturing", "transportation"} <= set(jobs)
    assert (
        jobs["transportation"]["priority"] == 4
        and jobs["transportation"]["resources"]["network_mbps"] == 8_000
    )
    pending = env.json("tasks", "list", "--state", "pending")
    assert {t["job_name"] for t in pending} >= {"financial", "manufacturing"}
    on_big = env.json("tasks", "list", "--node", "big", "--state", "running")
    assert {t["job_name"] for t in on_big} == {"medical", "transportation"}
    med = env.json("tasks", "list", "--job", jobs["medical"]["id"])
    assert [t["job_name"] for t in med] == ["medical"]
    table = env.ctl("tasks", "list")
    assert table.returncode == 0 and "transportation" in table.stdout


def test_jobs_run_cordon_and_drain(env):
    # Cordon big so the new job can only land on small...
    assert "cordoned" in env.json("nodes", "cordon", "big")["state"]
    run = env.json(
        "jobs", "run", "probe", "--cpu", "500m", "--memory", "64Mi", "--network", "0",
        "--constraint", "zone in (a,b)", "--priority", "9", "--", *SLEEP,
    )  # fmt: skip
    assert run["name"] == "probe" and run["command"] == SLEEP and run["constraints"] == ["zone in (a,b)"]
    env.wait_for("probe running on small", lambda: running_on(env, "probe") == "small")
    # ...then let big take work again and drain small: the probe has to move.
    assert "cordoned" not in env.json("nodes", "uncordon", "big")["state"]
    r = env.ctl("-o", "json", "nodes", "drain", "small", "--wait", "--deadline", "60s", timeout=120)
    assert r.returncode == 0, r.stderr + env.logs()
    assert "task(s) left" in r.stderr  # progress on stderr, JSON alone on stdout
    assert json.loads(r.stdout)["id"] == "small"
    env.wait_for("probe running on big", lambda: running_on(env, "probe") == "big")
    env.json("nodes", "uncordon", "small")


def test_cancel_job(env):
    d = env.json("jobs", "cancel", "medical")
    assert d["name"] == "medical" and d["state"] in ("cancelled", "running")
    env.wait_for("medical cancelled", lambda: env.job("medical")["state"] == "cancelled")
    env.wait_for(
        "medical's task stopped",
        lambda: env.job("medical")["tasks"][0]["state"] in ("stopped", "stopping", "succeeded", "failed"),
    )


def test_events_replay_and_filters(env):
    events = env.json("events")
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    types = {e["type"] for e in events}
    assert "job.submitted" in types and any(t.startswith("node.") for t in types)
    only_jobs = env.json("events", "--type", "job.")
    assert only_jobs and all(e["type"].startswith("job.") for e in only_jobs)
    # --since SEQ: the events after SEQ (pass the last one seen to resume).
    later = env.json("events", "--since", str(events[-2]["seq"]))
    assert [e["seq"] for e in later][:1] == [events[-1]["seq"]]
    med = env.job("medical")["id"]
    assert all(e["job_id"] == med for e in env.json("events", "--job", med))
    table = env.ctl("events", "--type", "job.")
    assert table.returncode == 0 and "job.submitted" in table.stdout


def test_events_follow_streams_new_events(env):
    env_vars = dict(os.environ)
    env_vars.pop("LEPTON_CONTROLLERS", None)
    since = env.json("events")[-1]["seq"]
    follower = subprocess.Popen(
        [*CTL, "--controllers", env.addresses, "-o", "json", "events", "--follow", "--since", str(since), "--type", "job."],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env_vars,
    )  # fmt: skip
    try:
        r = env.ctl("jobs", "run", "late", "--network", "0", "--", *SLEEP)
        assert r.returncode == 0, r.stderr
        late_id = env.job("late")["id"]
        # JSON Lines: one event per line, as they happen.
        while True:
            line = follower.stdout.readline()
            assert line, (
                f"event stream ended: {follower.stderr.read() if follower.poll() is not None else ''}"
            )
            e = json.loads(line)
            assert e["type"].startswith("job.") and e["seq"] > since
            if e["type"] == "job.submitted" and e["job_id"] == late_id:
                break
    finally:
        follower.kill()
        follower.wait(10)


def test_top_once(env):
    snap = env.json("top", "--once")
    nodes = {n["id"]: n for n in snap["nodes"]}
    assert set(nodes) == {"big", "small"} and nodes["big"]["tasks"] >= 2
    r = env.ctl("top", "--once")
    assert r.returncode == 0, r.stderr
    assert "big" in r.stdout and "small" in r.stdout and "net" in r.stdout and "10G" in r.stdout


def test_rebalance_plan_and_apply(env):
    plan = env.json("rebalance", "plan")
    assert plan["applied"] is False and isinstance(plan["moves"], list) and isinstance(plan["notes"], list)
    applied = env.json("rebalance", "apply")
    assert set(applied) == {"applied", "moves", "notes"}


def test_unknown_ids_exit_3(env):
    for args in (
        ("nodes", "show", "ghost"),
        ("jobs", "show", "ghost"),
        ("jobs", "cancel", "ghost"),
        ("nodes", "cordon", "ghost"),
    ):
        r = env.ctl(*args)
        assert r.returncode == 3, (args, r.returncode, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "ghost" in lines[0], r.stderr


def test_leader_killed_cli_finds_the_new_one(env):
    old = env.json("cluster", "status")["leader"]
    since = env.json("events")[-1]["seq"]
    env_vars = dict(os.environ)
    env_vars.pop("LEPTON_CONTROLLERS", None)
    # A follower of the event log opened before the kill must carry on after it.
    follower = subprocess.Popen(
        [*CTL, "--controllers", env.addresses, "-o", "json", "events", "--follow", "--since", str(since), "--type", "job."],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env_vars,
    )  # fmt: skip
    try:
        env.controllers.procs[old].kill()

        def new_leader():
            r = env.ctl("-o", "json", "cluster", "status")
            if r.returncode != 0:
                # While the election runs the CLI may say so (exit 4); that is fine.
                assert r.returncode == 4, r.stderr
                return None
            d = json.loads(r.stdout)
            return d if d["leader"] and d["leader"] != old else None

        d = env.wait_for("a new leader", new_leader)
        assert d["term"] >= 2
        # Reads and writes keep working through the surviving replicas.
        assert env.json("jobs", "show", "transportation")["state"] == "running"
        assert "cordoned" in env.json("nodes", "cordon", "small")["state"]
        after = env.json("jobs", "run", "after-failover", "--network", "0", "--", *SLEEP)["id"]
        seqs = []
        while True:
            line = follower.stdout.readline()
            assert line, (
                f"event stream ended: {follower.stderr.read() if follower.poll() is not None else ''}"
            )
            e = json.loads(line)
            seqs.append(e["seq"])
            if e["job_id"] == after and e["type"] == "job.submitted":
                break
        # No event twice and none out of order across the reconnect.
        assert seqs == sorted(set(seqs)) and seqs[0] > since
    finally:
        follower.kill()
        follower.wait(10)
