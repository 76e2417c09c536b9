"""A grpc.aio server interceptor that counts and times every RPC by method and status code.

`lepton_grpc_requests_total{method, code}` and
`lepton_grpc_request_duration_seconds{method}`. The method label is the full
gRPC method without the leading slash ("lepton.v1.ControlService/SubmitJob");
calls to methods the server does not implement are not counted, so a
scanner cannot blow up the label set. The code of a call is what the
servicer ended with: OK, the code it aborted with, CANCELLED when the client
went away, UNKNOWN for an exception gRPC turns into an error. Streams are
timed from the first byte to the end of the stream.

It is installed first (outermost), so calls refused by interceptors inside it
(authentication) are counted too.
"""

from __future__ import annotations

import asyncio
import inspect
import time

import grpc

from controller.observability.metrics import ControllerMetrics

_WRAP = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


def _code_of(context, error: BaseException | None) -> str:
    code = None
    try:
        code = context.code()
    except Exception:  # older grpc or a context that cannot tell
        code = None
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):  # some grpc versions hand back the raw integer
        for sc in grpc.StatusCode:
            if sc.value[0] == code:
                return sc.name
    if error is None:
        return "OK"
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
        return "CANCELLED"
    return "UNKNOWN"


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: ControllerMetrics) -> None:
        self.m = metrics
        # Per method: the handler we wrapped and its wrapper, so a call costs a dict
        # lookup rather than new closures; and the label children, resolved once.
        self._wrapped: dict[str, tuple[object, object]] = {}
        self._durations: dict[str, object] = {}
        self._counts: dict[tuple[str, str], object] = {}

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: gRPC answers UNIMPLEMENTED; not counted
        key = handler_call_details.method
        cached = self._wrapped.get(key)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, key.lstrip("/"))
        self._wrapped[key] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler, method: str):
        attr, make = _WRAP[(bool(handler.request_streaming), bool(handler.response_streaming))]
        behavior = getattr(handler, attr)
        if behavior is None:
            return handler
        wrapped = self._wrap_stream(behavior, method) if inspect.isasyncgenfunction(behavior) else None
        if wrapped is None:
            wrapped = self._wrap_call(behavior, method)
        return make(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _done(self, method: str, context, t0: float, error: BaseException | None) -> None:
        key = (method, _code_of(context, error))
        counter = self._counts.get(key)
        if counter is None:
            counter = self._counts[key] = self.m.grpc_requests.labels(*key)
        counter.inc()
        duration = self._durations.get(method)
        if duration is None:
            duration = self._durations[method] = self.m.grpc_duration.labels(method)
        duration.observe(time.perf_counter() - t0)

    def _wrap_call(self, behavior, method: str):
        """Unary responses and handlers that write with context.write() (a coroutine)."""

        async def call(request_or_iterator, context):
            t0 = time.perf_counter()
            error = None
            try:
                result = behavior(request_or_iterator, context)
                if inspect.isawaitable(result):
                    result = await result
                return result
            except BaseException as e:
                error = e
                raise
            finally:
                self._done(method, context, t0, error)

        return call

    def _wrap_stream(self, behavior, method: str):
        """Handlers that are async generators (server streaming with `yield`)."""

        async def stream(request_or_iterator, context):
            t0 = time.perf_counter()
            error = None
            try:
                async for item in behavior(request_or_iterator, context):
                    yield item
            except BaseException as e:
                error = e
                raise
            finally:
                self._done(method, context, t0, error)

        return stream
