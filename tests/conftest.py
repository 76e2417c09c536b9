"""Shared pytest configuration: make sure the generated stubs match proto/ before any test imports them."""

from lepton import protogen

# A source checkout whose .proto files changed since the stubs were generated
# would otherwise test stale wire types; regenerate instead of failing obscurely.
protogen.ensure_fresh()
