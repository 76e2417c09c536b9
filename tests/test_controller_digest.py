"""GetClusterStatus(with_digest=true): the replica's state digest and the applied index it belongs to.

The fault suite compares the three replicas with it (issue 7): equal digests
at one applied index mean equal replicated states. Without the flag nothing
is computed, so status polls stay cheap on large states.
"""

from __future__ import annotations

from lepton.v1 import control_pb2
from tests.support.inproc import inproc_controller
from tests.test_controller_api import spec, wait_leader_announced


async def test_digest_only_on_request_and_matches_the_state(tmp_path):
    async with inproc_controller(tmp_path) as h:
        await wait_leader_announced(h)
        plain = await h.control.GetClusterStatus(control_pb2.ClusterStatusRequest(stale=True), timeout=5)
        assert plain.state_digest == "" and plain.state_digest_index == 0

        req = control_pb2.ClusterStatusRequest(stale=True, with_digest=True)
        before = await h.control.GetClusterStatus(req, timeout=5)
        assert before.state_digest == h.state.digest()
        assert before.state_digest_index == h.state.applied_index > 0

        await h.control.SubmitJob(control_pb2.SubmitJobRequest(spec=spec(count=1)), timeout=5)
        after = await h.control.GetClusterStatus(req, timeout=5)
        assert after.state_digest_index > before.state_digest_index
        assert after.state_digest != before.state_digest
        assert after.state_digest == h.state.digest()
