"""pytest fixtures for namespace clusters; load them as a plugin from a test module:

    pytest_plugins = ["tests.support_netns.fixtures"]

`netns_cluster(names)` returns a started NetnsCluster; `lepton_netns(controllers=3,
agents=0)` returns a LeptonOnNetns with its processes running. Both are
factories, so one test can build several clusters of different shapes. Every
cluster a test made is torn down by a finalizer, whatever happened in the
test, and a failure to tear down fails the test loudly instead of leaking.
"""

from __future__ import annotations

import functools

import pytest

from .lepton import LeptonOnNetns, lepton_missing
from .netns import NetnsCluster, ensure_tools, gc_stale, netns_supported


@functools.cache
def _support() -> str | None:
    # Once per session: install iptables if we can, sweep leftovers of killed runs, probe.
    ensure_tools()
    reason = netns_supported()
    if reason is None:
        gc_stale()
    return reason


@pytest.fixture
def netns_cluster(request):
    """Factory: netns_cluster(["a", "b"]) -> a started NetnsCluster, removed after the test."""
    reason = _support()
    if reason:
        pytest.skip(reason)
    made: list[NetnsCluster] = []

    def make(names, **kwargs) -> NetnsCluster:
        cluster = NetnsCluster(names, **kwargs)
        made.append(cluster)
        return cluster.up()

    yield make
    errors = []
    for cluster in reversed(made):
        errors += cluster.down()
    assert not errors, f"netns teardown left things behind: {errors}"


@pytest.fixture
def lepton_netns(netns_cluster, tmp_path):
    """Factory: lepton_netns(controllers=3, agents=0) -> LeptonOnNetns with controllers c1.. and agents n1.. running."""
    reason = lepton_missing()
    if reason:
        pytest.skip(f"Lepton programs missing ({reason})")

    def make(controllers: int = 3, agents: int = 0, **kwargs) -> LeptonOnNetns:
        cnames = [f"c{i + 1}" for i in range(controllers)]
        anames = [f"n{i + 1}" for i in range(agents)]
        net = netns_cluster(cnames + anames)
        lepton = LeptonOnNetns(net, cnames, anames, tmp_path / net.prefix, **kwargs)
        lepton.start()
        return lepton

    # Teardown is netns_cluster's: killing every process in each namespace.
    return make
