"""The importable Python client of a Lepton cluster (what lepton-ctl is built on).

`LeptonClient` wraps `ControlService` with one method per RPC. It hides the
cluster's shape from callers:

- it tries every configured controller when one is unreachable, and when none
  answers raises `lepton.errors.Unavailable` naming every address it tried;
- it follows `NotLeader` redirects (FAILED_PRECONDITION carrying the leader's
  API address in trailing metadata) by itself, for a bounded number of hops;
- while an election is running (followers answer NotLeader with no leader
  known) it waits briefly and retries until the call's deadline;
- every call has a deadline (`timeout` seconds, the whole call including
  retries and redirects);
- `submit_job` generates one request id per call and reuses it on every
  retry, so a retry after an unknown outcome returns the job the first
  attempt created instead of making a second one;
- it raises `lepton.errors` classes only, never raw `grpc.RpcError`.

Methods return the protobuf messages of `lepton.v1` unchanged; presentation is
the CLI's business (`leptonctl.views`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc

from lepton import errors
from lepton.v1 import control_pb2, control_pb2_grpc, types_pb2

DEFAULT_CONTROLLERS = "127.0.0.1:7001"

# A redirect chain longer than this means replicas disagree about who leads
# (e.g. a stale leader hint bouncing between two followers); give up rather
# than loop until the deadline.
MAX_REDIRECTS = 5

# Pause between rounds while no replica knows a leader (an election is
# running). Elections take about a second, so poll a few times per second.
ELECTION_RETRY_PAUSE = 0.2

# gRPC backs off reconnecting to a replica that was down for up to 2 minutes
# by default, failing calls fast meanwhile; a restarted controller should be
# usable again within a couple of seconds.
_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    # gRPC's default 4 MiB receive limit would fail `tasks list` on a large
    # cluster; match what the controller may send (64 MiB).
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
)

# Tasks in these states still occupy a node; a drain is done when none is left.
_ACTIVE_TASK_STATES = frozenset(
    {
        types_pb2.TASK_STATE_PENDING,
        types_pb2.TASK_STATE_ASSIGNED,
        types_pb2.TASK_STATE_STARTING,
        types_pb2.TASK_STATE_RUNNING,
        types_pb2.TASK_STATE_STOPPING,
    }
)


def split_addresses(controllers: Sequence[str] | str | None) -> list[str]:
    """'a:1, b:2' or ['a:1', 'b:2'] -> ['a:1', 'b:2'] (order kept, duplicates dropped)."""
    if controllers is None:
        controllers = DEFAULT_CONTROLLERS
    parts = controllers.split(",") if isinstance(controllers, str) else list(controllers)
    out: list[str] = []
    for p in parts:
        p = p.strip()
        if p and p not in out:
            out.append(p)
    if not out:
        raise errors.InvalidArgument("no controller address given")
    return out


class _Attempts:
    """Bookkeeping of one logical call: which addresses were tried and why they failed."""

    def __init__(self, timeout: float) -> None:
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout
        self.tried: list[str] = []
        self.last_error: errors.LeptonError | None = None
        self.redirects = 0

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def note(self, address: str, err: errors.LeptonError) -> None:
        if address not in self.tried:
            self.tried.append(address)
        self.last_error = err

    def unavailable(self) -> errors.Unavailable:
        last = f": {self.last_error}" if self.last_error is not None else ""
        return errors.Unavailable(f"no controller answered (tried {', '.join(self.tried)}){last}")


class LeptonClient:
    """A synchronous client of the ControlService of a Lepton cluster.

    `controllers` is one address or several ("host:port", comma-separated or a
    sequence). `token`, when given, is sent as `authorization: Bearer <token>`.
    `credentials` (grpc.ChannelCredentials) switches to TLS channels.
    """

    def __init__(
        self,
        controllers: Sequence[str] | str = DEFAULT_CONTROLLERS,
        timeout: float = 10.0,
        token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.addresses = split_addresses(controllers)
        self.timeout = float(timeout)
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self._credentials = credentials
        self._channels: dict[str, tuple[grpc.Channel, control_pb2_grpc.ControlServiceStub]] = {}
        # The address that answered last (or that a redirect named): tried
        # first next time so that a steady cluster costs one round trip.
        self._preferred: str | None = None

    # -- lifecycle ---------------------------------------------------------

    def close(self) -> None:
        for channel, _ in self._channels.values():
            channel.close()
        self._channels.clear()

    def __enter__(self) -> LeptonClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------

    def _stub(self, address: str) -> control_pb2_grpc.ControlServiceStub:
        entry = self._channels.get(address)
        if entry is None:
            if self._credentials is not None:
                channel = grpc.secure_channel(address, self._credentials, options=_CHANNEL_OPTIONS)
            else:
                channel = grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
            entry = (channel, control_pb2_grpc.ControlServiceStub(channel))
            self._channels[address] = entry
        return entry[1]

    def _candidates(self) -> list[str]:
        order = list(self.addresses)
        if self._preferred is not None:
            if self._preferred in order:
                order.remove(self._preferred)
            order.insert(0, self._preferred)
        return order

    def _invoke(self, method: str, request: Any) -> Any:
        """Runs one unary RPC against the cluster: failover, redirects, deadline."""

        def attempt(address: str, remaining: float) -> Any:
            rpc = getattr(self._stub(address), method)
            return rpc(request, timeout=remaining, metadata=self._metadata)

        return self._with_failover(method, attempt)

    def _with_failover(self, method: str, attempt: Callable[[str, float], Any]) -> Any:
        """Calls `attempt(address, seconds_left)` on replicas until one answers.

        Unreachable replicas are skipped, NotLeader redirects followed, and
        leaderless rounds retried until the call's deadline.
        """
        attempts = _Attempts(self.timeout)
        while True:
            worth_another_round = False
            # The hop limit is per round: across rounds, followers naming a
            # leader that just died is normal during a failover, not a loop.
            attempts.redirects = 0
            queue = self._candidates()
            asked: set[str] = set()
            while queue:
                address = queue.pop(0)
                if address in asked:
                    continue
                asked.add(address)
                remaining = attempts.remaining()
                if remaining <= 0:
                    raise self._timed_out(method, attempts)
                try:
                    reply = attempt(address, remaining)
                except grpc.RpcError as rpc_err:
                    err = errors.from_rpc_error(rpc_err)
                    if isinstance(err, errors.NotLeader):
                        attempts.note(address, err)
                        # A replica answered, so the cluster is alive: even if
                        # the leader it names is unreachable (it may have just
                        # died), a new one will be elected; keep trying.
                        worth_another_round = True
                        target = err.leader_api_address
                        if target and target != address:
                            attempts.redirects += 1
                            if attempts.redirects > MAX_REDIRECTS:
                                raise errors.Unavailable(
                                    f"gave up after {MAX_REDIRECTS} leader redirects "
                                    f"(tried {', '.join(attempts.tried)}): {err}"
                                ) from None
                            # The leader may be a replica we were not told about.
                            asked.discard(target)
                            queue.insert(0, target)
                        continue
                    if isinstance(err, errors.Unavailable):
                        attempts.note(address, err)
                        continue
                    if rpc_err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                        attempts.note(address, err)
                        if attempts.remaining() <= 0:
                            raise self._timed_out(method, attempts) from None
                        # The replica gave up on a proposal whose outcome is
                        # unknown. Asking again is safe: writes that create
                        # things carry a request id the state machine dedups.
                        worth_another_round = True
                        continue
                    raise err from None
                self._preferred = address
                return reply
            # Every address failed this round. Keep trying only while some
            # replica answered but could not serve (no leader, or a leader we
            # cannot reach: an election will end soon) or timed out a
            # proposal; when nothing answers at all, fail fast.
            if not worth_another_round:
                raise attempts.unavailable()
            if attempts.remaining() <= ELECTION_RETRY_PAUSE:
                raise errors.Unavailable(
                    f"no reachable leader within {attempts.timeout:g}s "
                    f"(tried {', '.join(attempts.tried)}): {attempts.last_error}"
                )
            time.sleep(ELECTION_RETRY_PAUSE)

    @staticmethod
    def _timed_out(method: str, attempts: _Attempts) -> errors.OutcomeUnknown:
        where = attempts.tried[-1] if attempts.tried else "?"
        return errors.OutcomeUnknown(
            f"{method} did not finish within {attempts.timeout:g}s (last tried {where})"
        )

    # -- cluster -------------------------------------------------------------

    def cluster_status(self, stale: bool = False) -> control_pb2.ClusterStatus:
        return self._invoke("GetClusterStatus", control_pb2.ClusterStatusRequest(stale=stale))

    # -- nodes ----------------------------------------------------------------

    def list_nodes(self, stale: bool = False) -> list[types_pb2.Node]:
        return list(self._invoke("ListNodes", control_pb2.ListNodesRequest(stale=stale)).nodes)

    def get_node(self, node_id: str, stale: bool = False) -> control_pb2.NodeDetail:
        return self._invoke("GetNode", control_pb2.GetNodeRequest(id=node_id, stale=stale))

    def cordon(self, node_id: str) -> types_pb2.Node:
        return self._invoke("CordonNode", control_pb2.NodeRequest(id=node_id))

    def uncordon(self, node_id: str) -> types_pb2.Node:
        return self._invoke("UncordonNode", control_pb2.NodeRequest(id=node_id))

    def drain(
        self, node_id: str, deadline: float | None = None, max_parallel: int = 0, cancel: bool = False
    ) -> types_pb2.Node:
        """Starts draining a node (`deadline` in seconds, None = none). Returns at once."""
        req = control_pb2.DrainNodeRequest(
            id=node_id,
            deadline_ms=int(deadline * 1000) if deadline else 0,
            max_parallel=max_parallel,
            cancel=cancel,
        )
        return self._invoke("DrainNode", req)

    def tasks_on_node(self, node_id: str) -> list[types_pb2.Task]:
        """Tasks that still occupy `node_id` (not yet finished or stopped)."""
        return [t for t in self.list_tasks(node_id=node_id) if t.state in _ACTIVE_TASK_STATES]

    def wait_drained(
        self,
        node_id: str,
        timeout: float | None = None,
        poll: float = 0.5,
        progress: Callable[[list[types_pb2.Task]], None] | None = None,
    ) -> None:
        """Blocks until no task occupies `node_id`; calls `progress(tasks_left)` each poll.

        Raises OutcomeUnknown when `timeout` seconds pass first (the drain goes on).
        """
        until = None if timeout is None else time.monotonic() + timeout
        while True:
            left = self.tasks_on_node(node_id)
            if progress is not None:
                progress(left)
            if not left:
                return
            if until is not None and time.monotonic() >= until:
                raise errors.OutcomeUnknown(
                    f"node {node_id} still has {len(left)} task(s) after {timeout:g}s; draining continues"
                )
            time.sleep(poll)

    # -- jobs -----------------------------------------------------------------

    def submit_job(
        self, spec: types_pb2.JobSpec | dict, request_id: str | None = None
    ) -> control_pb2.JobDetail:
        """Submits a job; safe to retry: every attempt of this call carries one request id.

        `spec` is a JobSpec or a dict in the job-file format (see lepton.jobspec).
        """
        if isinstance(spec, dict):
            from lepton import jobspec

            spec = jobspec.spec_from_dict(spec)
        req = control_pb2.SubmitJobRequest(spec=spec, request_id=request_id or uuid.uuid4().hex)
        return self._invoke("SubmitJob", req)

    def get_job(self, job_id: str, stale: bool = False) -> control_pb2.JobDetail:
        """`job_id` may be a job id or a job name."""
        return self._invoke("GetJob", control_pb2.GetJobRequest(id=job_id, stale=stale))

    def list_jobs(self, include_finished: bool = False, stale: bool = False) -> list[types_pb2.Job]:
        req = control_pb2.ListJobsRequest(stale=stale, include_finished=include_finished)
        return list(self._invoke("ListJobs", req).jobs)

    def cancel_job(self, job_id: str) -> control_pb2.JobDetail:
        return self._invoke("CancelJob", control_pb2.CancelJobRequest(id=job_id))

    # -- tasks ----------------------------------------------------------------

    def list_tasks(
        self,
        job_id: str = "",
        node_id: str = "",
        state: int | str = types_pb2.TASK_STATE_UNSPECIFIED,
        stale: bool = False,
    ) -> list[types_pb2.Task]:
        """`state` is a TaskState value or its short name ("running", "pending", ...)."""
        req = control_pb2.ListTasksRequest(
            job_id=job_id, node_id=node_id, state=task_state_value(state), stale=stale
        )
        return list(self._invoke("ListTasks", req).tasks)

    # -- rebalancing ------------------------------------------------------------

    def plan_rebalance(self, max_moves: int = 0) -> control_pb2.RebalancePlan:
        return self._invoke("PlanRebalance", control_pb2.RebalanceRequest(max_moves=max_moves))

    def apply_rebalance(self, max_moves: int = 0) -> control_pb2.RebalancePlan:
        return self._invoke("ApplyRebalance", control_pb2.RebalanceRequest(max_moves=max_moves))

    # -- backup ----------------------------------------------------------------

    def save_snapshot(self) -> tuple[control_pb2.SnapshotHeader, bytes]:
        """A consistent copy of the whole cluster state, taken on the leader: (header, state bytes).

        Verifies the checksum (lepton.backup.BackupError if the transfer was
        damaged); `lepton.backup.write_file(path, header, data)` stores it.
        """
        from lepton import backup

        def attempt(address: str, remaining: float) -> tuple[control_pb2.SnapshotHeader, bytes]:
            call = self._stub(address).SaveSnapshot(
                control_pb2.SaveSnapshotRequest(), timeout=remaining, metadata=self._metadata
            )
            header, parts = None, []
            for chunk in call:
                if chunk.HasField("header"):
                    header = chunk.header
                parts.append(chunk.data)
            if header is None:
                raise errors.Unavailable(f"{address} sent a snapshot without a header")
            data = b"".join(parts)
            backup.verify(header, data)
            return header, data

        return self._with_failover("SaveSnapshot", attempt)

    # -- events ----------------------------------------------------------------

    def watch_events(
        self,
        since_seq: int = 0,
        follow: bool = False,
        types: Sequence[str] = (),
        node_id: str = "",
        job_id: str = "",
        limit: int = 0,
    ) -> Iterator[types_pb2.Event]:
        """Yields events with seq > `since_seq` (0 = from the start); `follow` keeps streaming.

        Without `follow` the whole replay has the client's deadline. With
        `follow` the stream has none (it is meant to stay open), and when the
        controller serving it goes away the client reconnects to the cluster
        and resumes after the last event it yielded, so no event is repeated.
        """
        next_seq = since_seq
        yielded_any = False
        while True:
            req = control_pb2.WatchEventsRequest(
                since_seq=next_seq,
                follow=follow,
                types=list(types),
                node_id=node_id,
                job_id=job_id,
                limit=0 if yielded_any else limit,
            )
            stream = self._open_stream(req, follow)
            try:
                for event in stream:
                    yielded_any = True
                    next_seq = event.seq
                    yield event
                return
            except grpc.RpcError as rpc_err:
                err = errors.from_rpc_error(rpc_err)
                if not (follow and err.retryable):
                    raise err from None
                # The serving replica died or lost leadership mid-stream:
                # reopen elsewhere (the loop re-runs failover and redirects).
            finally:
                stream.cancel()

    def _open_stream(self, req: control_pb2.WatchEventsRequest, follow: bool) -> _PeekedStream:
        """Opens WatchEvents on a replica that accepts it (same failover as unary calls).

        A server stream reports rejection (NotLeader, unavailable) only when
        read, so the first event is read here, inside the failover loop, and
        handed back in front of the rest.
        """

        def attempt(address: str, remaining: float) -> _PeekedStream:
            call = self._stub(address).WatchEvents(
                req, timeout=None if follow else remaining, metadata=self._metadata
            )
            try:
                first = next(call, None)
            except grpc.RpcError:
                call.cancel()
                raise
            return _PeekedStream(call, first)

        return self._with_failover("WatchEvents", attempt)


class _PeekedStream:
    """A server stream whose first message was already read (None = the stream was empty)."""

    def __init__(self, call: Any, first: Any) -> None:
        self._call = call
        self._first = first

    def __iter__(self) -> Iterator[Any]:
        if self._first is not None:
            yield self._first
        yield from self._call

    def cancel(self) -> None:
        self._call.cancel()


def task_state_value(state: int | str) -> int:
    """'running' / 'TASK_STATE_RUNNING' / 4 -> 4; raises InvalidArgument for unknown names."""
    if isinstance(state, int):
        return state
    name = state.strip().upper()
    if not name:
        return types_pb2.TASK_STATE_UNSPECIFIED
    if not name.startswith("TASK_STATE_"):
        name = "TASK_STATE_" + name
    try:
        return types_pb2.TaskState.Value(name)
    except ValueError:
        known = ", ".join(
            v.name.removeprefix("TASK_STATE_").lower()
            for v in types_pb2.TaskState.DESCRIPTOR.values
            if v.number != types_pb2.TASK_STATE_UNSPECIFIED
        )
        raise errors.InvalidArgument(f"unknown task state {state!r} (one of {known})") from None
