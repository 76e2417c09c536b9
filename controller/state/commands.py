"""Building, encoding and decoding ClusterState commands (commands.proto).

Proposers (servicers, leader loops) build a command with `command(body,
time_ms=..., ...)`, which wraps one typed body in the versioned envelope,
and hand `encode(cmd)` to Raft. `decode()` is the inverse used by apply; it
turns every way an entry can be unusable (garbage bytes, unsupported
version, a command kind this replica does not know) into an error value.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from lepton.errors import FailedPrecondition, InvalidArgument, LeptonError
from lepton.v1 import agent_pb2, commands_pb2

# Version 1 is the only one so far. A replica rejects commands of a version it
# does not know, so a rolling upgrade must make every replica understand a new
# version before any proposer emits it.
COMMAND_VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})

# Message type name -> oneof field name, so that command() needs only the body.
_FIELD_BY_TYPE = {
    field.message_type.name: field.name
    for field in commands_pb2.Command.DESCRIPTOR.oneofs_by_name["cmd"].fields
}


def command(body, *, time_ms: int, plan_term: int = 0, request_id: str = "") -> commands_pb2.Command:
    """Wraps one command body (e.g. commands_pb2.SubmitJob) in the versioned envelope.

    time_ms is the proposer's (leader's) clock; plan_term is the term the
    leader planned at, required by CommitPlan and MigrateTask.
    """
    name = type(body).DESCRIPTOR.name
    field = _FIELD_BY_TYPE.get(name)
    if field is None:
        raise TypeError(f"{name} is not a ClusterState command")
    cmd = commands_pb2.Command(
        version=COMMAND_VERSION, plan_term=plan_term, time_ms=time_ms, request_id=request_id
    )
    getattr(cmd, field).CopyFrom(body)
    return cmd


def encode(cmd: commands_pb2.Command) -> bytes:
    """Bytes for Raft. Deterministic serialisation keeps map order stable across replicas."""
    return cmd.SerializeToString(deterministic=True)


def decode(data: bytes) -> commands_pb2.Command | LeptonError:
    """Parses an entry; returns the error (never raises) when it cannot be applied."""
    if not data:
        return InvalidArgument("empty command")
    try:
        cmd = commands_pb2.Command.FromString(data)
    except DecodeError as e:
        return InvalidArgument(f"undecodable command ({e})")
    if cmd.version not in SUPPORTED_VERSIONS:
        return FailedPrecondition(
            f"unsupported command version {cmd.version} (this replica supports {sorted(SUPPORTED_VERSIONS)})"
        )
    if cmd.WhichOneof("cmd") is None:
        # A newer proposer's command kind lands in the unknown fields: refuse it
        # rather than silently doing nothing.
        return FailedPrecondition("unknown command kind (newer proposer?)")
    return cmd


def kind(cmd: commands_pb2.Command) -> str:
    """The oneof field name, e.g. 'submit_job'."""
    return cmd.WhichOneof("cmd") or ""


def register_node_from_hello(hello: agent_pb2.Hello) -> commands_pb2.RegisterNode:
    """The RegisterNode body for an agent's Hello."""
    return commands_pb2.RegisterNode(
        node_id=hello.node_id,
        hostname=hello.hostname,
        address=hello.address,
        capacity=hello.capacity,
        reserve=hello.reserve,
        labels=dict(hello.labels),
        gpus=list(hello.gpus),
        agent_version=hello.agent_version,
    )


def raise_if_error(result: object) -> object:
    """For proposers: raise the LeptonError that apply returned, else pass the result through."""
    if isinstance(result, LeptonError):
        raise result
    return result
