"""The one error hierarchy of Lepton and its mapping to gRPC status codes.

Every layer raises a `LeptonError` subclass; servicers translate it with
`to_grpc()` (via `abort()`), clients translate gRPC errors back with
`from_rpc_error()`. `retryable` tells callers whether trying again (possibly
elsewhere) can succeed. `NotLeader` carries the leader's API address in the
trailing metadata key NOT_LEADER_KEY as a serialised lepton.v1.NotLeader so
that clients and agents can follow the redirect.
"""

from __future__ import annotations

import grpc

NOT_LEADER_KEY = "lepton-not-leader-bin"


class LeptonError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    retryable: bool = False

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message or self.__class__.__name__


class InvalidArgument(LeptonError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(LeptonError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(LeptonError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(LeptonError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(LeptonError):
    """No leader, replica shutting down, controller unreachable."""

    code = grpc.StatusCode.UNAVAILABLE
    retryable = True


class OutcomeUnknown(LeptonError):
    """A proposal timed out: it may or may not have been committed."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    retryable = True


class Unauthenticated(LeptonError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(LeptonError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(LeptonError):
    """A bound was hit (message size, jobs or tasks the cluster holds)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class NotLeader(LeptonError):
    """This replica is not the leader. Retry at `leader_api_address` (may be empty)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    retryable = True

    def __init__(self, leader_id: str = "", leader_api_address: str = "", term: int = 0) -> None:
        where = f"leader is {leader_id} at {leader_api_address}" if leader_id else "no leader is known"
        super().__init__(f"not the leader ({where})")
        self.leader_id = leader_id
        self.leader_api_address = leader_api_address
        self.term = term

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        from lepton.v1 import types_pb2

        detail = types_pb2.NotLeader(
            leader_id=self.leader_id, leader_api_address=self.leader_api_address, term=self.term
        )
        return ((NOT_LEADER_KEY, detail.SerializeToString()),)


_BY_CODE: dict[grpc.StatusCode, type[LeptonError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: OutcomeUnknown,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
}


async def abort(context: grpc.aio.ServicerContext, err: LeptonError) -> None:
    """Ends an aio RPC with the status (and NotLeader detail) that `err` maps to."""
    if isinstance(err, NotLeader):
        context.set_trailing_metadata(err.trailing_metadata())
    await context.abort(err.code, str(err))


def not_leader_from_metadata(metadata) -> NotLeader | None:
    from lepton.v1 import types_pb2

    for key, value in metadata or ():
        if key == NOT_LEADER_KEY:
            d = types_pb2.NotLeader.FromString(value)
            return NotLeader(d.leader_id, d.leader_api_address, d.term)
    return None


def from_rpc_error(err: grpc.RpcError) -> LeptonError:
    """Turns a gRPC error received by a client back into a LeptonError."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        trailing = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
        nl = not_leader_from_metadata(trailing)
        if nl is not None:
            return nl
    cls = _BY_CODE.get(code, LeptonError)
    e = cls(details or str(code))
    if cls is LeptonError:
        e.code = code
    return e
