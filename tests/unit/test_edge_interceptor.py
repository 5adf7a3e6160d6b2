"""The edge interceptor wraps a servicer's method handler once, not on every call."""

from __future__ import annotations

from typing import Any

import grpc

from services.runtime.grpc_server import EdgeInterceptor


class _Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


async def _behaviour(request: Any, context: Any) -> Any:
    return request


async def test_a_method_is_wrapped_once_and_again_when_its_handler_changes() -> None:
    edge = EdgeInterceptor(None)
    registered = grpc.unary_unary_rpc_method_handler(_behaviour)

    async def continuation(_: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return registered

    first = await edge.intercept_service(continuation, _Details("/kasvu.test.v1.Test/Echo"))
    second = await edge.intercept_service(continuation, _Details("/kasvu.test.v1.Test/Echo"))
    assert first is second
    assert first is not registered and first.unary_unary is not _behaviour

    registered = grpc.unary_unary_rpc_method_handler(_behaviour)
    third = await edge.intercept_service(continuation, _Details("/kasvu.test.v1.Test/Echo"))
    assert third is not first


async def test_grpc_s_own_services_pass_unwrapped() -> None:
    edge = EdgeInterceptor(None)
    health = grpc.unary_unary_rpc_method_handler(_behaviour)

    async def continuation(_: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return health

    assert await edge.intercept_service(continuation, _Details("/grpc.health.v1.Health/Check")) is health
