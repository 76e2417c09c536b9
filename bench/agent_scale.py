"""Benchmark: agent reports at the leader -- leader CPU and report-to-state latency for N agents at 1 Hz.

Starts ONE real controller process (a single-voter cluster: reports are
leader-only soft state and never go through Raft, so followers would only
add their own CPU to this shared 2-core machine) with --metrics-listen, and
a load-generator process (bench/simagents.py) whose simulated agents each
open AgentService.Connect, send Hello, then a Report every second with
±5 % jitter, stamped with time_ms at send. For each agent count it waits
until every stream is connected and settled, then over --seconds measures:

- the controller process's CPU time (psutil), as % of one core;
- reports/s processed by the leader (lepton_agent_reports_total delta);
- report-to-state latency: the leader's `lepton_agent_report_lag_seconds`
  histogram, observed in SessionRegistry.record_report right after the
  report is stored in the leader's live state, as (receive time - the
  agent's time_ms stamp). Same clock on loopback, so no skew; percentiles
  are interpolated within histogram buckets (bounds 5/10/25/50/100 ms...);
- whether the load generator kept up: its actual send rate and late sends.
  When it falls behind (it shares the two cores with the controller), the
  line says so: the leader then saw less than the nominal load.

    python bench/agent_scale.py [--agents 500,1000,2000,5000] [--seconds 20] [--quick]

Target (design brief § 9): 5,000 agents at 1 Hz using < 1 core; p99 report-to-state < 50 ms.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.request

import psutil
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from simagents import Cluster, LoadGenerator, exit_on_sigterm  # noqa: E402

LAG = "lepton_agent_report_lag_seconds"


def scrape(address: str) -> tuple[float, list[tuple[float, float]]]:
    """(reports counter, cumulative lag buckets [(le, count)]) from the controller's /metrics."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as r:
        text = r.read().decode()
    reports = 0.0
    buckets = []
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "lepton_agent_reports_total":
                reports = s.value
            elif s.name == LAG + "_bucket":
                buckets.append((float(s.labels["le"]), s.value))
    buckets.sort()
    return reports, buckets


def percentile(before, after, q: float) -> float:
    """Percentile q (0..1) in seconds of the observations between two histogram scrapes, interpolated."""
    counts = [(le, a - b) for (le, a), (_, b) in zip(after, before, strict=True)]
    total = counts[-1][1]
    if total <= 0:
        return float("nan")
    rank = q * total
    lo_le, lo_n = 0.0, 0.0
    for le, n in counts:
        if n >= rank:
            if le == float("inf"):
                return lo_le  # beyond the last bound: report the bound ("at least")
            return lo_le + (le - lo_le) * (rank - lo_n) / max(n - lo_n, 1e-9)
        lo_le, lo_n = le, n
    return counts[-1][0]


def cpu_seconds(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def run_one(n: int, seconds: float, settle: float) -> dict:
    cluster = Cluster(1, metrics=True)
    gen = None
    try:
        cluster.start()
        rid, leader = cluster.leader()
        gen = LoadGenerator(leader, n, prefix=f"scale{n}")
        gen.start_reading()
        end = time.monotonic() + 60 + n / 50
        while gen.latest.get("connected", 0) < n:
            if time.monotonic() > end:
                raise TimeoutError(f"only {gen.latest.get('connected', 0)} of {n} agents connected")
            time.sleep(0.5)
        time.sleep(settle)  # registrations and first desired sets out of the way
        ctl = psutil.Process(cluster.pid(rid))
        lg = psutil.Process(gen.pid)
        reports0, lag0 = scrape(cluster.metrics[rid])
        sent0 = gen.latest
        c0, g0, t0 = cpu_seconds(ctl), cpu_seconds(lg), time.monotonic()
        host0 = psutil.cpu_times()
        time.sleep(seconds)
        c1, g1, t1 = cpu_seconds(ctl), cpu_seconds(lg), time.monotonic()
        host1 = psutil.cpu_times()
        reports1, lag1 = scrape(cluster.metrics[rid])
        sent1 = gen.latest
        wall = t1 - t0
        host_busy = sum(host1) - sum(host0) - (host1.idle - host0.idle) - (host1.iowait - host0.iowait)
        return {
            "agents": n,
            "wall": wall,
            "leader_cpu": 100 * (c1 - c0) / wall,
            "gen_cpu": 100 * (g1 - g0) / wall,
            "host_cpu": 100 * host_busy / wall,
            "processed": (reports1 - reports0) / wall,
            "sent": (sent1["reports"] - sent0["reports"]) / max(sent1["t"] - sent0["t"], 1e-9),
            "late": sent1["late_sends"] - sent0["late_sends"],
            "errors": sent1["errors"] - sent0["errors"],  # streams that failed inside the window
            "errors_total": sent1["errors"],
            "error_samples": sent1.get("error_samples", [])[:2],
            "error_kinds": sent1.get("error_kinds", {}),
            "logs": str(cluster.root),
            "connected": sent1["connected"],
            "p50": percentile(lag0, lag1, 0.50) * 1000,
            "p99": percentile(lag0, lag1, 0.99) * 1000,
        }
    finally:
        if gen is not None:
            gen.stop()
        cluster.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", default="500,1000,2000,5000", help="comma-separated agent counts")
    ap.add_argument("--seconds", type=float, default=20.0, help="measurement window per count")
    ap.add_argument("--settle", type=float, default=5.0, help="wait after all agents connected")
    ap.add_argument("--quick", action="store_true", help="500,1000 agents, 8 s windows")
    args = ap.parse_args()
    exit_on_sigterm()
    counts = [int(x) for x in args.agents.split(",")]
    if args.quick:
        counts, args.seconds, args.settle = [500, 1000], 8.0, 3.0
    print(
        f"agent reports at the leader: 1 controller (single voter), 1 load-generator process, "
        f"reports at 1 Hz, {args.seconds:g} s windows, {psutil.cpu_count()} CPUs shared"
    )
    print(
        f"{'agents':>6} {'leader CPU':>10} {'reports/s':>9} {'sent/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'generator CPU':>13} {'host CPU':>8}  note"
    )
    for n in counts:
        r = run_one(n, args.seconds, args.settle)
        notes = []
        if r["sent"] < 0.95 * n or r["late"] > 0.01 * r["sent"] * r["wall"]:
            notes.append(f"GENERATOR BEHIND: sent {r['sent']:.0f}/s of {n}/s nominal, {r['late']} late sends")
        if r["processed"] < 0.95 * r["sent"]:
            notes.append("leader processed fewer than were sent")
        if r["connected"] < n or r["errors"]:
            notes.append(f"{r['connected']} connected, {r['errors']} streams failed in the window")
        if r["errors_total"]:
            notes.append(
                f"{r['errors_total']} stream errors since start {r['error_kinds']}, e.g. {r['error_samples']} "
                f"(controller log in {r['logs']})"
            )
        print(
            f"{n:>6} {r['leader_cpu']:>9.1f}% {r['processed']:>9.0f} {r['sent']:>7.0f} {r['p50']:>7.1f} "
            f"{r['p99']:>7.1f} {r['gen_cpu']:>12.1f}% {r['host_cpu']:>7.0f}%  {'; '.join(notes) or 'ok'}",
            flush=True,
        )
    print("target: 5,000 agents at 1 Hz using < 1 core (100 %); p99 report-to-state < 50 ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
