"""Authentication and role checks for every RPC a controller serves (a grpc.aio interceptor).

Callers present `authorization: Bearer <token>` metadata; the token's entry
in the tokens file gives a name and a role:

| role     | may call |
| -------- | -------- |
| operator | everything |
| reader   | read-only ControlService calls and WatchEvents, server reflection |
| agent    | AgentService.Connect, as the node its token names |

A missing or unknown token is UNAUTHENTICATED; a known token of the wrong
role is PERMISSION_DENIED. gRPC health checks need no token (load balancers
and orchestrators probe them). RegisterMember, the replicas' internal call,
is also accepted without a token from a peer whose verified TLS certificate
names the member it registers (checked in the servicer, which sees the id).

The interceptor wraps each method handler rather than deciding from the
call details alone, because the peer's certificate is only visible on the
servicer context. It publishes the caller as a `Principal` in a context
variable for the servicers (`current_principal()`), counts every refusal in
`AUTH_FAILURES` (exported as lepton_auth_failures_total{reason}) and logs it
with the method, the peer and the token's *name* when known; the token
itself is never logged. Without a tokens file the interceptor is not
installed at all and every caller is an operator (insecure dev mode).
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from controller.security.tokens import TokenFile, TokenStore
from lepton import tls

log = logging.getLogger("lepton.controller.auth")

CONTROL = "/lepton.v1.ControlService/"
AGENT_CONNECT = "/lepton.v1.AgentService/Connect"
REGISTER_MEMBER = CONTROL + "RegisterMember"
# Calls that change nothing: what a reader (dashboards, auditors) may do.
READ_METHODS = frozenset(
    CONTROL + m
    for m in (
        "GetClusterStatus",
        "ListNodes",
        "GetNode",
        "GetJob",
        "ListJobs",
        "ListTasks",
        "WatchEvents",
        "PlanRebalance",  # computes moves, commits none
    )
)
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/",)
READER_PREFIXES = ("/grpc.reflection.v1alpha.ServerReflection/", "/grpc.reflection.v1.ServerReflection/")

# Reasons, the label values of lepton_auth_failures_total.
MISSING_TOKEN = "missing_token"
INVALID_TOKEN = "invalid_token"
WRONG_ROLE = "wrong_role"
NODE_MISMATCH = "node_mismatch"
PEER_MISMATCH = "peer_mismatch"
REASONS = (MISSING_TOKEN, INVALID_TOKEN, WRONG_ROLE, NODE_MISMATCH, PEER_MISMATCH)


class AuthFailures:
    """Thread-safe counters of refused calls by reason (read by the metrics exporter)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(REASONS, 0)

    def inc(self, reason: str) -> None:
        with self._lock:
            self._counts[reason] = self._counts.get(reason, 0) + 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())


AUTH_FAILURES = AuthFailures()


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token's name and role, and the names in a verified client certificate."""

    name: str
    role: str  # operator | reader | agent | peer (certificate only) | public (health)
    node: str = ""  # agent tokens: the node id they are bound to
    cert_names: frozenset[str] = field(default_factory=frozenset)


_CURRENT: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("lepton_principal", default=None)


def current_principal() -> Principal | None:
    """The caller of the RPC being served; None when no interceptor runs (auth off, no TLS)."""
    return _CURRENT.get()


def allowed(method: str, role: str) -> bool:
    if method.startswith(PUBLIC_PREFIXES) or role == "operator":
        return True
    if role == "reader":
        return method in READ_METHODS or method.startswith(READER_PREFIXES)
    if role == "agent":
        return method == AGENT_CONNECT
    if role == "peer":
        return method == REGISTER_MEMBER
    return False


def bearer_token(metadata) -> str | None:
    """The token of `authorization: Bearer <token>` (None when absent or not a bearer value)."""
    for item in metadata or ():
        key, value = item[0], item[1]
        if key == "authorization":
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return ""
    return None


class _LogLimiter:
    """At most one refusal line per reason per second, so a flood cannot fill the disk."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, reason: str, msg: str, *args) -> None:
        now = time.monotonic()
        if now - self._last.get(reason, -10.0) < 1.0:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return
        self._last[reason] = now
        extra = self._suppressed.pop(reason, 0)
        suffix = f" (+{extra} similar refusals not logged)" if extra else ""
        log.warning(msg + suffix, *args)


_LIMITER = _LogLimiter()


def refuse(reason: str, method: str, peer: str, who: str, detail: str) -> None:
    """Counts and logs one refusal (never with the token)."""
    AUTH_FAILURES.inc(reason)
    _LIMITER.log(
        reason, "refused %s from %s (%s): %s: %s", method, peer or "?", who or "no token", reason, detail
    )


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates each call with the tokens file (if any) and the peer's TLS certificate."""

    def __init__(self, tokens: TokenStore | TokenFile | None, *, tls_enabled: bool) -> None:
        self.tokens = tokens
        self.tls_enabled = tls_enabled

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        return _wrap(handler, lambda ctx: self._authenticate(method, ctx))

    async def _authenticate(self, method: str, ctx: grpc.aio.ServicerContext) -> Principal | None:
        """The caller, or None after aborting the call with the right status."""
        names = frozenset(tls.peer_names(ctx.auth_context())) if self.tls_enabled else frozenset()
        if self.tokens is None:
            return Principal(name="", role="operator", cert_names=names)
        if method.startswith(PUBLIC_PREFIXES):
            return Principal(name="", role="public", cert_names=names)
        token = bearer_token(ctx.invocation_metadata())
        if not token:
            if method == REGISTER_MEMBER and names:
                # A replica's own call: its certificate is its credential; the
                # servicer checks that the certificate names the member.
                return Principal(name=sorted(names)[0], role="peer", cert_names=names)
            why = "no bearer token (send 'authorization: Bearer TOKEN' metadata, lepton-ctl --token)"
            if token == "":
                why = "the authorization metadata is not 'Bearer TOKEN'"
            refuse(MISSING_TOKEN, method, ctx.peer(), "", why)
            await ctx.abort(grpc.StatusCode.UNAUTHENTICATED, why)
            return None
        store = self.tokens.current() if isinstance(self.tokens, TokenFile) else self.tokens
        entry = store.lookup(token)
        if entry is None:
            refuse(INVALID_TOKEN, method, ctx.peer(), "", "unknown token")
            await ctx.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown or revoked token")
            return None
        principal = Principal(name=entry.name, role=entry.role, node=entry.node, cert_names=names)
        if not allowed(method, entry.role):
            short = method.rsplit("/", 1)[-1]
            refuse(WRONG_ROLE, method, ctx.peer(), entry.name, f"role {entry.role}")
            await ctx.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"token {entry.name!r} has role {entry.role}, which may not call {short}",
            )
            return None
        return principal


def _wrap(handler: grpc.RpcMethodHandler, authenticate: Callable) -> grpc.RpcMethodHandler:
    """The same handler, with `authenticate(ctx)` run first and the Principal set for the body."""
    if handler.request_streaming and handler.response_streaming:
        attr = "stream_stream"
    elif handler.request_streaming:
        attr = "stream_unary"
    elif handler.response_streaming:
        attr = "unary_stream"
    else:
        attr = "unary_unary"
    inner = getattr(handler, attr)
    if inner is None:
        return handler

    if inspect.isasyncgenfunction(inner):
        # A streaming method written as an async generator must stay one:
        # grpc.aio picks how to drive a handler from its type.
        async def gen_behavior(request, context):
            principal = await authenticate(context)
            if principal is None:
                return
            token = _CURRENT.set(principal)
            try:
                async for item in inner(request, context):
                    yield item
            finally:
                # A generator closed from elsewhere runs this in another context.
                with contextlib.suppress(ValueError):
                    _CURRENT.reset(token)

        behavior = gen_behavior
    else:

        async def behavior(request, context):
            principal = await authenticate(context)
            if principal is None:
                return None
            token = _CURRENT.set(principal)
            try:
                result = inner(request, context)
                if inspect.isawaitable(result):
                    result = await result
                return result
            finally:
                _CURRENT.reset(token)

    return handler._replace(**{attr: behavior})
