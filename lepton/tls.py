"""TLS material shared by every Lepton process: reading PEM files into gRPC credentials.

The controller, the agent and lepton-ctl all take the same three settings:
`--tls-cert` / `--tls-key` (this process's certificate chain and private key)
and `--tls-ca` (the CA bundle the other side must be signed by), with the
environment variables LEPTON_TLS_CERT / LEPTON_TLS_KEY / LEPTON_TLS_CA. This
module turns them into `grpc.ServerCredentials` / `grpc.ChannelCredentials`
and reads a peer's certificate names back out of a gRPC auth context.
It only uses grpc and the standard library: certificate *creation* (which
needs `cryptography`) lives in leptonctl/certs.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from lepton.errors import InvalidArgument

# Names under which gRPC's auth context carries the verified peer certificate.
_NAME_KEYS = ("x509_common_name", "x509_subject_alternative_name")


@dataclass(frozen=True)
class TLSFiles:
    """Paths of this process's certificate, key and trusted CA bundle (any may be None)."""

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.cert is not None or self.ca is not None

    @classmethod
    def from_values(
        cls, cert: str | Path | None = None, key: str | Path | None = None, ca: str | Path | None = None
    ) -> TLSFiles:
        def p(v):
            return Path(v) if v not in (None, "") else None

        return cls(p(cert), p(key), p(ca))

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TLSFiles:
        return cls.from_values(
            env.get("LEPTON_TLS_CERT"), env.get("LEPTON_TLS_KEY"), env.get("LEPTON_TLS_CA")
        )

    def check(self, *, need_cert: bool) -> None:
        """Raises InvalidArgument when the combination is unusable or a file cannot be read."""
        if (self.cert is None) != (self.key is None):
            raise InvalidArgument("--tls-cert and --tls-key go together")
        if need_cert and self.enabled and self.cert is None:
            raise InvalidArgument("TLS needs --tls-cert and --tls-key (this process must prove who it is)")
        for what, path in (("--tls-cert", self.cert), ("--tls-key", self.key), ("--tls-ca", self.ca)):
            if path is not None:
                _read(path, what)


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InvalidArgument(f"{what}: cannot read {path}: {e.strerror}") from None
    if b"-----BEGIN" not in data:
        raise InvalidArgument(f"{what}: {path} is not a PEM file")
    return data


def server_credentials(files: TLSFiles, *, require_client_cert: bool) -> grpc.ServerCredentials:
    """Server side of TLS. With `require_client_cert` the peer must present a cert signed by --tls-ca.

    Without it, gRPC does not ask for a client certificate at all, so callers
    authenticate with tokens instead (lepton-ctl on the API port).
    """
    files.check(need_cert=True)
    assert files.cert is not None and files.key is not None
    pair = (_read(files.key, "--tls-key"), _read(files.cert, "--tls-cert"))
    ca = _read(files.ca, "--tls-ca") if files.ca is not None else None
    if require_client_cert and ca is None:
        raise InvalidArgument("mutual TLS needs --tls-ca (the CA that signs peer certificates)")
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=require_client_cert)


def channel_credentials(files: TLSFiles) -> grpc.ChannelCredentials:
    """Client side of TLS: trust --tls-ca (system roots if absent), present --tls-cert if given."""
    files.check(need_cert=False)
    ca = _read(files.ca, "--tls-ca") if files.ca is not None else None
    key = _read(files.key, "--tls-key") if files.key is not None else None
    cert = _read(files.cert, "--tls-cert") if files.cert is not None else None
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def peer_names(auth_context: Mapping[str, list[bytes]] | None) -> set[str]:
    """The CN and subject alternative names of the peer's verified certificate (empty: none).

    gRPC only fills these in after verifying the chain against the server's
    root certificates, so a name here is one the cluster CA vouched for.
    """
    names: set[str] = set()
    for key in _NAME_KEYS:
        for raw in (auth_context or {}).get(key, ()):
            names.add(raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw))
    return names
