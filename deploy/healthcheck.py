"""Container health check: exit 0 when this container's service is serving, 1 otherwise.

`python deploy/healthcheck.py` asks the standard gRPC health service at KASVU_GRPC_ADDRESS
(port only; the check runs inside the container). `python deploy/healthcheck.py http` asks
the gateway's /healthz at KASVU_HTTP_ADDRESS. Used by deploy/compose; Kubernetes has
native gRPC and HTTP probes instead.
"""

from __future__ import annotations

import os
import sys
import urllib.request

TIMEOUT_S = 2.0


def _port(variable: str) -> str:
    return os.environ.get(variable, "").rpartition(":")[2]


def grpc_serving() -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{_port('KASVU_GRPC_ADDRESS')}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def http_ok() -> bool:
    url = f"http://127.0.0.1:{_port('KASVU_HTTP_ADDRESS')}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return bool(response.status == 200)
    except OSError:
        return False


if __name__ == "__main__":
    healthy = http_ok() if sys.argv[1:] == ["http"] else grpc_serving()
    sys.exit(0 if healthy else 1)
