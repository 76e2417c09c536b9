"""A tiny ControlService client for tests that follows NotLeader redirects.

The real client is lepton/client.py (written by the CLI engineer); this one
exists so controller tests do not depend on it. `call()` tries the replica it
last talked to, follows the NotLeader detail to the leader, and retries
retryable errors (no leader yet, replica down) until the overall deadline.
"""

from __future__ import annotations

import asyncio
import time

import grpc

from lepton.errors import LeptonError, NotLeader, from_rpc_error
from lepton.v1 import control_pb2_grpc


class RedirectingClient:
    def __init__(self, addresses: list[str], rpc_timeout: float = 5.0) -> None:
        self.addresses = list(addresses)
        self.rpc_timeout = rpc_timeout
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._preferred = self.addresses[0]
        self.redirects = 0  # how many NotLeader redirects were followed (tests assert on it)

    def stub(self, address: str) -> control_pb2_grpc.ControlServiceStub:
        ch = self._channels.get(address)
        if ch is None:
            ch = grpc.aio.insecure_channel(address)
            self._channels[address] = ch
        return control_pb2_grpc.ControlServiceStub(ch)

    async def call(self, method: str, request, *, deadline: float = 20.0, address: str | None = None):
        """Calls ControlService.<method>, following redirects; raises the last LeptonError."""
        end = time.monotonic() + deadline
        target = address or self._preferred
        i = 0
        last: LeptonError | None = None
        while time.monotonic() < end:
            try:
                resp = await getattr(self.stub(target), method)(request, timeout=self.rpc_timeout)
                self._preferred = target
                return resp
            except grpc.aio.AioRpcError as e:
                err = from_rpc_error(e)
                unavailable = e.code() == grpc.StatusCode.UNAVAILABLE
            last = err
            if isinstance(err, NotLeader) and err.leader_api_address:
                self.redirects += 1
                target = err.leader_api_address
                continue
            if not err.retryable and not unavailable:
                raise err
            # No leader known or replica unreachable: try the next one after a pause.
            i += 1
            target = self.addresses[i % len(self.addresses)]
            await asyncio.sleep(0.1)
        raise last or LeptonError("deadline exceeded")

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()
