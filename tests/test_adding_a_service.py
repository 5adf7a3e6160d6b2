"""Adding a service is one catalog entry: the launcher, the local suite, the gateway and its
OpenAPI document pick the new service up with no other edit."""

# googleapis-common-protos ships no type information.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import importlib
import pathlib
import sys
from collections.abc import AsyncIterator, Iterator
from types import ModuleType
from typing import Any

import google.api
import grpc
import grpc_tools
import httpx
import pytest
from grpc_tools import protoc

from kasvuctl.launcher import build_processes
from kasvuctl.localsuite import LocalSuite
from services.gateway.app import create_app
from services.runtime.catalog import CATALOG, GATEWAY, ServiceEntry

# A service that exists only here, with an HTTP binding like the suite's own.
WIDGETS_PROTO = """
syntax = "proto3";

package kasvu.widgets.v1;

import "google/api/annotations.proto";

service WidgetService {
  rpc GetWidget(GetWidgetRequest) returns (Widget) {
    option (google.api.http) = {get: "/v1/{name=regions/*/widgets/*}"};
  }
}

message GetWidgetRequest {
  string name = 1;
}

message Widget {
  string name = 1;
  string colour = 2;
}
"""

WIDGETS = ServiceEntry(
    name="widgets",
    grpc_port=50054,
    stream="KASVU_WIDGETS",
    event_package="kasvu.widgets.v1",
    grpc_services=("kasvu.widgets.v1.WidgetService",),
    proto_modules=("kasvutest.widgets.v1.widgets_pb2",),
    public_methods=frozenset({"kasvu.widgets.v1.WidgetService.GetWidget"}),
)
EXTENDED = (*CATALOG, WIDGETS)


@pytest.fixture(scope="module")
def widgets_pb2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The widgets proto compiled into a temporary folder that is importable while the tests run."""
    root = tmp_path_factory.mktemp("protos")
    source = root / "kasvutest" / "widgets" / "v1" / "widgets.proto"
    source.parent.mkdir(parents=True)
    source.write_text(WIDGETS_PROTO)
    googleapis = pathlib.Path(google.api.__path__[0]).parent.parent
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    includes = [f"-I{root}", f"-I{googleapis}", f"-I{well_known}"]
    assert protoc.main(["protoc", *includes, f"--python_out={root}", str(source)]) == 0
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module(WIDGETS.proto_modules[0])
    finally:
        sys.path.remove(str(root))


@pytest.fixture
async def widgets_backend(widgets_pb2: ModuleType) -> AsyncIterator[str]:
    async def get_widget(request: Any, context: grpc.aio.ServicerContext) -> Any:
        return widgets_pb2.Widget(name=request.name, colour="green")

    handler = grpc.method_handlers_generic_handler(
        "kasvu.widgets.v1.WidgetService",
        {
            "GetWidget": grpc.unary_unary_rpc_method_handler(
                get_widget,
                request_deserializer=widgets_pb2.GetWidgetRequest.FromString,
                response_serializer=widgets_pb2.Widget.SerializeToString,
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(None)


def test_launcher_starts_the_new_service_before_the_gateway_on_its_catalog_port(tmp_path: pathlib.Path):
    plan = build_processes(tmp_path, {"KASVU_NATS_URL": "nats://127.0.0.1:14222"}, catalog=EXTENDED)

    assert [name for name, _, _ in plan] == [
        "nats",
        "registry",
        "selfmonitoring",
        "tendering",
        "widgets",
        GATEWAY,
    ]
    _, argv, env = next(process for process in plan if process[0] == "widgets")
    assert argv[-3:] == [sys.executable, "-m", "services.widgets"]
    assert env["KASVU_GRPC_ADDRESS"] == "127.0.0.1:50054"

    moved = build_processes(tmp_path, {"KASVU_WIDGETS_ADDRESS": "127.0.0.1:15054"}, catalog=EXTENDED)
    assert next(env for name, _, env in moved if name == "widgets")["KASVU_GRPC_ADDRESS"] == "127.0.0.1:15054"


def test_local_suite_gives_the_new_service_a_port_and_tells_every_process_where_it_is(tmp_path: pathlib.Path):
    suite = LocalSuite(tmp_path, catalog=EXTENDED)

    assert suite.process_names == ("registry", "selfmonitoring", "tendering", "widgets", GATEWAY)
    assert set(suite.ports) == set(suite.process_names)
    assert len(set(suite.ports.values())) == len(suite.ports)
    assert suite.env("widgets")["KASVU_GRPC_ADDRESS"] == suite.address("widgets")
    for name in suite.process_names:
        assert suite.env(name)["KASVU_WIDGETS_ADDRESS"] == suite.address("widgets")


async def test_gateway_serves_and_documents_the_new_service(widgets_backend: str):
    unused = "127.0.0.1:9"  # the suite's own services are not called here
    app = create_app(
        {"registry": unused, "selfmonitoring": unused, "tendering": unused, "widgets": widgets_backend},
        catalog=EXTENDED,
    )

    assert "kasvu.widgets.v1.WidgetService.GetWidget" in {route.full_name for route in app.state.routes}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            reply = await client.get("/v1/regions/pirkanmaa/widgets/w1")
            document = (await client.get("/openapi.json")).json()

    assert reply.status_code == 200, reply.text
    assert reply.json() == {"name": "regions/pirkanmaa/widgets/w1", "colour": "green"}
    operation = document["paths"]["/v1/regions/{region}/widgets/{widget}"]["get"]
    assert operation["operationId"] == "WidgetService_GetWidget"
    assert operation["security"] == []  # the catalog names it public
    assert "WidgetService" in {tag["name"] for tag in document["tags"]}
    assert "kasvu.widgets.v1.Widget" in document["components"]["schemas"]


def test_gateway_refuses_to_start_without_an_address_for_a_catalog_service():
    with pytest.raises(ValueError, match="no address for widgets"):
        create_app(
            {"registry": "127.0.0.1:9", "selfmonitoring": "127.0.0.1:9", "tendering": "127.0.0.1:9"},
            catalog=EXTENDED,
        )
