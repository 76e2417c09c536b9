"""Test PKI: a cluster CA, a foreign CA, certificates and role tokens, made once per test session.

Built with leptonctl.certs (the code behind `lepton-ctl certs`), so the tests
exercise the same certificates an operator would make.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from leptonctl import certs


@dataclass
class PKI:
    dir: Path  # the cluster CA and certificates issued by it
    foreign: Path  # another CA and certificates issued by it (an outsider)
    tokens_file: Path
    tokens: dict[str, str]  # name -> plain token

    @property
    def ca(self) -> Path:
        return self.dir / certs.CA_CERT

    def cert(self, name: str, foreign: bool = False) -> tuple[Path, Path]:
        d = self.foreign if foreign else self.dir
        return d / f"{name}.crt", d / f"{name}.key"


TOKENS = (
    ("alice", "operator", ""),
    ("bob", "reader", ""),
    ("agent-n1", "agent", "n1"),
    ("agent-n2", "agent", "n2"),
)
NAMES = ("c1", "c2", "c3", "c4", "n1", "n2", "alice")


def make_pki(root: Path) -> PKI:
    cluster, foreign = root / "pki", root / "foreign"
    certs.init_ca(cluster)
    certs.init_ca(foreign, name="someone-else")
    for name in NAMES:
        certs.issue(cluster, name, ips=["127.0.0.1"], dns=["localhost"])
        certs.issue(foreign, name, ips=["127.0.0.1"], dns=["localhost"])
    tokens_file = root / "tokens.yaml"
    tokens = {}
    for name, role, node in TOKENS:
        tokens[name], _ = certs.new_token(name, role, node, tokens_file)
    return PKI(cluster, foreign, tokens_file, tokens)
