"""Security of a controller replica: role tokens, the auth interceptor, TLS identities, input limits.

- `tokens.py`: the tokens file (name, role, SHA-256 of the token, node) and
  constant-time lookup of a presented bearer token;
- `auth.py`: the grpc.aio server interceptor that authenticates every call
  (UNAUTHENTICATED / PERMISSION_DENIED), the per-call `Principal` the
  servicers consult, and `AUTH_FAILURES`, the counters metrics export;
- `identity.py`: checks that bind names to certificates (an agent's node id,
  a replica registering its address) and the loopback rule of insecure mode;
- `limits.py`: cluster-wide bounds the servicers enforce before proposing.

TLS credentials themselves are built by `lepton.tls` (shared with the agent
and lepton-ctl).
"""
