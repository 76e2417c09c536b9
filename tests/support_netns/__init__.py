"""Test clusters in Linux network namespaces (issue 7).

`netns` holds the generic machinery (a private bridge, one namespace per host,
processes started inside them, partitions with iptables DROP rules); `lepton`
starts Lepton controllers and agents on such a cluster; `fixtures` wraps both
as pytest fixtures that tear everything down, also when a test fails.
"""
