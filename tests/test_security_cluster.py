"""Three real controller processes with TLS everywhere and role tokens.

- lepton-ctl with --tls-ca, a client certificate and --token works against
  the cluster (through whichever replica it reaches first); without the token
  it is UNAUTHENTICATED, without the CA it cannot connect;
- followers register their API addresses with their own certificates;
- the Raft ports refuse whoever lacks a certificate of the cluster CA: a
  client with a certificate from another CA, one with no certificate and a
  plain-text client cannot deliver a message (a TIMEOUT_NOW at term 1000
  that would have forced an election, had any replica accepted it); nor can
  a holder of a cluster certificate that is not a member's (an agent's), or
  one claiming to be another replica than its certificate names.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import grpc
import pytest

from controller.raft.transport import CLUSTER_KEY, FROM_KEY
from controller.raft.types import MsgType
from lepton import errors, tls
from lepton.client import LeptonClient
from lepton.v1 import raft_pb2, raft_pb2_grpc
from tests.support.pki import make_pki
from tests.support.procs import ControllerProc, free_port


@pytest.fixture
def secure_cluster(tmp_path):
    pki = make_pki(tmp_path)
    ids = ["c1", "c2", "c3"]
    raft = {rid: f"127.0.0.1:{free_port()}" for rid in ids}
    procs = []
    for rid in ids:
        crt, key = pki.cert(rid)
        extra = ["--tls-cert", str(crt), "--tls-key", str(key), "--tls-ca", str(pki.ca)]
        extra += ["--tokens-file", str(pki.tokens_file)]
        procs.append(
            ControllerProc(rid, f"127.0.0.1:{free_port()}", raft[rid], raft, tmp_path / rid, tmp_path, extra)
        )
    try:
        for p in procs:
            p.start()
        yield pki, procs
    finally:
        for p in procs:
            p.kill()


def operator_client(pki, addresses) -> LeptonClient:
    crt, key = pki.cert("alice")
    creds = tls.channel_credentials(tls.TLSFiles(crt, key, pki.ca))
    return LeptonClient(addresses, timeout=10, token=pki.tokens["alice"], credentials=creds)


def wait_registered(client: LeptonClient, n: int, procs) -> None:
    """Until a leader is known and every replica's API address is in the members list."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            st = client.cluster_status()
            if st.leader_id and sum(1 for m in st.members if m.api_address) == n:
                return
        except errors.LeptonError:
            pass
        time.sleep(0.2)
    raise AssertionError("cluster never registered all members:\n" + "\n".join(p.log_tail() for p in procs))


def ctl(pki, addresses, *args, token=True, ca=True):
    crt, key = pki.cert("alice")
    argv = [sys.executable, "-m", "leptonctl.main", "--controllers", ",".join(addresses), "-o", "json"]
    if ca:
        argv += ["--tls-ca", str(pki.ca), "--tls-cert", str(crt), "--tls-key", str(key)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEPTON_")}
    if token:
        env["LEPTON_TOKEN"] = pki.tokens["alice"]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=60, env=env)


def raft_probe(
    address: str, creds: grpc.ChannelCredentials | None, target: str, sender: str = "c9"
) -> grpc.StatusCode:
    """Sends one TIMEOUT_NOW at term 1000 to a replica's Raft port; returns how the call ended."""
    msg = raft_pb2.RaftMessage(type=int(MsgType.TIMEOUT_NOW), to=target, term=1000, **{"from": sender})
    metadata = ((CLUSTER_KEY, "lepton"), (FROM_KEY, sender))
    ch = grpc.secure_channel(address, creds) if creds is not None else grpc.insecure_channel(address)
    try:
        stub = raft_pb2_grpc.RaftServiceStub(ch)
        stub.Stream(iter([raft_pb2.RaftBatch(messages=[msg])]), timeout=5, metadata=metadata)
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        return e.code()
    finally:
        ch.close()


def test_tls_cluster_with_tokens(secure_cluster):
    pki, procs = secure_cluster
    addresses = [p.api for p in procs]
    with operator_client(pki, addresses) as client:
        wait_registered(client, 3, procs)
        term = client.cluster_status().term

        # lepton-ctl against a follower first: the redirect is followed over TLS too.
        st = client.cluster_status()
        follower = next(m.api_address for m in st.members if m.id != st.leader_id)
        p = ctl(pki, [follower], "jobs", "run", "web", "--cpu", "100m", "--", "sleep", "60")
        assert p.returncode == 0, p.stderr
        p = ctl(pki, addresses, "jobs", "list")
        assert p.returncode == 0, p.stderr
        assert [j["name"] for j in json.loads(p.stdout)] == ["web"]
        p = ctl(pki, addresses, "jobs", "list", token=False)
        assert p.returncode == 8 and "bearer token" in p.stderr
        p = ctl(pki, addresses, "jobs", "list", ca=False)
        assert p.returncode == 4, p.stderr

        # The Raft ports: outsiders cannot deliver anything.
        foreign_crt, foreign_key = pki.cert("c4", foreign=True)
        outsiders = {
            "certificate of another CA": tls.channel_credentials(
                tls.TLSFiles(foreign_crt, foreign_key, pki.foreign / "ca.crt")
            ),
            # Trusts the cluster CA (so the server is fine) but presents another CA's certificate.
            "another CA's client certificate": tls.channel_credentials(
                tls.TLSFiles(foreign_crt, foreign_key, pki.ca)
            ),
            "no client certificate": tls.channel_credentials(tls.TLSFiles(None, None, pki.ca)),
            "plain text": None,
        }
        for p in procs:
            for what, creds in outsiders.items():
                code = raft_probe(p.raft, creds, p.id)
                assert code == grpc.StatusCode.UNAVAILABLE, (p.id, what, code)

        # Certificates of the cluster CA that do not belong to a member: an agent's
        # (claiming a replica's id, or its own), and a certificate named like a
        # replica that is not one. The stream is refused after the handshake.
        for p in procs:
            for cert, sender in (("n1", "c2"), ("n1", "n1"), ("c4", "c4"), ("c4", "c1")):
                crt, key = pki.cert(cert)
                creds = tls.channel_credentials(tls.TLSFiles(crt, key, pki.ca))
                code = raft_probe(p.raft, creds, p.id, sender=sender)
                assert code == grpc.StatusCode.PERMISSION_DENIED, (p.id, cert, sender, code)

        after = client.cluster_status()
        assert after.term == term, "a refused Raft message still reached a replica"
        assert {m.id for m in after.members} == {"c1", "c2", "c3"}


def test_plain_text_cluster_with_tokens_replicas_register_with_their_token(tmp_path):
    """Loopback without TLS: replicas present --token (operator) to register with the leader."""
    pki = make_pki(tmp_path)
    ids = ["c1", "c2", "c3"]
    raft = {rid: f"127.0.0.1:{free_port()}" for rid in ids}
    extra = ["--tokens-file", str(pki.tokens_file), "--token", pki.tokens["alice"]]
    procs = [
        ControllerProc(rid, f"127.0.0.1:{free_port()}", raft[rid], raft, tmp_path / rid, tmp_path, extra)
        for rid in ids
    ]
    try:
        for p in procs:
            p.start()
        addresses = [p.api for p in procs]
        with LeptonClient(addresses, timeout=10, token=pki.tokens["bob"]) as reader:
            wait_registered(reader, 3, procs)
            with pytest.raises(errors.PermissionDenied):
                reader.submit_job({"name": "web", "command": "sleep 60", "resources": {"cpu": "100m"}})
        with LeptonClient(addresses, timeout=10) as anonymous, pytest.raises(errors.Unauthenticated):
            anonymous.list_jobs()
        for p in procs:  # the token is never written to a log
            assert pki.tokens["alice"] not in p.log_path.read_text()
    finally:
        for p in procs:
            p.kill()
