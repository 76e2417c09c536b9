"""Generated protobuf/gRPC stubs for the lepton.v1 API.

The *_pb2*.py modules next to this file are generated from proto/lepton/v1 at
build/install time (setup.py) or by `python -m lepton.protogen`; they are not
committed. tests/test_protos_fresh.py checks they match the .proto sources.
"""
