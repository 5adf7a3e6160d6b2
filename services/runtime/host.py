"""The life of a service process: start the gRPC server (health NOT_SERVING), migrate the
database, connect NATS and declare the stream, start the leased worker (relay, scheduler,
pruning) and the consumers, then SERVING; on SIGTERM or SIGINT the reverse, gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from nats.aio.client import Client as NatsClient
from nats.js.client import JetStreamContext

from services.runtime import bus, catalog
from services.runtime.auth import TokenVerifier
from services.runtime.clock import SYSTEM_CLOCK, Clock
from services.runtime.db import Database, is_sqlite, outbox_backlog
from services.runtime.dispatch import Dispatcher, EventTypes, Handler
from services.runtime.errors import Unavailable
from services.runtime.grpc_server import EdgeInterceptor
from services.runtime.migrate import upgrade_async
from services.runtime.settings import Settings
from services.runtime.uow import Context, UnitOfWork
from services.runtime.worker import Pruner, Scheduler, Worker
from services.runtime.writer import WritePath, write_path_for

log = logging.getLogger(__name__)

BUS_HEALTH = "kasvu.bus"
"""The health entry that says whether events flow; the service's own entry says whether it takes writes."""
BACKLOG_REPORT_S = 10.0
"""How often the outbox's depth and age are logged again while events do not flow."""

AddServicer = Callable[[Any, grpc.aio.Server], None]

SERVER_OPTIONS = (("grpc.so_reuseport", 0),)
"""gRPC turns SO_REUSEPORT on by default, so a second server on a taken port starts and
silently shares its connections with the first; off, the second one fails to start."""


class PortInUse(RuntimeError):
    """The service's gRPC address is taken by another process."""


class ServiceHost:
    """Owns the process-wide resources of one service; built by the service's bootstrap."""

    def __init__(self, settings: Settings, *, migrations: Path, clock: Clock = SYSTEM_CLOCK) -> None:
        self.settings = settings
        self.entry = catalog.entry(settings.service)
        self.stream = bus.StreamSpec(self.entry.stream, self.entry.subjects)
        self._migrations = migrations
        self.clock = clock
        self.db = Database(settings.resolved_database_url())
        self.write_path: WritePath = write_path_for(self.db, max_batch=settings.write_batch)
        self.nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self.worker = Worker(
            self.write_path,
            service=settings.service,
            jobs=[],
            lease_ttl=timedelta(seconds=settings.lease_ttl_s),
            poll_s=settings.worker_poll_s,
            holder=f"{settings.service}@{settings.replica_id or socket.gethostname()}",
        )
        self._dispatcher: Dispatcher | None = None
        self.health = HealthServicer()
        self.stop_event = asyncio.Event()
        self._relay: bus.OutboxRelay | None = None
        self._consumers: list[bus.EventConsumer[Any]] = []
        self._consumer_factories: list[Callable[[JetStreamContext], bus.EventConsumer[Any]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.server: grpc.aio.Server | None = None
        self.port = 0

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise Unavailable("the event bus is not connected yet; retry", reason="BUS_UNAVAILABLE")
        return self._js

    def wake_relay(self) -> None:
        self.worker.wake()

    def dispatcher(
        self,
        *,
        unit_of_work: Callable[[Context, datetime, bool], UnitOfWork],
        event_types: EventTypes,
        handlers: Mapping[type[Any], Handler[Any]],
    ) -> Dispatcher:
        """The service's one door, with its handlers; commits wake the worker."""
        dispatcher = Dispatcher(
            service=self.settings.service,
            db=self.db,
            write_path=self.write_path,
            unit_of_work=unit_of_work,
            event_types=event_types,
            clock=self.clock,
            after_commit=self.wake_relay,
            max_event_bytes=self.settings.max_event_bytes,
        )
        dispatcher.register_all(handlers)
        self._dispatcher = dispatcher
        return dispatcher

    def token_verifier(self) -> TokenVerifier | None:
        path = self.settings.resolved_public_key_file()
        return TokenVerifier(path, self.settings.resolved_revoked_tokens_file()) if path.exists() else None

    async def start_server(self, servicers: Sequence[tuple[AddServicer, Any, str]]) -> None:
        self.server = grpc.aio.server(
            interceptors=[EdgeInterceptor(self.token_verifier())], options=SERVER_OPTIONS
        )
        names = [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
        for add, servicer, full_name in servicers:
            add(servicer, self.server)
            names.append(full_name)
            await self.health.set(full_name, health_pb2.HealthCheckResponse.NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(names, self.server)
        await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        address = self.settings.resolved_grpc_address()
        try:
            self.port = self.server.add_insecure_port(address)
        except RuntimeError as failure:
            raise PortInUse(f"cannot listen on {address}: another process holds it") from failure
        await self.server.start()
        self._names = names[2:]
        log.info(
            "grpc listening", extra={"address": self.settings.resolved_grpc_address(), "port": self.port}
        )

    async def start_infrastructure(self) -> None:
        """The database (migrated) and the jobs that need only it, at once; the bus in the
        background, so the service accepts writes while NATS is away and its events follow
        when NATS is back."""
        if is_sqlite(self.db.url):
            self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        await upgrade_async(self.db.url, self._migrations)
        await self.db.ping()
        if self._dispatcher is not None:
            self.worker.add_job(Scheduler(self.db, self._dispatcher), on_wake=True)
        self.worker.add_job(Pruner(self.write_path))
        self.worker.add_job(bus.DeadLetterReplayer(self.db, self.write_path, lambda: self._consumers))
        await self.health.set(BUS_HEALTH, health_pb2.HealthCheckResponse.NOT_SERVING)
        self._tasks.append(asyncio.create_task(self.worker.run(self.stop_event), name="worker"))
        self._tasks.append(asyncio.create_task(self._connect_bus(), name="bus"))
        self._tasks.append(asyncio.create_task(self._watch_bus(), name="bus-health"))

    async def _connect_bus(self) -> None:
        """Connects to NATS, declares the owned stream, starts the relay and the consumers;
        retries until it succeeds or the service stops."""
        while not self.stop_event.is_set():
            try:
                self.nc = await bus.connect(
                    self.settings.nats_url, name=self.settings.service, access=self.settings.nats_access()
                )
                js = self.nc.jetstream(timeout=self.settings.call_timeout_s)
                await bus.declare_stream(
                    js,
                    self.stream,
                    self.settings.stream_replicas,
                    bus.Retention(
                        max_age_s=self.settings.stream_max_age_days * 86_400,
                        max_bytes=self.settings.stream_max_bytes,
                    ),
                )
                break
            except Exception as error:
                log.warning("nats not reachable; will retry", extra={"error": type(error).__name__})
                if self.nc is not None:
                    with contextlib.suppress(Exception):
                        await self.nc.close()
                    self.nc = None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop_event.wait(), timeout=1.0)
        else:
            return
        self._js = js
        self._relay = bus.OutboxRelay(
            self.db,
            self.write_path,
            js,
            stream=self.stream.name,
            batch=self.settings.outbox_batch,
            max_payload=lambda: self.nc.max_payload if self.nc is not None else 1024 * 1024,
            crash_point=self.settings.crash_point,
        )
        self.worker.add_job(self._relay, on_wake=True)
        for make in self._consumer_factories:
            consumer = make(js)
            self._consumers.append(consumer)
            self._tasks.append(asyncio.create_task(consumer.run(self.stop_event), name=consumer.durable))
        self.worker.wake()
        log.info("bus connected", extra={"stream": self.stream.name})

    async def _watch_bus(self) -> None:
        """The `kasvu.bus` health entry: SERVING while events flow (NATS connected and no
        committed event waiting longer than bus_lag_s). While they do not, the outbox's depth
        and age are logged every BACKLOG_REPORT_S, so a growing backlog is seen, not guessed."""
        last = None
        reported_at = 0.0
        loop = asyncio.get_running_loop()
        while not self.stop_event.is_set():
            try:
                depth, age_s = await outbox_backlog(self.db)
                flowing = self.nc is not None and self.nc.is_connected and age_s <= self.settings.bus_lag_s
                status = (
                    health_pb2.HealthCheckResponse.SERVING
                    if flowing
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                if status != last:
                    await self.health.set(BUS_HEALTH, status)
                if status != last or (not flowing and loop.time() - reported_at >= BACKLOG_REPORT_S):
                    log.log(
                        logging.INFO if flowing else logging.WARNING,
                        "events flowing" if flowing else "events not flowing",
                        extra={"outbox_depth": depth, "outbox_age_s": round(age_s, 1), "alert": not flowing},
                    )
                    last, reported_at = status, loop.time()
            except Exception:
                log.warning("bus health check failed", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), timeout=1.0)

    async def _drain_outbox(self) -> None:
        """The relay's last pass, bounded by shutdown_drain_s: events of the calls that committed
        after the worker stopped leave with the process instead of waiting for the next start."""
        if self._relay is None or self.nc is None or not self.nc.is_connected:
            return
        if self.settings.shutdown_drain_s <= 0:
            return
        try:
            async with asyncio.timeout(self.settings.shutdown_drain_s):
                await self.worker.last_round(self._relay)
        except Exception as error:
            # Whatever is left is sent by the next replica to hold the lease.
            log.warning("outbox not drained at shutdown", extra={"error": type(error).__name__})

    @staticmethod
    async def _close_bus(nc: NatsClient) -> None:
        """Flush, then close. Not drain(): every consumer has stopped and the relay's last
        publishes are acknowledged, so nothing is left to drain, and drain() also waits for
        messages queued on subscriptions no one reads any more (a pull request's late
        timeout status), which held shutdown for the whole drain timeout."""
        if nc.is_connected:
            try:
                await nc.flush(timeout=2)
            except Exception as error:
                log.warning("nats flush at shutdown failed", extra={"error": type(error).__name__})
        await nc.close()

    def add_consumer(self, make: Callable[[JetStreamContext], bus.EventConsumer[Any]]) -> None:
        """A consumer to start once the bus is connected."""
        self._consumer_factories.append(make)

    async def mark_serving(self) -> None:
        for name in self._names:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", extra={"service": self.settings.service})

    async def wait_for_signal(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_event.set)
        await self.stop_event.wait()

    async def shutdown(self) -> None:
        """Health NOT_SERVING first so balancers stop sending, then finish in-flight calls,
        stop background work, relay what they committed (one bounded pass), flush and close NATS, and
        close the database."""
        log.info("shutting down", extra={"service": self.settings.service})
        self.stop_event.set()
        await self.health.enter_graceful_shutdown()
        if self.server is not None:
            await self.server.stop(self.settings.shutdown_grace_s)
        if self._tasks:
            # Background loops notice the stop event within a poll; cancel what lingers.
            _done, lingering = await asyncio.wait(self._tasks, timeout=3.0)
            for task in lingering:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._drain_outbox()
        await self.write_path.close()
        if self.nc is not None and not self.nc.is_closed:
            await self._close_bus(self.nc)
        await self.db.dispose()
