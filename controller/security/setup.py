"""What controller/server.py needs from security, built from ControllerConfig in one place.

- `api_credentials`: TLS for the API port (ControlService + AgentService).
  gRPC's Python API can either require a client certificate or not ask for
  one at all (there is no "ask but accept none"), so `--tls-client-certs`
  chooses: `require` (default) makes agents, lepton-ctl and replicas present
  a certificate signed by --tls-ca; `none` lets operators in with a token
  alone, and agents are then identified by their node-bound tokens only.
- `raft_credentials`: mutual TLS on the Raft port, always required when TLS
  is on (replicas present their own certificate as clients).
- `peer_channel` / `peer_metadata`: how a replica calls another replica's API
  (RegisterMember): with its certificate and, when set, --token.
- `interceptors`: the AuthInterceptor when tokens or TLS are configured.
- `warn_if_insecure`: the loud start-up warning of insecure mode.
"""

from __future__ import annotations

import logging

import grpc

from controller.config import ControllerConfig
from controller.security.auth import AuthInterceptor
from controller.security.tokens import TokenFile
from lepton import tls

log = logging.getLogger("lepton.controller.security")


def tls_files(cfg: ControllerConfig) -> tls.TLSFiles:
    return tls.TLSFiles(cfg.tls_cert, cfg.tls_key, cfg.tls_ca)


def api_credentials(cfg: ControllerConfig) -> grpc.ServerCredentials | None:
    files = tls_files(cfg)
    if not files.enabled:
        return None
    return tls.server_credentials(files, require_client_cert=cfg.tls_client_certs == "require")


def raft_credentials(
    cfg: ControllerConfig,
) -> tuple[grpc.ServerCredentials | None, grpc.ChannelCredentials | None]:
    files = tls_files(cfg)
    if not files.enabled:
        return None, None
    return tls.server_credentials(files, require_client_cert=True), tls.channel_credentials(files)


def peer_channel(cfg: ControllerConfig, target: str) -> grpc.aio.Channel:
    files = tls_files(cfg)
    if files.enabled:
        return grpc.aio.secure_channel(target, tls.channel_credentials(files))
    return grpc.aio.insecure_channel(target)


def peer_metadata(cfg: ControllerConfig) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {cfg.token}"),) if cfg.token else ()


def interceptors(cfg: ControllerConfig) -> list[grpc.aio.ServerInterceptor]:
    tokens = TokenFile(cfg.tokens_file) if cfg.tokens_file is not None else None
    enabled = tls_files(cfg).enabled
    if tokens is None and not enabled:
        return []
    if tokens is not None:
        log.info("authentication on: %d token(s) from %s", len(tokens.store), cfg.tokens_file)
    return [AuthInterceptor(tokens, tls_enabled=enabled)]


def warn_if_insecure(cfg: ControllerConfig) -> None:
    """Says loudly what an attacker on the network could do with this configuration."""
    files = tls_files(cfg)
    if not files.enabled:
        where = "loopback only" if not cfg.insecure else "ANY network it is bound to (--insecure)"
        log.warning(
            "INSECURE: TLS is off: API and Raft traffic is plain text and unauthenticated on %s "
            "(listen %s, raft %s); see docs/security.md",
            where,
            cfg.listen,
            cfg.raft_listen,
        )
    if cfg.tokens_file is None:
        log.warning(
            "INSECURE: no --tokens-file: every client that reaches the API is an operator "
            "(may submit jobs, i.e. run commands on every node)"
        )
    elif files.enabled and cfg.tls_client_certs == "none":
        log.info("TLS client certificates are not requested on the API port: agents authenticate by token")
    peer_cert = files.enabled and cfg.tls_client_certs == "require"
    if cfg.tokens_file is not None and not peer_cert and not cfg.token and len(cfg.peers) > 1:
        # RegisterMember would be refused: followers' API addresses stay unknown
        # and clients sent to a follower cannot be redirected to the leader.
        log.warning(
            "no --token: with a tokens file and no client certificates on the API port, this replica "
            "cannot register its API address with the leader; give it an operator token (--token)"
        )
