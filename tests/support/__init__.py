"""Test helpers for the controller tests: a Raft stand-in, process launchers, a redirect-following client."""
