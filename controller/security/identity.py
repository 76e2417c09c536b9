"""Checks that bind names to callers, made where the name is known, plus insecure mode's loopback rule.

- An agent may only connect as its own node: an agent token names the one
  node id it may register, and a verified client certificate must name the
  node id (CN or subject alternative name) in Hello.
- A replica registering its API address without a token must present a
  certificate that names that replica id.
- Without TLS a controller listens on loopback only, unless --insecure
  (see `is_loopback`, used by controller/config.py).

Each refusal is counted in auth.AUTH_FAILURES and raised as a LeptonError
that the servicers already map to PERMISSION_DENIED.
"""

from __future__ import annotations

import ipaddress
import socket

from controller.security import auth
from lepton.errors import PermissionDenied


def check_agent_node(node_id: str, peer: str = "") -> None:
    """Raises PermissionDenied unless the current caller may connect as `node_id`."""
    p = auth.current_principal()
    if p is None:  # no interceptor: neither tokens nor TLS configured
        return
    if p.cert_names and node_id not in p.cert_names:
        detail = f"certificate names {', '.join(sorted(p.cert_names))}, not node {node_id!r}"
        auth.refuse(auth.NODE_MISMATCH, auth.AGENT_CONNECT, peer, p.name, detail)
        raise PermissionDenied(f"the client certificate does not name node {node_id!r}")
    if p.role == "agent" and p.node != node_id:
        auth.refuse(auth.NODE_MISMATCH, auth.AGENT_CONNECT, peer, p.name, f"token for node {p.node!r}")
        raise PermissionDenied(f"token {p.name!r} may only connect as node {p.node!r}, not {node_id!r}")


def check_register_member(member_id: str, peer: str = "") -> None:
    """Raises PermissionDenied unless the caller is an operator or the replica `member_id` itself."""
    p = auth.current_principal()
    if p is None or p.role == "operator":
        return
    if p.role == "peer" and member_id in p.cert_names:
        return
    auth.refuse(auth.PEER_MISMATCH, auth.REGISTER_MEMBER, peer, p.name, f"registering {member_id!r}")
    raise PermissionDenied(f"only an operator or replica {member_id!r} itself may register its address")


def is_loopback(address: str) -> bool:
    """True when HOST of HOST:PORT only reaches this machine (127/8, ::1, or a name resolving only there)."""
    host = address.rpartition(":")[0].strip("[]")
    if not host:
        return False  # ":7001" listens everywhere
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)
