"""Role tokens: the tokens file and constant-time lookup of a bearer token.

The file (`--tokens-file`, YAML or JSON) lists who may call the controller:

    tokens:
      - {name: alice, role: operator, sha256: 9f86d0...}
      - {name: grafana, role: reader, sha256: 60303a...}
      - {name: agent-n1, role: agent, node: n1, sha256: fd61a0...}

(a bare list works too). Only SHA-256 digests are stored, so the file is not
a secret by itself; `lepton-ctl certs token` makes a random token and its
entry. Tokens are high-entropy random strings, so an unsalted fast hash is
enough: there is nothing to brute-force. A presented token is hashed and
compared with *every* entry with `hmac.compare_digest`, without stopping at
the first match, so timing does not reveal how much of a digest matched or
where in the file it sits. The file is re-read when it changes (TokenFile).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from lepton.errors import InvalidArgument

log = logging.getLogger("lepton.controller.auth")

ROLES = ("operator", "reader", "agent")
# A bearer value longer than this is not one of ours; refuse it before hashing.
MAX_TOKEN_LEN = 4096
_HEX64 = re.compile(r"[0-9a-f]{64}")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class TokenEntry:
    name: str
    role: str
    sha256: str
    node: str = ""  # agent tokens: the only node id this token may connect as

    def check(self) -> None:
        if not self.name:
            raise InvalidArgument("token entry without a name")
        if self.role not in ROLES:
            raise InvalidArgument(f"token {self.name!r}: role {self.role!r} is not one of {', '.join(ROLES)}")
        if not _HEX64.fullmatch(self.sha256):
            raise InvalidArgument(f"token {self.name!r}: sha256 must be 64 lower-case hex digits")
        if self.role == "agent" and not self.node:
            # An agent token that could register any node id would let one
            # stolen token impersonate every machine in the cluster.
            raise InvalidArgument(f"token {self.name!r}: an agent token must name its node (node: ID)")
        if self.role != "agent" and self.node:
            raise InvalidArgument(f"token {self.name!r}: only agent tokens are bound to a node")

    def to_dict(self) -> dict:
        d = {"name": self.name, "role": self.role, "sha256": self.sha256}
        if self.node:
            d["node"] = self.node
        return d


class TokenStore:
    """The entries of one tokens file; `lookup()` maps a presented token to its entry."""

    def __init__(self, entries: list[TokenEntry]) -> None:
        names = set()
        digests = set()
        for e in entries:
            e.check()
            if e.name in names:
                raise InvalidArgument(f"token name {e.name!r} appears twice")
            if e.sha256 in digests:
                raise InvalidArgument(f"token {e.name!r}: the same token is listed twice")
            names.add(e.name)
            digests.add(e.sha256)
        self.entries = list(entries)
        self._digests = [(bytes.fromhex(e.sha256), e) for e in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, token: str) -> TokenEntry | None:
        if not token or len(token) > MAX_TOKEN_LEN:
            return None
        presented = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        found = None
        for digest, entry in self._digests:
            # No early exit: every call does the same work whatever matches.
            if hmac.compare_digest(digest, presented):
                found = entry
        return found

    @classmethod
    def load(cls, path: str | Path) -> TokenStore:
        """Reads a tokens file; InvalidArgument names the problem (and never echoes a token)."""
        path = Path(path)
        try:
            doc = yaml.safe_load(path.read_text())
        except OSError as e:
            raise InvalidArgument(f"cannot read tokens file {path}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise InvalidArgument(
                f"tokens file {path} is not valid YAML/JSON: {str(e).splitlines()[0]}"
            ) from None
        if isinstance(doc, dict):
            doc = doc.get("tokens")
        if not isinstance(doc, list):
            raise InvalidArgument(f"tokens file {path}: expected a list of tokens (or tokens: [...])")
        entries = []
        for i, raw in enumerate(doc):
            if not isinstance(raw, dict):
                raise InvalidArgument(f"tokens file {path}: entry {i + 1} is not a mapping")
            unknown = set(raw) - {"name", "role", "sha256", "node"}
            if "token" in raw:
                raise InvalidArgument(
                    f"tokens file {path}: entry {i + 1} holds a plain token; store its sha256 instead"
                )
            if unknown:
                raise InvalidArgument(f"tokens file {path}: entry {i + 1} has unknown keys {sorted(unknown)}")
            entries.append(
                TokenEntry(
                    name=str(raw.get("name", "")),
                    role=str(raw.get("role", "")),
                    sha256=str(raw.get("sha256", "")).lower(),
                    node=str(raw.get("node") or ""),
                )
            )
        try:
            return cls(entries)
        except InvalidArgument as e:
            raise InvalidArgument(f"tokens file {path}: {e}") from None


class TokenFile:
    """A tokens file that is re-read when it changes, so tokens are added or revoked without a restart.

    The file's mtime and size are looked at, at most every `check_every`
    seconds, on the calls that need a token. A file that no longer parses
    keeps the previous tokens in force (and is logged), so a half-written
    edit never locks everyone out or lets everyone in.
    """

    def __init__(self, path: str | Path, check_every: float = 2.0) -> None:
        self.path = Path(path)
        self.check_every = check_every
        self.store = TokenStore.load(self.path)
        self._stamp = self._stat()
        self._checked = time.monotonic()

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def current(self) -> TokenStore:
        now = time.monotonic()
        if now - self._checked < self.check_every:
            return self.store
        self._checked = now
        stamp = self._stat()
        if stamp is None or stamp == self._stamp:
            return self.store
        self._stamp = stamp
        try:
            self.store = TokenStore.load(self.path)
            log.info("tokens file %s reloaded: %d token(s)", self.path, len(self.store))
        except InvalidArgument as e:
            log.error(
                "tokens file %s changed but cannot be used, keeping the previous tokens: %s", self.path, e
            )
        return self.store
