"""`python -m services.gateway`: serves the HTTP/JSON API in front of the gRPC services."""

import uvicorn

from services.gateway.app import GatewayServer, create_app
from services.runtime.catalog import CATALOG
from services.runtime.logging import configure_logging
from services.runtime.settings import load_settings


def main() -> None:
    settings = load_settings("gateway")
    configure_logging("gateway", settings.log_level)
    addresses = {
        service.name: settings.address_of(service.name) for service in CATALOG if service.grpc_services
    }
    app = create_app(
        addresses,
        call_timeout_s=settings.call_timeout_s,
        streams_per_principal=settings.gateway_streams_per_principal,
    )
    host, _, port = settings.http_address.rpartition(":")
    # uvicorn handles SIGTERM/SIGINT: stops accepting, finishes in-flight requests (event streams
    # end with a final event at once), runs the lifespan's close.
    config = uvicorn.Config(
        app,
        host=host,
        port=int(port),
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
    )
    GatewayServer(config, on_shutdown=app.state.begin_shutdown).run()


if __name__ == "__main__":
    main()
