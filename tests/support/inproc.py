"""An in-process controller on the Raft stand-in, for servicer and loop tests.

`inproc_controller()` starts a ControllerServer whose Raft node is
tests.support.local_raft.LocalRaft, serving real gRPC on 127.0.0.1:0, and
yields a handle with stubs; everything is stopped on exit.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import grpc

from controller.config import ControllerConfig
from controller.server import ControllerServer
from lepton.v1 import agent_pb2_grpc, control_pb2_grpc
from tests.support.local_raft import LocalRaft


@dataclass
class Handle:
    server: ControllerServer
    channel: grpc.aio.Channel
    control: control_pb2_grpc.ControlServiceStub
    agent: agent_pb2_grpc.AgentServiceStub

    @property
    def raft(self) -> LocalRaft:
        return self.server.replica.node

    @property
    def state(self):
        return self.server.replica.state


@contextlib.asynccontextmanager
async def inproc_controller(tmp_path, **overrides):
    cfg = ControllerConfig(
        id="c1",
        listen="127.0.0.1:0",
        raft_listen="127.0.0.1:0",
        peers={"c1": "127.0.0.1:1", "c2": "127.0.0.1:2", "c3": "127.0.0.1:3"},
        data_dir=tmp_path,
        placement_interval=0.2,
        grace=0.5,
    )
    for k, v in overrides.items():
        setattr(cfg, k, v)
    server = ControllerServer(cfg, node_factory=lambda c, sm: LocalRaft(c, sm))
    await server.start()
    channel = grpc.aio.insecure_channel(server.address)
    try:
        yield Handle(
            server,
            channel,
            control_pb2_grpc.ControlServiceStub(channel),
            agent_pb2_grpc.AgentServiceStub(channel),
        )
    finally:
        await channel.close()
        await server.stop()
