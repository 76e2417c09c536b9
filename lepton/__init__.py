"""Lepton: shared library code used by the controller, the agent and lepton-ctl.

`lepton.v1` holds the Python stubs generated from `proto/lepton/v1/*.proto`
(see `lepton.protogen`); `lepton.errors` the one error hierarchy and its gRPC
mapping; `lepton.units` parsing and printing of human units.
"""

__version__ = "0.1.0"
