"""Role tokens and the role matrix, without gRPC: the tokens file, lookup, bearer parsing, roles."""

from __future__ import annotations

import json

import pytest

from controller.security import auth
from controller.security.tokens import TokenEntry, TokenStore, hash_token
from lepton.errors import InvalidArgument
from leptonctl import certs


def entry(name="alice", role="operator", token="s3cret", node=""):
    return TokenEntry(name=name, role=role, sha256=hash_token(token), node=node)


def test_lookup_finds_the_entry_of_a_token_and_nothing_else():
    store = TokenStore([entry(), entry("bob", "reader", "other"), entry("a1", "agent", "ag", node="n1")])
    assert store.lookup("s3cret").name == "alice"
    assert store.lookup("other").role == "reader"
    assert store.lookup("ag").node == "n1"
    for bad in ("", "s3cre", "s3cret ", "S3CRET", "x" * 10_000, "\udcff"):
        assert store.lookup(bad) is None


@pytest.mark.parametrize(
    "doc, fragment",
    [
        ({"tokens": [{"name": "a", "role": "root", "sha256": "0" * 64}]}, "role"),
        ({"tokens": [{"name": "a", "role": "operator", "sha256": "abc"}]}, "sha256"),
        ({"tokens": [{"name": "a", "role": "agent", "sha256": "0" * 64}]}, "must name its node"),
        ({"tokens": [{"name": "a", "role": "reader", "node": "n1", "sha256": "0" * 64}]}, "only agent"),
        ({"tokens": [{"name": "a", "role": "reader", "token": "plain"}]}, "plain token"),
        ({"tokens": [{"name": "a", "role": "reader", "sha256": "0" * 64, "x": 1}]}, "unknown keys"),
        (
            {
                "tokens": [
                    {"name": "a", "role": "reader", "sha256": "0" * 64},
                    {"name": "a", "role": "reader", "sha256": "1" * 64},
                ]
            },
            "twice",
        ),
        ({"tokens": "nope"}, "expected a list"),
        (["not a mapping"], "not a mapping"),
    ],
)
def test_bad_tokens_files_are_refused_with_a_reason(tmp_path, doc, fragment):
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(InvalidArgument) as ei:
        TokenStore.load(path)
    assert fragment in str(ei.value)


def test_tokens_file_may_be_yaml_or_a_bare_json_list(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps([entry().to_dict()]))
    assert TokenStore.load(tmp_path / "t.json").lookup("s3cret").name == "alice"
    (tmp_path / "t.yaml").write_text(
        f"tokens:\n  - name: bob\n    role: reader\n    sha256: {hash_token('x')}\n"
    )
    assert TokenStore.load(tmp_path / "t.yaml").lookup("x").role == "reader"
    with pytest.raises(InvalidArgument, match="cannot read"):
        TokenStore.load(tmp_path / "missing.yaml")


def test_certs_token_stores_only_the_hash(tmp_path):
    path = tmp_path / "tokens.yaml"
    token, doc = certs.new_token("alice", "operator", tokens_file=path)
    text = path.read_text()
    assert token not in text and doc["sha256"] in text
    assert (path.stat().st_mode & 0o777) == 0o600
    assert TokenStore.load(path).lookup(token).name == "alice"
    with pytest.raises(Exception, match="already has"):
        certs.new_token("alice", "reader", tokens_file=path)


@pytest.mark.parametrize(
    "metadata, expected",
    [
        ((), None),
        ((("authorization", "Bearer abc"),), "abc"),
        ((("authorization", "bearer  abc "),), "abc"),
        ((("authorization", "Basic abc"),), ""),
        ((("authorization", "Bearer"),), ""),
        ((("x-other", "Bearer abc"),), None),
    ],
)
def test_bearer_token_parsing(metadata, expected):
    assert auth.bearer_token(metadata) == expected


READS = ["GetClusterStatus", "ListNodes", "GetNode", "GetJob", "ListJobs", "ListTasks", "WatchEvents"]
WRITES = ["SubmitJob", "CancelJob", "CordonNode", "UncordonNode", "DrainNode", "ApplyRebalance"]


def test_role_matrix():
    c = auth.CONTROL
    for m in READS:
        assert auth.allowed(c + m, "reader") and auth.allowed(c + m, "operator")
        assert not auth.allowed(c + m, "agent")
    for m in WRITES + ["RegisterMember", "SaveSnapshot", "SomethingNew"]:
        assert auth.allowed(c + m, "operator")
        assert not auth.allowed(c + m, "reader") and not auth.allowed(c + m, "agent")
    assert auth.allowed(auth.AGENT_CONNECT, "agent") and auth.allowed(auth.AGENT_CONNECT, "operator")
    assert not auth.allowed(auth.AGENT_CONNECT, "reader")
    assert auth.allowed("/grpc.health.v1.Health/Check", "public")
    assert auth.allowed(auth.REGISTER_MEMBER, "peer") and not auth.allowed(c + "SubmitJob", "peer")
    assert not auth.allowed("/lepton.v1.RaftService/Stream", "reader")


def test_token_file_reloads_changes_and_keeps_old_tokens_on_a_broken_edit(tmp_path):
    from controller.security.tokens import TokenFile

    path = tmp_path / "tokens.yaml"
    old, _ = certs.new_token("alice", "operator", tokens_file=path)
    tf = TokenFile(path, check_every=0.0)
    assert tf.current().lookup(old).name == "alice"
    new, _ = certs.new_token("bob", "reader", tokens_file=path)  # added while running
    assert tf.current().lookup(new).name == "bob"
    # Revoke alice: rewrite the file without her.
    kept = TokenStore.load(path).entries[1:]
    path.write_text(json.dumps([e.to_dict() for e in kept]))
    assert tf.current().lookup(old) is None and tf.current().lookup(new).name == "bob"
    path.write_text("tokens: [ {name: broken")  # a half-written edit
    assert tf.current().lookup(new).name == "bob"
