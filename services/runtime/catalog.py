"""The one list of the suite's services, which the settings, launcher, local suite and gateway read.

Adding a service is one entry here and its own folder `services/<name>/`. The catalog holds
strings only: the runtime imports no service package and no generated proto module, so
tools and the gateway import the proto modules named here when they need the descriptors.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Consumption:
    """Events a service reads from a stream of the suite.

    With a `durable` name it is a durable pull consumer, shared by the service's replicas,
    whose effects the inbox applies once; without one, ordered ephemeral consumers such as a
    live feed, which JetStream creates with the filter in the request body, out of reach of
    subject permissions: so those read only the service's own stream.
    """

    stream_of: str
    """The catalog service whose stream holds the events."""
    subject: str
    """The filter subject, within that service's subjects (wildcards allowed)."""
    durable: str = ""


@dataclass(frozen=True)
class ServiceEntry:
    """One gRPC service of the suite: where it listens, what it owns, what it serves."""

    name: str
    """Also its package, `services.<name>`, which `python -m` runs."""
    grpc_port: int
    """Where it listens on a developer's machine unless told otherwise."""
    stream: str
    """The JetStream stream it owns and declares at start-up."""
    event_package: str
    """Proto package of its events, and the first tokens of its subjects."""
    grpc_services: tuple[str, ...] = ()
    """Full names of its public gRPC services, which the gateway serves over HTTP."""
    proto_modules: tuple[str, ...] = ()
    """Generated modules whose import puts `grpc_services` in the default descriptor pool."""
    resource_names: tuple[str, ...] = ()
    """Its resource name patterns with each segment's kind, as its model parses them
    (`services.runtime.domain.ResourcePattern`); the gateway's OpenAPI document gives each path
    parameter the pattern of its kind. A test keeps these and the models' patterns equal."""
    public_methods: frozenset[str] = field(default_factory=frozenset)
    """Full names of the methods that need no sign-in; the protos have no annotation for it."""
    consumes: tuple[Consumption, ...] = ()
    """What it reads from streams; its NATS user may read exactly these and nothing else."""

    @property
    def subjects(self) -> tuple[str, ...]:
        return (f"{self.event_package}.>",)

    def resource_name(self, collection: str) -> str:
        """The pattern of its resources in `collection` (e.g. "breaches"): for a service that
        cites another's resources, so the pattern is written once, here."""
        for name in self.resource_names:
            segments = name.split("/")
            if len(segments) >= 2 and segments[-2] == collection:
                return name
        raise LookupError(f"{self.name} has no resources in {collection!r}")

    @property
    def module(self) -> str:
        return module_of(self.name)

    @property
    def address_variable(self) -> str:
        """The environment variable that says where the others reach this service."""
        return f"KASVU_{self.name.upper()}_ADDRESS"

    @property
    def default_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


CATALOG: tuple[ServiceEntry, ...] = (
    ServiceEntry(
        name="registry",
        grpc_port=50051,
        stream="KASVU_REGISTRY",
        event_package="kasvu.registry.v1",
        grpc_services=("kasvu.registry.v1.RegistryService",),
        resource_names=(
            "regions/{region}/services/{service}",
            "regions/{region}/services/{service}/terms/{version:int}",
            "regions/{region}/generalTerms/{version:int}",
            "regions/{region}/services/{service}/registrations/{registration:key}",
            "regions/{region}",
            "regions/{region}/breachPolicy",
            "providers/{business_id:business_id}",
            "providers/{business_id:business_id}/contactDetails",
        ),
        proto_modules=("kasvu.registry.v1.registry_pb2",),
        public_methods=frozenset(
            {
                "kasvu.registry.v1.RegistryService.ListProviders",
                "kasvu.registry.v1.RegistryService.ListOrganisers",
                "kasvu.registry.v1.RegistryService.ListServices",
                "kasvu.registry.v1.RegistryService.ListMunicipalities",
            }
        ),
        # A breach may suspend the provider in the breach's region (the region's breach policy);
        # tendering's market-failure findings open services to municipal providers.
        consumes=(
            Consumption(
                stream_of="selfmonitoring",
                subject="kasvu.selfmonitoring.v1.BreachOpened.*",
                durable="registry-breaches",
            ),
            # A resolved breach reinstates the provider it suspended where the policy says so.
            Consumption(
                stream_of="selfmonitoring",
                subject="kasvu.selfmonitoring.v1.BreachResolved.*",
                durable="registry-breach-resolutions",
            ),
            Consumption(
                stream_of="tendering",
                subject="kasvu.tendering.v1.MarketFailureDeclared.*",
                durable="registry-market-failures-declared",
            ),
            Consumption(
                stream_of="tendering",
                subject="kasvu.tendering.v1.MarketFailureLifted.*",
                durable="registry-market-failures-lifted",
            ),
        ),
    ),
    ServiceEntry(
        name="selfmonitoring",
        grpc_port=50052,
        stream="KASVU_SELFMONITORING",
        event_package="kasvu.selfmonitoring.v1",
        grpc_services=("kasvu.selfmonitoring.v1.SelfMonitoringService",),
        resource_names=(
            "regions/{region}",
            "regions/{region}/alerts/{alert:key}",
            "regions/{region}/availabilityReport",
            "regions/{region}/breaches/{breach:key}",
            "regions/{region}/correctiveActions/{action:key}",
            "regions/{region}/indicatorReport",
            "regions/{region}/indicators/{indicator}",
            "regions/{region}/programmes/{programme:int}",
        ),
        proto_modules=("kasvu.selfmonitoring.v1.selfmonitoring_pb2",),
        public_methods=frozenset(
            {
                "kasvu.selfmonitoring.v1.SelfMonitoringService.GetProgramme",
                "kasvu.selfmonitoring.v1.SelfMonitoringService.ListProgrammes",
                "kasvu.selfmonitoring.v1.SelfMonitoringService.GetAvailabilityReport",
            }
        ),
        # The supervisors' live alert feed reads every event of its own stream back; the
        # equal-availability view follows the registry's registration lifecycle.
        consumes=(
            Consumption(stream_of="selfmonitoring", subject="kasvu.selfmonitoring.v1.>"),
            Consumption(
                stream_of="registry",
                subject="kasvu.registry.v1.RegistrationAdmitted.*",
                durable="selfmonitoring-admissions",
            ),
            Consumption(
                stream_of="registry",
                subject="kasvu.registry.v1.ProviderSuspended.*",
                durable="selfmonitoring-suspensions",
            ),
            Consumption(
                stream_of="registry",
                subject="kasvu.registry.v1.ProviderReinstated.*",
                durable="selfmonitoring-reinstatements",
            ),
            Consumption(
                stream_of="registry",
                subject="kasvu.registry.v1.RegistrationLapsed.*",
                durable="selfmonitoring-lapses",
            ),
            Consumption(
                stream_of="registry",
                subject="kasvu.registry.v1.ProviderRevoked.*",
                durable="selfmonitoring-revocations",
            ),
            Consumption(
                stream_of="registry",
                subject="kasvu.registry.v1.RegistrationWithdrawn.*",
                durable="selfmonitoring-withdrawals",
            ),
        ),
    ),
    ServiceEntry(
        name="tendering",
        grpc_port=50053,
        stream="KASVU_TENDERING",
        event_package="kasvu.tendering.v1",
        grpc_services=("kasvu.tendering.v1.TenderingService", "kasvu.tendering.v1.AllianceService"),
        resource_names=(
            "regions/{region}",
            "regions/{region}/calls/{call:key}",
            "regions/{region}/calls/{call:key}/bids/{bid:key}",
            "regions/{region}/calls/{call:key}/clarifications/{clarification:key}",
            "regions/{region}/frameworks/{framework:key}",
            "regions/{region}/frameworks/{framework:key}/callOffs/{call_off:key}",
            # Alliances and market failure (services/tendering/alliance.py, market_failure.py).
            "regions/{region}/alliances/{alliance:key}",
            "regions/{region}/alliances/{alliance:key}/bids/{bid:key}",
            "regions/{region}/alliances/{alliance:key}/periods/{period}",
            "regions/{region}/marketFailures/{finding:key}",
            "regions/{region}/directAwards/{award:key}",
            # The keys bidders sign their bids with (services/tendering/bidder_keys.py).
            "bidders/{bidder:business_id}",
            "bidders/{bidder:business_id}/keys/{fingerprint:key}",
        ),
        proto_modules=("kasvu.tendering.v1.tendering_pb2", "kasvu.tendering.v1.alliance_pb2"),
        # A supplier suspended in the registry is skipped at call-off; reinstatement makes it
        # eligible again.
        consumes=(
            Consumption(
                stream_of="registry",
                subject="kasvu.registry.v1.ProviderSuspended.*",
                durable="tendering-suspensions",
            ),
            Consumption(
                stream_of="registry",
                subject="kasvu.registry.v1.ProviderReinstated.*",
                durable="tendering-reinstatements",
            ),
        ),
        public_methods=frozenset(
            {
                "kasvu.tendering.v1.TenderingService.GetCall",
                "kasvu.tendering.v1.TenderingService.ListCalls",
                "kasvu.tendering.v1.TenderingService.ListClarifications",
                "kasvu.tendering.v1.TenderingService.GetFramework",
                "kasvu.tendering.v1.TenderingService.ListFrameworks",
                "kasvu.tendering.v1.TenderingService.ExportOcds",
                "kasvu.tendering.v1.AllianceService.GetMarketFailure",
            }
        ),
    ),
)

GATEWAY = "gateway"
"""The HTTP gateway's process (`python -m services.gateway`). It is no catalog entry: it serves
no gRPC, listens on `Settings.http_address` and calls every entry's `grpc_services`."""


class UnknownService(LookupError):
    """A name that is not in the catalog."""


def entry(name: str, catalog: Iterable[ServiceEntry] = CATALOG) -> ServiceEntry:
    """The catalog entry called `name`; UnknownService names the known ones otherwise."""
    entries = tuple(catalog)
    for candidate in entries:
        if candidate.name == name:
            return candidate
    known = ", ".join(candidate.name for candidate in entries)
    raise UnknownService(f"no service {name!r} in the catalog (known: {known})")


def consumption(service: str, durable: str, catalog: Iterable[ServiceEntry] = CATALOG) -> Consumption:
    """The durable consumer `durable` of `service`, as the catalog declares it."""
    for candidate in entry(service, catalog).consumes:
        if candidate.durable == durable:
            return candidate
    raise LookupError(f"{service} declares no consumer {durable!r} in the catalog")


def module_of(process: str) -> str:
    """The module `python -m` runs for a process of the suite, a service or the gateway."""
    return f"services.{process}"


def process_names(catalog: Iterable[ServiceEntry] = CATALOG) -> tuple[str, ...]:
    """Every process of the suite but nats-server, in start order: the gateway last, after
    the services it calls."""
    return (*(service.name for service in catalog), GATEWAY)


def grpc_services(catalog: Iterable[ServiceEntry] = CATALOG) -> tuple[str, ...]:
    """Full names of every public gRPC service in the catalog."""
    return tuple(name for service in catalog for name in service.grpc_services)


def public_methods(catalog: Iterable[ServiceEntry] = CATALOG) -> frozenset[str]:
    """Full names of every method in the catalog that needs no sign-in."""
    return frozenset(method for service in catalog for method in service.public_methods)


def resource_names(catalog: Iterable[ServiceEntry] = CATALOG) -> tuple[str, ...]:
    """Every resource name pattern of the catalog's services."""
    return tuple(dict.fromkeys(name for service in catalog for name in service.resource_names))


def load_protos(catalog: Iterable[ServiceEntry] = CATALOG) -> None:
    """Imports every entry's proto modules, which registers their services in the default pool."""
    for service in catalog:
        for module in service.proto_modules:
            importlib.import_module(module)
