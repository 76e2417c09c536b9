"""The lepton-ctl commands: each turns parsed arguments into client calls and output.

Every handler takes the `LeptonClient` and the argparse namespace and returns
an exit code; errors are raised as `lepton.errors` classes and turned into one
line on stderr and an exit code by `leptonctl.main`. No cluster logic lives
here: anything another program could want belongs in `lepton.client`.
"""

from __future__ import annotations

import json
import shlex
import sys
from typing import Any

from lepton import errors, jobspec, units
from lepton.client import LeptonClient
from lepton.v1 import types_pb2
from leptonctl import render, views

# -- cluster -------------------------------------------------------------------


def _members_table(members: list[dict[str, Any]]) -> str:
    rows = [
        (
            m["id"],
            m["role"] or "-",
            m["api_address"] or "-",
            m["raft_address"] or "-",
            "yes" if m["healthy"] else "no",
        )
        for m in members
    ]
    return render.table(("ID", "ROLE", "API ADDRESS", "RAFT ADDRESS", "HEALTHY"), rows, "no members known")


def _cluster_status_text(d: dict[str, Any]) -> str:
    tasks = ", ".join(f"{k} {v}" for k, v in d["tasks_by_state"].items()) or "none"
    leader = f"{d['leader']} ({d['leader_api_address']})" if d["leader"] else "none"
    head = render.fields(
        [
            ("Leader", leader),
            ("Term", d["term"]),
            ("Commit index", d["commit_index"]),
            ("Applied index", d["applied_index"]),
            ("Answered by", d["answered_by"] or "-"),
            ("Nodes", f"{d['nodes_ready']} ready of {d['nodes_total']}"),
            ("Jobs", d["jobs_total"]),
            ("Tasks", tasks),
        ]
    )
    return head + "\n\n" + _members_table(d["members"])


def cluster_status(client: LeptonClient, args: Any) -> int:
    data = views.cluster_status(client.cluster_status(stale=args.stale))
    render.emit(data, args.output, _cluster_status_text)
    return 0


def cluster_members(client: LeptonClient, args: Any) -> int:
    data = views.cluster_status(client.cluster_status(stale=args.stale))["members"]
    render.emit(data, args.output, _members_table)
    return 0


# -- nodes -----------------------------------------------------------------------


def _used_of(used: int, total: int, fmt: Any) -> str:
    return f"{fmt(used)}/{fmt(total)}"


def _nodes_table(nodes: list[dict[str, Any]]) -> str:
    rows = []
    for n in nodes:
        a, t = n["allocated"], n["allocatable"]
        rows.append(
            (
                n["id"],
                n["hostname"] or "-",
                n["state"],
                _used_of(a["cpu_millis"], t["cpu_millis"], render.cpu),
                _used_of(a["memory_bytes"], t["memory_bytes"], render.mem),
                _used_of(a["network_mbps"], t["network_mbps"], render.net),
                f"{a['gpus']}/{t['gpus']}",
                render.labels(n["labels"]),
            )
        )
    headers = ("ID", "HOSTNAME", "STATE", "CPU RSV", "MEMORY RSV", "NETWORK RSV", "GPUS", "LABELS")
    return render.table(headers, rows, "no nodes")


def _tasks_table(tasks: list[dict[str, Any]], with_node: bool = True) -> str:
    rows = []
    for t in tasks:
        r = t["resources"]
        row = [t["id"], t["job_name"] or t["job_id"]]
        if with_node:
            row.append(t["node"] or "-")
        row += [
            t["state"],
            render.cpu(r["cpu_millis"]),
            render.mem(r["memory_bytes"]),
            render.net(r["network_mbps"]),
        ]
        row.append(t["reason"] or "")
        rows.append(row)
    headers = (
        ["ID", "JOB"] + (["NODE"] if with_node else []) + ["STATE", "CPU", "MEMORY", "NETWORK", "REASON"]
    )
    return render.table(headers, rows, "no tasks")


def _node_text(n: dict[str, Any]) -> str:
    u = n["usage"]
    head = render.fields(
        [
            ("ID", n["id"]),
            ("Hostname", n["hostname"] or "-"),
            ("Address", n["address"] or "-"),
            ("State", n["state"]),
            ("Connected", "yes" if n["connected"] else "no"),
            ("Labels", render.labels(n["labels"])),
            ("Capacity", render.resources(n["capacity"])),
            ("Allocatable", render.resources(n["allocatable"])),
            ("Reserved", render.resources(n["allocated"])),
            ("In use", render.resources(u) + f" (cpu {u['cpu_percent']:.0f}%)"),
            ("GPUs", ", ".join(f"{g['index']}: {g['model']}" for g in n["gpus"]) or "none"),
        ]
    )
    if "tasks" in n:
        head += "\n\nTasks:\n" + _tasks_table(n["tasks"], with_node=False)
    return head


def nodes_list(client: LeptonClient, args: Any) -> int:
    data = [views.node(n) for n in client.list_nodes(stale=args.stale)]
    render.emit(data, args.output, _nodes_table)
    return 0


def nodes_show(client: LeptonClient, args: Any) -> int:
    render.emit(views.node_detail(client.get_node(args.id, stale=args.stale)), args.output, _node_text)
    return 0


def nodes_cordon(client: LeptonClient, args: Any) -> int:
    render.emit(
        views.node(client.cordon(args.id)), args.output, lambda n: f"node {n['id']} cordoned ({n['state']})"
    )
    return 0


def nodes_uncordon(client: LeptonClient, args: Any) -> int:
    render.emit(
        views.node(client.uncordon(args.id)),
        args.output,
        lambda n: f"node {n['id']} uncordoned ({n['state']})",
    )
    return 0


def nodes_drain(client: LeptonClient, args: Any) -> int:
    deadline = _duration(args.deadline, "--deadline") if args.deadline else None
    node = client.drain(args.id, deadline=deadline, cancel=args.cancel)
    if args.cancel:
        render.emit(
            views.node(node), args.output, lambda n: f"node {n['id']}: drain cancelled ({n['state']})"
        )
        return 0
    if args.wait:
        last: list[int] = [-1]

        def progress(left: list[types_pb2.Task]) -> None:
            # Progress goes to stderr so that stdout stays parseable with -o json.
            if len(left) != last[0]:
                last[0] = len(left)
                print(f"draining {args.id}: {len(left)} task(s) left", file=sys.stderr, flush=True)

        client.wait_drained(args.id, timeout=deadline, poll=args.poll, progress=progress)
        node = client.get_node(args.id).node
    render.emit(
        views.node(node),
        args.output,
        lambda n: f"node {n['id']} {'drained' if args.wait else 'draining'} ({n['state']})",
    )
    return 0


# -- jobs ------------------------------------------------------------------------


def _jobs_table(jobs: list[dict[str, Any]]) -> str:
    rows = [
        (
            j["id"],
            j["name"],
            j["type"],
            j["priority"],
            j["count"],
            j["state"],
            render.cpu(j["resources"]["cpu_millis"]),
            render.mem(j["resources"]["memory_bytes"]),
            render.net(j["resources"]["network_mbps"]),
        )
        for j in jobs
    ]
    headers = ("ID", "NAME", "TYPE", "PRIORITY", "COUNT", "STATE", "CPU", "MEMORY", "NETWORK")
    return render.table(headers, rows, "no jobs")


def _job_text(j: dict[str, Any]) -> str:
    head = render.fields(
        [
            ("ID", j["id"]),
            ("Name", j["name"]),
            ("Type", j["type"]),
            ("Priority", j["priority"]),
            ("Count", j["count"]),
            ("State", j["state"]),
            ("Command", shlex.join(j["command"])),
            ("Resources", render.resources(j["resources"]) + " per task"),
            ("Constraints", "; ".join(j["constraints"]) or "none"),
        ]
    )
    rows = [(t["id"], t["node"] or "-", t["state"], t["reason"]) for t in j.get("tasks", [])]
    return head + "\n\nTasks:\n" + render.table(("ID", "NODE", "STATE", "REASON"), rows, "no tasks")


def _submitted_text(jobs: Any) -> str:
    # One job: everything about it. Several: a table, one line per job.
    if not isinstance(jobs, list):
        return _job_text(jobs)
    return f"submitted {len(jobs)} jobs:\n" + _jobs_table(jobs)


def _submit_all(client: LeptonClient, specs: list[types_pb2.JobSpec], output: str) -> int:
    done: list[dict[str, Any]] = []
    for spec in specs:
        try:
            done.append(views.job_detail(client.submit_job(spec)))
        except errors.LeptonError as e:
            if done:
                names = ", ".join(j["name"] for j in done)
                e.message = f"job {spec.name!r}: {e} (already submitted: {names})"
            else:
                e.message = f"job {spec.name!r}: {e}"
            raise
    render.emit(done[0] if len(done) == 1 else done, output, _submitted_text)
    return 0


def jobs_submit(client: LeptonClient, args: Any) -> int:
    return _submit_all(client, jobspec.load_job_file(args.file), args.output)


def _duration(text: str, flag: str) -> float:
    try:
        return units.parse_duration(text)
    except ValueError as e:
        raise errors.InvalidArgument(f"{flag}: {e}") from None


def build_run_spec(args: Any) -> types_pb2.JobSpec:
    """The JobSpec of `jobs run NAME [flags] -- COMMAND ARGS...`."""
    if not args.command:
        raise errors.InvalidArgument(
            "jobs run: give the command after '--', e.g. 'jobs run web -- sleep 3600'"
        )

    def parse(flag: str, fn: Any, text: str) -> int:
        try:
            value = fn(text)
        except ValueError as e:
            raise errors.InvalidArgument(f"{flag}: {e}") from None
        if value < 0:
            raise errors.InvalidArgument(f"{flag}: must not be negative")
        return value

    spec = types_pb2.JobSpec(name=args.name, priority=args.priority, count=args.count)
    spec.type = jobspec.JOB_TYPES[args.type]
    t = spec.template
    t.command, *rest = args.command
    t.args.extend(rest)
    t.resources.cpu_millis = parse("--cpu", units.parse_cpu, args.cpu)
    t.resources.memory_bytes = parse("--memory", units.parse_memory, args.memory)
    t.resources.network_mbps = parse("--network", units.parse_network, args.network)
    t.resources.gpus = args.gpus
    for label in args.label:
        key, sep, value = label.partition("=")
        if not sep or not key:
            raise errors.InvalidArgument(f"--label: expected key=value, got {label!r}")
        t.constraints.append(types_pb2.Constraint(key=key, op="=", values=[value]))
    for expr in args.constraint:
        try:
            t.constraints.append(jobspec.parse_constraint(expr))
        except ValueError as e:
            raise errors.InvalidArgument(f"--constraint: {e}") from None
    for pair in args.env:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise errors.InvalidArgument(f"--env: expected KEY=VALUE, got {pair!r}")
        t.env[key] = value
    t.migratable = args.migratable
    # Same checks as a job file, so `run` and `submit` accept the same jobs.
    jobspec.spec_from_dict({"name": spec.name, "command": list(args.command)}, source="jobs run")
    return spec


def jobs_run(client: LeptonClient, args: Any) -> int:
    return _submit_all(client, [build_run_spec(args)], args.output)


def jobs_list(client: LeptonClient, args: Any) -> int:
    data = [views.job(j) for j in client.list_jobs(include_finished=args.all, stale=args.stale)]
    render.emit(data, args.output, _jobs_table)
    return 0


def jobs_show(client: LeptonClient, args: Any) -> int:
    render.emit(views.job_detail(client.get_job(args.id, stale=args.stale)), args.output, _job_text)
    return 0


def jobs_cancel(client: LeptonClient, args: Any) -> int:
    data = views.job_detail(client.cancel_job(args.id))
    render.emit(
        data, args.output, lambda j: f"job {j['id']} ({j['name']}): cancel requested, now {j['state']}"
    )
    return 0


# -- tasks -----------------------------------------------------------------------


def tasks_list(client: LeptonClient, args: Any) -> int:
    tasks = client.list_tasks(
        job_id=args.job or "", node_id=args.node or "", state=args.state or "", stale=args.stale
    )
    render.emit([views.task(t) for t in tasks], args.output, _tasks_table)
    return 0


# -- rebalance -------------------------------------------------------------------


def _plan_text(p: dict[str, Any]) -> str:
    rows = [
        (m["task_id"], m["from_node"], m["to_node"], m["kind"], f"{m['score']:.3f}", m["reason"])
        for m in p["moves"]
    ]
    verb = "applied" if p["applied"] else "planned"
    text = render.table(("TASK", "FROM", "TO", "KIND", "SCORE", "REASON"), rows, f"no moves {verb}")
    if rows:
        text = f"{len(rows)} move(s) {verb}:\n" + text
    if p["notes"]:
        text += "\n\nNotes:\n" + "\n".join(f"  - {n}" for n in p["notes"])
    return text


def rebalance_plan(client: LeptonClient, args: Any) -> int:
    render.emit(
        views.rebalance_plan(client.plan_rebalance(max_moves=args.max_moves)), args.output, _plan_text
    )
    return 0


def rebalance_apply(client: LeptonClient, args: Any) -> int:
    render.emit(
        views.rebalance_plan(client.apply_rebalance(max_moves=args.max_moves)), args.output, _plan_text
    )
    return 0


# -- events ----------------------------------------------------------------------


def _event_line(e: dict[str, Any]) -> str:
    where = " ".join(
        x for x in (e["node_id"] and f"node={e['node_id']}", e["job_id"] and f"job={e['job_id']}") if x
    )
    return f"{e['seq']:>6}  {render.ms_time(e['time_ms'])}  {e['type']:<18} {where + '  ' if where else ''}{e['message']}"


def events(client: LeptonClient, args: Any) -> int:
    stream = client.watch_events(
        since_seq=args.since,
        follow=args.follow,
        types=args.type,
        node_id=args.node or "",
        job_id=args.job or "",
    )
    if not args.follow and args.output != "table":
        render.emit([views.event(e) for e in stream], args.output, str)
        return 0
    # Following: one line per event as it arrives (JSON Lines with -o json).
    for e in stream:
        d = views.event(e)
        if args.output == "json":
            line = json.dumps(d)
        elif args.output == "yaml":
            line = render_yaml_doc(d)
        else:
            line = _event_line(d)
        print(line, flush=True)
    return 0


def render_yaml_doc(d: dict[str, Any]) -> str:
    import yaml

    return "---\n" + yaml.safe_dump(d, sort_keys=False).rstrip("\n")
