"""lepton-ctl's entry point: the argument parser, dispatch, and errors -> exit codes.

The command tree is noun-verb (`nodes list`, `jobs submit FILE`). Global
options (`--controllers`, `-o`, `--timeout`) may be given before the noun or
after the verb. Every failure ends as one line on stderr and one of the exit
codes below (documented in docs/cli.md), never as a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import grpc

from lepton import __version__, errors, tls
from lepton.client import DEFAULT_CONTROLLERS, LeptonClient
from leptonctl import certs, commands, completion, render, snapshot, top

EXIT_OK = 0
EXIT_ERROR = 1  # anything not listed below
EXIT_USAGE = 2  # bad command line
EXIT_NOT_FOUND = 3  # unknown node, job or task
EXIT_UNAVAILABLE = 4  # no controller reachable, or no leader
EXIT_INVALID = 5  # invalid job file or argument value
EXIT_CONFLICT = 6  # already exists / failed precondition
EXIT_TIMEOUT = 7  # deadline passed; the outcome may be unknown
EXIT_DENIED = 8  # no or unknown token (UNAUTHENTICATED), or the token's role may not (PERMISSION_DENIED)
EXIT_INTERRUPTED = 130  # Ctrl-C

_EXIT_BY_ERROR: list[tuple[type[errors.LeptonError], int]] = [
    (errors.NotFound, EXIT_NOT_FOUND),
    (errors.NotLeader, EXIT_UNAVAILABLE),
    (errors.Unavailable, EXIT_UNAVAILABLE),
    (errors.InvalidArgument, EXIT_INVALID),
    (errors.AlreadyExists, EXIT_CONFLICT),
    (errors.FailedPrecondition, EXIT_CONFLICT),
    (errors.OutcomeUnknown, EXIT_TIMEOUT),
    (errors.Unauthenticated, EXIT_DENIED),
    (errors.PermissionDenied, EXIT_DENIED),
]


def exit_code_for(err: errors.LeptonError) -> int:
    for cls, code in _EXIT_BY_ERROR:
        if isinstance(err, cls):
            return code
    return EXIT_ERROR


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing a usage block and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _add_globals(p: argparse.ArgumentParser, top_level: bool) -> None:
    # Subcommands repeat the globals so they may come after the verb; their
    # defaults are SUPPRESS so that a later parser never resets an earlier value.
    d = (lambda v: v) if top_level else (lambda v: argparse.SUPPRESS)
    g = p.add_argument_group("global options")
    g.add_argument(
        "--controllers",
        default=d(None),
        metavar="ADDR[,ADDR...]",
        help=f"controller API addresses (env LEPTON_CONTROLLERS; default {DEFAULT_CONTROLLERS})",
    )
    g.add_argument(
        "-o", "--output", choices=render.FORMATS, default=d("table"), help="output format (default table)"
    )
    g.add_argument(
        "--timeout", default=d("10s"), metavar="D", help="deadline of each request, e.g. 5s (default 10s)"
    )
    g.add_argument("--token", default=d(None), metavar="TOKEN", help="bearer token (env LEPTON_TOKEN)")
    g.add_argument(
        "--tls-ca", default=d(None), metavar="FILE", help="CA bundle; turns TLS on (env LEPTON_TLS_CA)"
    )
    g.add_argument(
        "--tls-cert", default=d(None), metavar="FILE", help="client certificate (env LEPTON_TLS_CERT)"
    )
    g.add_argument("--tls-key", default=d(None), metavar="FILE", help="its private key (env LEPTON_TLS_KEY)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lepton-ctl",
        description="Operate a Lepton cluster: nodes, jobs, tasks, rebalancing, events.",
        epilog="Exit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 unavailable/no leader, "
        "5 invalid spec or argument, 6 conflict (exists/precondition), 7 timed out, "
        "8 unauthenticated or permission denied, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"lepton-ctl {__version__}")
    _add_globals(parser, top_level=True)
    nouns = parser.add_subparsers(dest="noun", metavar="COMMAND", required=True)

    def noun(name: str, help: str) -> argparse._SubParsersAction:
        p = nouns.add_parser(name, help=help, description=help)
        return p.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(group: argparse._SubParsersAction, name: str, fn, help: str, stale: bool = False):
        p = group.add_parser(name, help=help, description=help)
        _add_globals(p, top_level=False)
        p.set_defaults(fn=fn)
        if stale:
            p.add_argument("--stale", action="store_true", help="let any replica answer (may lag the leader)")
        return p

    cluster = noun("cluster", "the controller replicas")
    verb(
        cluster, "status", commands.cluster_status, "leader, term, commit index, members, totals", stale=True
    )
    verb(cluster, "members", commands.cluster_members, "the controller replicas and their roles", stale=True)
    p = cluster.add_parser("snapshot", help="back up the cluster state (docs/backup.md)")
    snap = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, fn, what in (
        ("save", snapshot.save, "write a consistent snapshot of the whole cluster state to FILE"),
        ("inspect", snapshot.inspect, "verify a backup FILE and show its header (offline)"),
    ):
        p = snap.add_parser(name, help=what, description=what)
        _add_globals(p, top_level=False)
        p.set_defaults(fn=fn)
        p.add_argument("file")

    nodes = noun("nodes", "machines running lepton-agent")
    verb(nodes, "list", commands.nodes_list, "every node with its state and reservations", stale=True)
    p = verb(nodes, "show", commands.nodes_show, "one node: capacity, use, tasks", stale=True)
    p.add_argument("id")
    verb(nodes, "cordon", commands.nodes_cordon, "stop placing new tasks on a node").add_argument("id")
    verb(nodes, "uncordon", commands.nodes_uncordon, "allow placement on a node again").add_argument("id")
    p = verb(nodes, "drain", commands.nodes_drain, "move every task off a node (it stays cordoned)")
    p.add_argument("id")
    p.add_argument("--wait", action="store_true", help="wait until no task is left, showing progress")
    p.add_argument("--deadline", metavar="D", help="give up moving tasks gracefully after D (e.g. 5m)")
    p.add_argument("--cancel", action="store_true", help="stop draining (the node stays cordoned)")
    p.add_argument("--poll", type=float, default=0.5, help=argparse.SUPPRESS)

    jobs = noun("jobs", "workloads: submit, run, list, show, cancel")
    p = verb(jobs, "submit", commands.jobs_submit, "submit the job(s) of a YAML file ('-' = stdin)")
    p.add_argument("file")
    p = verb(jobs, "run", commands.jobs_run, "run a job from flags: jobs run NAME [flags] -- COMMAND ARGS...")
    p.usage = "lepton-ctl jobs run NAME [flags] -- COMMAND [ARGS...]"
    p.add_argument("name")
    p.add_argument("--cpu", default="100m", help="cores per task: 2, 0.5, 500m (default 100m)")
    p.add_argument("--memory", default="128Mi", help="memory per task: 512Mi, 1G (default 128Mi)")
    p.add_argument("--network", default="0", help="bits/s per task like NICs: 100M, 10G (default 0)")
    p.add_argument("--gpus", type=int, default=0, help="GPUs per task (default 0)")
    p.add_argument("--count", type=int, default=1, help="number of tasks (default 1)")
    p.add_argument("--priority", type=int, default=0, help="larger is more important (default 0)")
    p.add_argument(
        "--type", choices=sorted(commands.jobspec.JOB_TYPES), default="service", help="default service"
    )
    p.add_argument(
        "--label", action="append", default=[], metavar="K=V", help="only nodes labelled K=V (repeatable)"
    )
    p.add_argument(
        "--constraint",
        action="append",
        default=[],
        metavar="EXPR",
        help="'zone=a', 'zone!=b', 'zone in (a,b)', 'gpu exists', '!gpu' (repeatable)",
    )
    p.add_argument(
        "--env", action="append", default=[], metavar="K=V", help="environment variable (repeatable)"
    )
    p.add_argument("--migratable", action="store_true", help="the rebalancer may move its tasks")
    p.add_argument("command", nargs="*", help=argparse.SUPPRESS)
    p = verb(jobs, "list", commands.jobs_list, "jobs (running and pending; --all adds finished)", stale=True)
    p.add_argument("--all", action="store_true", help="include finished and cancelled jobs")
    p = verb(jobs, "show", commands.jobs_show, "one job (by id or name) and its tasks", stale=True)
    p.add_argument("id")
    verb(jobs, "cancel", commands.jobs_cancel, "stop every task of a job").add_argument("id")

    tasks = noun("tasks", "the tasks of jobs")
    p = verb(tasks, "list", commands.tasks_list, "tasks, filtered by job, node or state", stale=True)
    p.add_argument("--job", metavar="ID")
    p.add_argument("--node", metavar="ID")
    p.add_argument(
        "--state", metavar="S", help="pending, assigned, starting, running, succeeded, failed, lost, ..."
    )

    rebalance = noun("rebalance", "move tasks off hot nodes")
    for name, fn, what in (
        ("plan", commands.rebalance_plan, "show the moves the rebalancer would make, and why"),
        ("apply", commands.rebalance_apply, "plan and commit the moves"),
    ):
        verb(rebalance, name, fn, what).add_argument(
            "--max-moves", type=int, default=0, help="0 = policy default"
        )

    p = nouns.add_parser("events", help="the cluster's event log", description="the cluster's event log")
    _add_globals(p, top_level=False)
    p.set_defaults(fn=commands.events)
    p.add_argument("--follow", "-f", action="store_true", help="keep streaming new events")
    p.add_argument(
        "--since", type=int, default=0, metavar="SEQ", help="only events after SEQ (default 0: all retained)"
    )
    p.add_argument("--type", action="append", default=[], metavar="PREFIX", help="e.g. node. or task.placed")
    p.add_argument("--node", metavar="ID")
    p.add_argument("--job", metavar="ID")

    p = nouns.add_parser("top", help="live use vs capacity and reservations of every node")
    _add_globals(p, top_level=False)
    p.set_defaults(fn=top.run)
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (default 2)")

    certs.add_parser(nouns)

    p = nouns.add_parser("completion", help="print a shell completion script")
    p.add_argument("shell", choices=("bash", "zsh"))
    p.set_defaults(fn=None)
    return parser


def credentials_from(args: argparse.Namespace, env) -> tuple[str | None, grpc.ChannelCredentials | None]:
    """--token / --tls-* (or LEPTON_TOKEN / LEPTON_TLS_*) -> what LeptonClient takes."""
    token = getattr(args, "token", None) or env.get("LEPTON_TOKEN") or None
    files = tls.TLSFiles.from_values(
        getattr(args, "tls_cert", None) or env.get("LEPTON_TLS_CERT"),
        getattr(args, "tls_key", None) or env.get("LEPTON_TLS_KEY"),
        getattr(args, "tls_ca", None) or env.get("LEPTON_TLS_CA"),
    )
    return token, (tls.channel_credentials(files) if files.enabled else None)


def _split_trailing_command(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """Everything after the first '--' is the command of `jobs run`, taken verbatim.

    argparse would otherwise read the command's own flags (`-c`, `--port`) as ours.
    """
    if "--" not in argv:
        return argv, None
    i = argv.index("--")
    return argv[:i], argv[i + 1 :]


def _err(message: str) -> None:
    # One line, whatever the error text contains.
    print("lepton-ctl: " + " ".join(str(message).split()), file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        head, trailing = _split_trailing_command(argv)
        args = parser.parse_args(head)
        if trailing is not None:
            if getattr(args, "fn", None) is not commands.jobs_run:
                raise UsageError("'--' is only used by 'jobs run NAME [flags] -- COMMAND ARGS...'")
            args.command = list(args.command) + trailing
        if args.noun == "completion":
            sys.stdout.write(completion.script(args.shell, parser))
            return EXIT_OK
        if args.noun == "certs":
            return certs.run(args)
        try:
            timeout = commands.units.parse_duration(args.timeout)
        except ValueError as e:
            raise UsageError(f"--timeout: {e}") from None
        if timeout <= 0:
            raise UsageError("--timeout must be positive")
        controllers = args.controllers or os.environ.get("LEPTON_CONTROLLERS") or DEFAULT_CONTROLLERS
        token, credentials = credentials_from(args, os.environ)
        with LeptonClient(controllers, timeout=timeout, token=token, credentials=credentials) as client:
            return args.fn(client, args)
    except UsageError as e:
        _err(e)
        return EXIT_USAGE
    except errors.LeptonError as e:
        _err(e)
        return exit_code_for(e)
    except grpc.RpcError as e:  # the client should have translated it; never show a traceback anyway
        err = errors.from_rpc_error(e)
        _err(err)
        return exit_code_for(err)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `lepton-ctl events | head`: the reader left; that is not an error.
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps interpreter shutdown quiet
        except OSError:
            pass
        return EXIT_OK
    except Exception as e:  # a bug: still one line, unless asked for the traceback
        if os.environ.get("LEPTON_DEBUG"):
            raise
        _err(f"internal error: {type(e).__name__}: {e} (set LEPTON_DEBUG=1 for a traceback)")
        return EXIT_ERROR


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
