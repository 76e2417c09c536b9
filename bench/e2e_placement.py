"""Benchmark: end-to-end placement -- jobs submitted until every task is acknowledged by its agent.

Starts 3 real controller processes (default settings) and --generators
load-generator processes (bench/simagents.py) holding --agents simulated
agents on AgentService.Connect streams to the leader. A simulated agent
reports every second and, when a DesiredTasks brings new assignments, at
once sends TaskEvent STARTED for each (no processes are started: this
measures the control plane). When every node is READY, --jobs jobs of
--tasks-per-job tasks are submitted through lepton.client.LeptonClient from
16 threads as fast as the leader takes them; the clock runs from the first
submit until GetClusterStatus (on the leader) counts every task RUNNING,
i.e. each task was placed, committed, pushed to its agent, acknowledged and
the acknowledgement committed through Raft.

    python bench/e2e_placement.py [--agents 5000] [--jobs 500] [--tasks-per-job 100] [--quick]

Target (design brief § 9): 50,000 tasks in 500 jobs on 5,000 simulated
agents, 3 controllers: >= 5,000 tasks/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from simagents import Cluster, LoadGenerator, exit_on_sigterm  # noqa: E402

from lepton.client import LeptonClient  # noqa: E402
from lepton.errors import LeptonError  # noqa: E402
from lepton.v1 import types_pb2  # noqa: E402


def cpu_seconds(pid: int) -> float:
    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except psutil.Error:
        return 0.0


def status(client: LeptonClient, failures: list[str]):
    """GetClusterStatus(stale) from the leader; None (and the error noted) when a call fails under load."""
    try:
        return client.cluster_status(stale=True)
    except Exception as e:  # noqa: BLE001 - counted and printed: polls must not end the run
        failures.append(f"{type(e).__name__}: {e}"[:160])
        return None


def job_spec(i: int, count: int) -> types_pb2.JobSpec:
    return types_pb2.JobSpec(
        name=f"e2e-{i}",
        count=count,
        template=types_pb2.TaskTemplate(
            command="sleep",
            args=["3600"],
            resources=types_pb2.Resources(cpu_millis=500, memory_bytes=2**30),
        ),
    )


def run(args) -> dict:
    cluster = Cluster(3, log_level=args.log_level)
    gens: list[LoadGenerator] = []
    try:
        cluster.start()
        rid, leader = cluster.leader()
        per = [
            args.agents // args.generators + (1 if i < args.agents % args.generators else 0)
            for i in range(args.generators)
        ]
        addresses = ",".join([leader, *(a for a in cluster.api_addresses if a != leader)])
        gens = [LoadGenerator(addresses, n, prefix=f"e2e{i}", ack=True) for i, n in enumerate(per) if n]
        for g in gens:
            g.start_reading()
        client = LeptonClient([leader, *cluster.api_addresses], timeout=30)
        t_conn = time.monotonic()
        poll_failures: list[str] = []
        while True:
            st = status(client, poll_failures)
            if st is not None and st.nodes_ready >= args.agents:
                break
            if time.monotonic() - t_conn > 120 + args.agents / 20:
                raise TimeoutError(f"not every node ready: {st}; {poll_failures[-3:]}")
            time.sleep(0.5)
        connect_s = time.monotonic() - t_conn
        time.sleep(args.settle)
        total = args.jobs * args.tasks_per_job
        pids = {f"controller {r}{' (leader)' if r == rid else ''}": cluster.pid(r) for r in cluster.ids}
        pids.update({f"generator {i}": g.pid for i, g in enumerate(gens)})
        cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
        host0 = psutil.cpu_times()
        submitted_at: list[float] = []
        lock = threading.Lock()

        retries = [0]

        def submit(i: int) -> None:
            # The request id makes a retry safe: a job whose first attempt was
            # committed (e.g. just before a leader change) is returned, not made twice.
            rid_ = uuid.uuid4().hex
            for attempt in range(10):
                try:
                    client.submit_job(job_spec(i, args.tasks_per_job), request_id=rid_)
                    break
                except LeptonError:
                    if attempt == 9:
                        raise
                    with lock:
                        retries[0] += 1
                    time.sleep(0.5)
            with lock:
                submitted_at.append(time.monotonic())

        term0 = client.cluster_status().term
        t0 = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(submit, i) for i in range(args.jobs)]
            # Poll while submitting too: the clock stops when the last task runs.
            for f in futures:
                f.result()
        t_submitted = time.monotonic() - t0
        t_placed = None
        while True:
            st = status(client, poll_failures)
            if st is None:
                time.sleep(0.1)
                continue
            by = dict(st.tasks_by_state)
            running = by.get("running", 0)
            pending = by.get("pending", 0)
            if t_placed is None and pending == 0 and sum(by.values()) >= total:
                t_placed = time.monotonic() - t0
            if running >= total:
                break
            if time.monotonic() - t0 > args.timeout:
                raise TimeoutError(f"after {args.timeout:g} s: {by}")
            time.sleep(0.25)
        elapsed = time.monotonic() - t0
        host1 = psutil.cpu_times()
        cpu = {k: cpu_seconds(p) - cpu0[k] for k, p in pids.items()}
        host_busy = sum(host1) - sum(host0) - (host1.idle - host0.idle) - (host1.iowait - host0.iowait)
        term1 = client.cluster_status().term
        nodes_used = sum(1 for n in client.list_nodes(stale=True) if n.status == types_pb2.NODE_STATUS_READY)
        client.close()
        return {
            "total": total,
            "connect_s": connect_s,
            "submitted_s": t_submitted,
            "placed_s": t_placed or elapsed,
            "elapsed": elapsed,
            "cpu": cpu,
            "host_cpu": 100 * host_busy / elapsed,
            "nodes_ready": nodes_used,
            "gen": [g.latest for g in gens],
            "poll_failures": poll_failures,
            "terms": (term0, term1),
            "submit_retries": retries[0],
            "logs": str(cluster.root),
        }
    finally:
        for g in gens:
            g.stop()
        cluster.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=5000)
    ap.add_argument("--jobs", type=int, default=500)
    ap.add_argument("--tasks-per-job", type=int, default=100)
    ap.add_argument("--generators", type=int, default=2, help="load-generator processes")
    ap.add_argument("--settle", type=float, default=5.0, help="wait after every node is ready")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument(
        "--log-level", default="WARNING", help="controllers' log level (logs stay in the temp dir)"
    )
    ap.add_argument("--quick", action="store_true", help="500 agents, 50 jobs x 100 tasks, 1 generator")
    args = ap.parse_args()
    exit_on_sigterm()
    if args.quick:
        args.agents, args.jobs, args.tasks_per_job, args.generators = 500, 50, 100, 1
    total = args.jobs * args.tasks_per_job
    print(
        f"end-to-end placement: 3 controllers, {args.agents} simulated agents in {args.generators} "
        f"generator process(es), {args.jobs} jobs x {args.tasks_per_job} tasks = {total}, "
        f"{psutil.cpu_count()} CPUs shared"
    )
    r = run(args)
    print(f"  agents connected and ready in {r['connect_s']:.1f} s")
    print(f"  all {args.jobs} jobs accepted at   {r['submitted_s']:6.2f} s")
    print(f"  no task pending at         {r['placed_s']:6.2f} s")
    print(
        f"  every task RUNNING at      {r['elapsed']:6.2f} s  -> {total / r['elapsed']:,.0f} tasks/s end to end"
    )
    print(f"  CPU seconds during the run ({r['elapsed']:.1f} s wall, host {r['host_cpu']:.0f} % of 200 %):")
    for k, v in r["cpu"].items():
        print(f"    {k:26s} {v:6.1f} s ({100 * v / r['elapsed']:.0f} % of a core)")
    for i, g in enumerate(r["gen"]):
        print(
            f"  generator {i}: {g.get('assigned', 0)} assignments seen, {g.get('events', 0)} events sent, "
            f"{g.get('errors', 0)} stream errors {g.get('error_kinds', {})}, "
            f"{g.get('leader_changes', 0)} leader changes followed"
        )
        if g.get("error_samples"):
            print(f"    e.g. {g['error_samples'][:3]}")
    if r["poll_failures"]:
        print(f"  {len(r['poll_failures'])} status polls failed, e.g. {r['poll_failures'][:2]}")
    if r["terms"][1] != r["terms"][0]:
        print(
            f"  LEADER CHANGED during the run: term {r['terms'][0]} -> {r['terms'][1]} "
            f"({r['submit_retries']} submit retries)"
        )
    print(f"  controller logs: {r['logs']}")
    print("target: >= 5,000 tasks/s (50,000 tasks, 500 jobs, 5,000 agents)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
