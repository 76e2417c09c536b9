"""`lepton-ctl certs`: a small CA for a Lepton cluster, certificates and role tokens.

    lepton-ctl certs init --dir pki                                   # pki/ca.crt, pki/ca.key
    lepton-ctl certs issue --ca-dir pki --name c1 --ip 10.0.0.1       # pki/c1.crt, pki/c1.key
    lepton-ctl certs token --name alice --role operator --tokens-file tokens.yaml

Certificates carry the name as CN and as a DNS subject alternative name (the
controller matches an agent's node id and a Raft peer's replica id against
them) plus the given IP addresses and DNS names (what clients dial). Keys are
ECDSA P-256: small and fast, and every gRPC build accepts them. Private keys
are written 0600. `token` prints a fresh random token once and stores only
its SHA-256 in the tokens file the controller reads (--tokens-file).

Needs the `cryptography` package (`pip install 'lepton[certs]'`); without it
docs/security.md has the equivalent openssl commands.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import sys
from pathlib import Path

import yaml

from lepton.errors import FailedPrecondition, InvalidArgument

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
ROLES = ("operator", "reader", "agent")


def _crypto():
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:  # pragma: no cover - depends on the installation
        raise FailedPrecondition(
            "lepton-ctl certs needs the 'cryptography' package (pip install 'lepton[certs]'); "
            "docs/security.md shows the same steps with openssl"
        ) from None
    return x509, hashes, serialization, ec, ExtendedKeyUsageOID, NameOID


def _write(path: Path, data: bytes, private: bool, force: bool) -> None:
    if path.exists() and not force:
        raise FailedPrecondition(f"{path} exists (use --force to overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Create with the final mode so a private key is never world-readable, even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    if private:
        os.chmod(path, 0o600)


def _key_pem(key, serialization) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def init_ca(directory: str | Path, name: str = "lepton-ca", days: int = 3650, force: bool = False) -> Path:
    """Creates DIR/ca.crt and DIR/ca.key (a self-signed CA); returns the certificate's path."""
    x509, hashes, serialization, ec, _eku, NameOID = _crypto()
    d = Path(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(d / CA_KEY, _key_pem(key, serialization), private=True, force=force)
    _write(d / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), private=False, force=force)
    return d / CA_CERT


def issue(
    ca_dir: str | Path,
    name: str,
    *,
    ips: tuple[str, ...] | list[str] = (),
    dns: tuple[str, ...] | list[str] = (),
    out_dir: str | Path | None = None,
    days: int = 825,
    force: bool = False,
) -> tuple[Path, Path]:
    """Issues NAME.crt / NAME.key signed by CA_DIR's CA, usable as TLS server and client certificate."""
    x509, hashes, serialization, ec, ExtendedKeyUsageOID, NameOID = _crypto()
    if not name or "/" in name or name.startswith("."):
        raise InvalidArgument(f"certificate name {name!r} is not usable as a file name")
    ca_dir = Path(ca_dir)
    try:
        ca_cert = x509.load_pem_x509_certificate((ca_dir / CA_CERT).read_bytes())
        ca_key = serialization.load_pem_private_key((ca_dir / CA_KEY).read_bytes(), password=None)
    except OSError as e:
        raise FailedPrecondition(f"cannot read the CA in {ca_dir}: {e.strerror} (run 'certs init')") from None
    alt: list = [x509.DNSName(name)]
    for extra in dns:
        if extra != name:
            alt.append(x509.DNSName(extra))
    for ip in ips:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise InvalidArgument(f"--ip {ip!r} is not an IP address") from None
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        # One certificate per process serves both directions: a controller is a
        # server to agents and a client to its Raft peers.
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    out = Path(out_dir) if out_dir is not None else ca_dir
    crt_path, key_path = out / f"{name}.crt", out / f"{name}.key"
    _write(key_path, _key_pem(key, serialization), private=True, force=force)
    _write(crt_path, cert.public_bytes(serialization.Encoding.PEM), private=False, force=force)
    return crt_path, key_path


def new_token(
    name: str, role: str, node: str = "", tokens_file: str | Path | None = None
) -> tuple[str, dict]:
    """A fresh random token and its tokens-file entry (appended to `tokens_file` when given)."""
    from controller.security.tokens import TokenEntry, hash_token

    token = secrets.token_urlsafe(32)
    entry = TokenEntry(name=name, role=role, sha256=hash_token(token), node=node)
    entry.check()  # the controller would refuse what this refuses
    doc = entry.to_dict()
    if tokens_file is not None:
        path = Path(tokens_file)
        existing: list = []
        if path.exists():
            loaded = yaml.safe_load(path.read_text()) or {}
            existing = loaded.get("tokens", []) if isinstance(loaded, dict) else list(loaded)
        if any(isinstance(e, dict) and e.get("name") == name for e in existing):
            raise FailedPrecondition(f"{path} already has a token named {name!r}")
        existing.append(doc)
        _write(path, yaml.safe_dump({"tokens": existing}, sort_keys=False).encode(), private=True, force=True)
    return token, doc


# ---- CLI -----------------------------------------------------------------


def add_parser(nouns) -> None:
    """Adds `certs init|issue|token` to lepton-ctl's noun parsers."""
    p = nouns.add_parser(
        "certs",
        help="create a CA, certificates and tokens for a cluster",
        description="Create a CA, certificates and role tokens for a Lepton cluster (see docs/security.md).",
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    v = verbs.add_parser("init", help="create a CA (DIR/ca.crt, DIR/ca.key)")
    v.add_argument("--dir", required=True, help="where to write ca.crt and ca.key")
    v.add_argument("--name", default="lepton-ca", help="the CA's common name (default lepton-ca)")
    v.add_argument("--days", type=int, default=3650, help="validity in days (default 3650)")
    v.add_argument("--force", action="store_true", help="overwrite existing files")
    v.set_defaults(fn=None, certs_fn=_cmd_init)
    v = verbs.add_parser("issue", help="issue a certificate for a controller, agent or operator")
    v.add_argument("--ca-dir", required=True, help="directory with ca.crt and ca.key")
    v.add_argument("--name", required=True, help="controller id or node id (CN and DNS name)")
    v.add_argument("--ip", action="append", default=[], help="IP address clients dial (repeatable)")
    v.add_argument("--dns", action="append", default=[], help="extra DNS name (repeatable)")
    v.add_argument("--out-dir", help="where to write NAME.crt and NAME.key (default --ca-dir)")
    v.add_argument("--days", type=int, default=825, help="validity in days (default 825)")
    v.add_argument("--force", action="store_true", help="overwrite existing files")
    v.set_defaults(fn=None, certs_fn=_cmd_issue)
    v = verbs.add_parser("token", help="make a role token; prints it once, stores only its hash")
    v.add_argument("--name", required=True, help="who the token is for (shown in logs)")
    v.add_argument("--role", required=True, choices=ROLES)
    v.add_argument("--node", default="", help="the node an agent token may connect as (role agent)")
    v.add_argument("--tokens-file", help="append the hashed entry to this file (created 0600)")
    v.set_defaults(fn=None, certs_fn=_cmd_token)


def run(args) -> int:
    return args.certs_fn(args)


def _cmd_init(args) -> int:
    path = init_ca(args.dir, name=args.name, days=args.days, force=args.force)
    print(f"CA certificate {path} (key {Path(args.dir) / CA_KEY}; keep it offline)")
    return 0


def _cmd_issue(args) -> int:
    crt, key = issue(
        args.ca_dir,
        args.name,
        ips=args.ip,
        dns=args.dns,
        out_dir=args.out_dir,
        days=args.days,
        force=args.force,
    )
    print(f"certificate {crt}, key {key}")
    return 0


def _cmd_token(args) -> int:
    token, doc = new_token(args.name, args.role, args.node, args.tokens_file)
    if args.tokens_file:
        print(
            f"added {args.name} ({args.role}) to {args.tokens_file}; the token (shown once):", file=sys.stderr
        )
    else:
        print("tokens-file entry:\n" + yaml.safe_dump([doc], sort_keys=False), file=sys.stderr, end="")
    print(token)
    return 0
