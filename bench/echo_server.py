"""A bare grpc.aio unary echo server, the baseline for the suite's RPCs; runs as its own process.

Prints the bound port on its first line of output, then serves until terminated.
"""

from __future__ import annotations

import asyncio

import grpc

SERVICE = "bench.Echo"
METHOD = f"/{SERVICE}/Echo"


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def serve() -> None:
    server = grpc.aio.server()
    # Generic handlers with bytes in and out: no proto, no (de)serialisation, so the
    # figure is gRPC's own cost.
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve())
