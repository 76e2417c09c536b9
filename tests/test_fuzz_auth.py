"""Property-based fuzz of authentication: random methods with random or real tokens (hypothesis).

Whatever the authorization metadata holds (nothing, garbage, a non-bearer
scheme, a near miss of a real token, or a real token of any role), a call is
UNAUTHENTICATED without a valid token, PERMISSION_DENIED when the role may
not call the method, and otherwise answered with a clear code; never UNKNOWN
or INTERNAL, and a refused call commits nothing.
"""

from __future__ import annotations

import string

import grpc
import pytest
from google.protobuf import message_factory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.security import auth
from lepton.v1 import agent_pb2, control_pb2
from tests.support.background import BackgroundController
from tests.support.pki import TOKENS, make_pki

SERVICES = [
    control_pb2.DESCRIPTOR.services_by_name["ControlService"],
    agent_pb2.DESCRIPTOR.services_by_name["AgentService"],
]
METHODS = [(s, m) for s in SERVICES for m in s.methods]
CLEAR = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
ROLE = {name: role for name, role, _node in TOKENS}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-auth")
    pki = make_pki(root)
    with BackgroundController(root / "data", tokens_file=pki.tokens_file) as bg:
        ch = grpc.insecure_channel(bg.address)
        yield pki, bg, ch
        ch.close()


PRINTABLE = st.text(alphabet=string.printable.strip() + " ", max_size=40)
HEADER = st.one_of(
    st.none(),
    st.tuples(st.just("garbage"), PRINTABLE),
    st.tuples(st.just("bearer-garbage"), PRINTABLE),
    st.tuples(st.just("basic"), PRINTABLE),
    st.tuples(st.just("near-miss"), st.sampled_from(sorted(ROLE))),
    st.tuples(st.just("real"), st.sampled_from(sorted(ROLE))),
)


def metadata_for(pki, header) -> tuple[tuple[tuple[str, str], ...], str | None]:
    """(metadata, the role it authenticates as, or None)."""
    if header is None:
        return (), None
    kind, value = header
    if kind == "garbage":
        return (("authorization", value),), None
    if kind == "bearer-garbage":
        return (("authorization", f"Bearer {value}"),), None
    if kind == "basic":
        return (("authorization", f"Basic {value}"),), None
    token = pki.tokens[value]
    if kind == "near-miss":
        return (("authorization", f"Bearer {token[:-1]}"),), None
    return (("authorization", f"Bearer {token}"),), ROLE[value]


def invoke(channel, service, method, metadata) -> grpc.StatusCode:
    path = f"/{service.full_name}/{method.name}"
    req_cls = message_factory.GetMessageClass(method.input_type)
    resp_cls = message_factory.GetMessageClass(method.output_type)
    kw = dict(request_serializer=lambda m: m.SerializeToString(), response_deserializer=resp_cls.FromString)
    try:
        if method.client_streaming:
            # An agent stream whose first message is an empty AgentMessage (not Hello).
            for _ in channel.stream_stream(path, **kw)(iter([req_cls()]), timeout=10, metadata=metadata):
                pass
        elif method.server_streaming:
            for _ in channel.unary_stream(path, **kw)(req_cls(), timeout=10, metadata=metadata):
                pass
        else:
            channel.unary_unary(path, **kw)(req_cls(), timeout=10, metadata=metadata)
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.sampled_from(METHODS), HEADER)
def test_auth_outcomes(setup, method, header):
    pki, bg, channel = setup
    service, m = method
    metadata, role = metadata_for(pki, header)
    before = bg.call(lambda h: len(h.raft.proposals))
    code = invoke(channel, service, m, metadata)
    path = f"/{service.full_name}/{m.name}"
    if role is None:
        assert code == grpc.StatusCode.UNAUTHENTICATED, (path, header, code)
    elif not auth.allowed(path, role):
        assert code == grpc.StatusCode.PERMISSION_DENIED, (path, role, code)
    else:
        assert code in CLEAR, (path, role, code)
    if code != grpc.StatusCode.OK:
        assert bg.call(lambda h: len(h.raft.proposals)) == before
