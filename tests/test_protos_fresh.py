"""The generated stubs in lepton/v1 must be generated from the .proto files on disk."""

import importlib

from lepton import protogen


def test_generated_stubs_match_proto_sources():
    assert protogen.proto_files(), "no .proto files found"
    assert protogen.is_fresh(), "stubs are stale: run `python -m lepton.protogen`"


def test_every_proto_has_importable_stubs():
    for proto in protogen.proto_files():
        mod = importlib.import_module(f"lepton.v1.{proto.stem}_pb2")
        assert mod.DESCRIPTOR.package == "lepton.v1"
