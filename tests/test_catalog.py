"""The service catalog: it agrees with the protos, and settings read service addresses from it."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
from google.protobuf import descriptor_pool

from services.runtime.catalog import (
    CATALOG,
    GATEWAY,
    UnknownService,
    entry,
    grpc_services,
    load_protos,
    process_names,
    public_methods,
)
from services.runtime.domain import ResourcePattern
from services.runtime.settings import Settings


def test_every_catalog_grpc_service_is_in_the_descriptor_pool_once_its_protos_are_loaded():
    load_protos()
    pool = descriptor_pool.Default()
    for service in CATALOG:
        for name in service.grpc_services:
            found = pool.FindServiceByName(name)
            # A service's RPCs live in the proto package its events and subjects use.
            assert found.file.package == service.event_package


def test_every_public_method_is_a_method_of_its_own_service():
    load_protos()
    pool = descriptor_pool.Default()
    for service in CATALOG:
        for method in service.public_methods:
            service_name, _, method_name = method.rpartition(".")
            assert service_name in service.grpc_services
            assert (
                pool.FindMethodByName(method)
                is pool.FindServiceByName(service_name).methods_by_name[method_name]
            )
    assert public_methods() == {
        "kasvu.registry.v1.RegistryService.ListProviders",
        "kasvu.registry.v1.RegistryService.ListOrganisers",
        "kasvu.registry.v1.RegistryService.ListServices",
        "kasvu.registry.v1.RegistryService.ListMunicipalities",
        "kasvu.tendering.v1.AllianceService.GetMarketFailure",
        # A region's published self-monitoring programme is public.
        "kasvu.selfmonitoring.v1.SelfMonitoringService.GetProgramme",
        "kasvu.selfmonitoring.v1.SelfMonitoringService.ListProgrammes",
        # The equal-availability view is for the ministry and the public.
        "kasvu.selfmonitoring.v1.SelfMonitoringService.GetAvailabilityReport",
        *(
            f"kasvu.tendering.v1.TenderingService.{name}"
            for name in (
                "GetCall",
                "ListCalls",
                "ListClarifications",
                "GetFramework",
                "ListFrameworks",
                "ExportOcds",
            )
        ),
    }


def test_the_catalogs_resource_names_are_the_patterns_its_models_parse_by():
    # The gateway documents path segments by the catalog's copy; the services parse by the
    # models'. Neither imports the other, so this keeps the two the same.
    for service in CATALOG:
        if not service.grpc_services:
            continue
        # The models are the service's pure modules: model.py, and for tendering also the
        # alliance, market-failure and bidder-key rules beside it.
        parsed_by: set[str] = set()
        for name in ("model", "alliance", "market_failure", "bidder_keys"):
            try:
                module = importlib.import_module(f"{service.module}.{name}")
            except ModuleNotFoundError:
                continue
            parsed_by |= {
                value.pattern for value in vars(module).values() if isinstance(value, ResourcePattern)
            }
        assert parsed_by == set(service.resource_names), service.name
    # A provider's contact details are a singleton below the provider, beside its registrations.
    registry = entry("registry")
    assert "providers/{business_id:business_id}/contactDetails" in registry.resource_names
    assert registry.resource_name("providers") == "providers/{business_id:business_id}"


def test_names_ports_and_streams_are_unique_and_subjects_follow_the_event_package():
    for attribute in ("name", "grpc_port", "stream", "event_package"):
        values = [getattr(service, attribute) for service in CATALOG]
        assert len(set(values)) == len(values), attribute
    assert GATEWAY not in {service.name for service in CATALOG}
    registry = entry("registry")
    assert (registry.grpc_port, registry.stream, registry.subjects) == (
        50051,
        "KASVU_REGISTRY",
        ("kasvu.registry.v1.>",),
    )
    assert (registry.module, registry.address_variable) == ("services.registry", "KASVU_REGISTRY_ADDRESS")
    assert [entry(name).grpc_port for name in ("selfmonitoring", "tendering")] == [50052, 50053]
    assert entry("tendering").grpc_services == (
        "kasvu.tendering.v1.TenderingService",
        "kasvu.tendering.v1.AllianceService",
    )


def test_process_names_put_the_gateway_after_the_services_it_calls():
    assert process_names() == ("registry", "selfmonitoring", "tendering", GATEWAY)
    assert grpc_services() == (
        "kasvu.registry.v1.RegistryService",
        "kasvu.selfmonitoring.v1.SelfMonitoringService",
        "kasvu.tendering.v1.TenderingService",
        "kasvu.tendering.v1.AllianceService",
    )


def test_an_unknown_service_is_refused_naming_the_known_ones():
    with pytest.raises(UnknownService, match=r"'tenders'.*registry, selfmonitoring, tendering"):
        entry("tenders")


def test_address_of_reads_the_service_variable_and_defaults_to_the_catalog_port(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv("KASVU_REGISTRY_ADDRESS", "registry:50051")
    monkeypatch.setenv("KASVU_TENDERING_ADDRESS", "")
    monkeypatch.delenv("KASVU_SELFMONITORING_ADDRESS", raising=False)
    settings = Settings()
    assert settings.address_of("registry") == "registry:50051"
    assert settings.address_of("selfmonitoring") == "127.0.0.1:50052"
    assert settings.address_of("tendering") == "127.0.0.1:50053"
    with pytest.raises(UnknownService):
        settings.address_of("gateway")


def test_addresses_are_read_once_when_the_settings_are_made(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KASVU_SELFMONITORING_ADDRESS", "first:1")
    settings = Settings()
    monkeypatch.setenv("KASVU_SELFMONITORING_ADDRESS", "second:2")
    assert settings.address_of("selfmonitoring") == "first:1"


def test_a_service_listens_on_its_catalog_port_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("KASVU_GRPC_ADDRESS", raising=False)
    assert Settings(service="selfmonitoring").resolved_grpc_address() == "127.0.0.1:50052"
    assert Settings(service="tendering", grpc_address="0.0.0.0:7").resolved_grpc_address() == "0.0.0.0:7"
    assert Settings(service="not-in-catalog").resolved_grpc_address() == "127.0.0.1:0"


def test_settings_and_catalog_import_no_service_and_no_generated_code():
    # A fresh interpreter: this one has long since imported everything.
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, services.runtime.settings, services.runtime.catalog; print(' '.join(sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    services = {"services.registry", "services.selfmonitoring", "services.tendering", "services.gateway"}
    assert [m for m in loaded if m.split(".")[0] == "kasvu" or ".".join(m.split(".")[:2]) in services] == []
