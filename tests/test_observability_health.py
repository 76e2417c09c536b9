"""gRPC health and reflection on the controller API port, with three real controller processes.

Health is SERVING on every replica of a healthy cluster (AgentService only
on the leader); after SIGKILL of two replicas the survivor has no quorum, so
it stops knowing a leader and its health flips to NOT_SERVING -- seen both by
Check and by an open Watch stream -- and back to SERVING once a peer returns.
Reflection lists the services so grpcurl-like tools can explore the API.
Waits poll with a deadline; nothing is timed.
"""

from __future__ import annotations

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.support.procs import ControllerCluster

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
CONTROL = "lepton.v1.ControlService"
AGENT = "lepton.v1.AgentService"


def check(address: str, service: str = "") -> int | None:
    with grpc.insecure_channel(address) as ch:
        try:
            return (
                health_pb2_grpc.HealthStub(ch)
                .Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
                .status
            )
        except grpc.RpcError:
            return None


def wait_for(pred, what: str, within: float = 45.0):
    end = time.monotonic() + within
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def cluster(tmp_path):
    c = ControllerCluster(tmp_path, 3)
    c.start()
    try:
        yield c
    finally:
        c.close()


def test_health_flips_when_the_replica_loses_its_leader(cluster):
    try:
        addrs = cluster.api_addresses
        wait_for(
            lambda: all(check(a) == SERVING and check(a, CONTROL) == SERVING for a in addrs),
            "every replica SERVING",
        )
        # Agent streams are only accepted by the leader: exactly one says SERVING for them.
        wait_for(lambda: [check(a, AGENT) for a in addrs].count(SERVING) == 1, "one AgentService SERVING")
        assert check(addrs[0], "no.such.Service") is None  # NOT_FOUND, as the protocol says

        procs = list(cluster.procs.values())
        survivor = procs[0]
        with grpc.insecure_channel(survivor.api) as ch:
            watch = health_pb2_grpc.HealthStub(ch).Watch(
                health_pb2.HealthCheckRequest(service=""), timeout=90
            )
            assert next(watch).status == SERVING
            for p in procs[1:]:
                p.kill()
            # Check-quorum (a leader) or the election timeout (a follower) makes the survivor
            # forget its leader; it cannot elect one alone.
            for update in watch:
                if update.status == NOT_SERVING:
                    break
            watch.cancel()
        assert check(survivor.api) == NOT_SERVING
        assert check(survivor.api, CONTROL) == NOT_SERVING
        assert check(survivor.api, AGENT) == NOT_SERVING

        procs[1].start()  # quorum again: a leader is elected and the survivor serves again
        wait_for(lambda: check(survivor.api) == SERVING, "SERVING again with a quorum")
    except BaseException:
        print(cluster.logs())
        raise


def _reflect(address: str, req: reflection_pb2.ServerReflectionRequest):
    with grpc.insecure_channel(address) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        return next(iter(stub.ServerReflectionInfo(iter([req]), timeout=10)))


def test_reflection_lists_and_describes_the_services(tmp_path):
    c = ControllerCluster(tmp_path, 1)
    c.start()
    try:
        (p,) = c.procs.values()
        wait_for(lambda: check(p.api) == SERVING, "the replica SERVING")
        resp = _reflect(p.api, reflection_pb2.ServerReflectionRequest(list_services=""))
        names = {s.name for s in resp.list_services_response.service}
        assert {CONTROL, AGENT, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
        resp = _reflect(p.api, reflection_pb2.ServerReflectionRequest(file_containing_symbol=CONTROL))
        files = resp.file_descriptor_response.file_descriptor_proto
        assert files and any(b"SaveSnapshot" in f for f in files)
    except BaseException:
        print(c.logs())
        raise
    finally:
        c.close()
