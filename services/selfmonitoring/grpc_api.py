"""Thin gRPC servicer for self-monitoring: proto in, command to a handler, proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date
from typing import Any, TypeAlias

import grpc
from google.type import date_pb2
from kasvu.selfmonitoring.v1 import selfmonitoring_pb2, selfmonitoring_pb2_grpc

from services.runtime.domain import validate_resource_id
from services.runtime.errors import FieldViolation, InvalidArgument
from services.runtime.grpc_server import current_principal
from services.runtime.names import decode_page_token, encode_page_token, page_size, parse_name
from services.runtime.timestamps import timestamp
from services.selfmonitoring import handlers, model, store
from services.selfmonitoring.alerts import AlertFeed

REGION_PATTERN = "regions/{region}"
INDICATOR_PATTERN = "regions/{region}/indicators/{indicator}"
BREACH_PATTERN = "regions/{region}/breaches/{breach}"

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


def _region(parent: str) -> str:
    return validate_resource_id(parse_name(parent, REGION_PATTERN, "parent")["region"], "parent")


def _date(value: date_pb2.Date, field: str) -> date:
    try:
        return date(value.year, value.month, value.day)
    except ValueError:
        raise InvalidArgument(
            f"{field} must be a calendar date", [FieldViolation(field, "must be a calendar date")]
        ) from None


def indicator_to_proto(row: store.IndicatorRow) -> selfmonitoring_pb2.Indicator:
    return selfmonitoring_pb2.Indicator(
        name=handlers.indicator_name(row.region, row.indicator_id),
        display_name=row.display_name,
        service=row.service,
        share_within_deadline=selfmonitoring_pb2.ShareWithinDeadline(
            deadline_days=row.deadline_days, minimum_share=row.minimum_share
        ),
        window_days=row.window_days,
        minimum_sample=row.minimum_sample,
        severity=selfmonitoring_pb2.Severity.Value(f"SEVERITY_{row.severity}"),
        create_time=timestamp(row.created_at),
    )


class SelfMonitoringServicer(selfmonitoring_pb2_grpc.SelfMonitoringServiceServicer):
    """Maps SelfMonitoringService RPCs onto the handlers and the alert feed."""

    def __init__(self, use_cases: handlers.SelfMonitoringHandlers, alerts: AlertFeed) -> None:
        self._use_cases = use_cases
        self._alerts = alerts

    async def CreateIndicator(
        self, request: selfmonitoring_pb2.CreateIndicatorRequest, context: Context
    ) -> selfmonitoring_pb2.Indicator:
        region = _region(request.parent)
        indicator = request.indicator
        row = await self._use_cases.create_indicator(
            handlers.CreateIndicator(
                region=region,
                indicator_id=request.indicator_id,
                display_name=indicator.display_name,
                service=indicator.service,
                deadline_days=indicator.share_within_deadline.deadline_days,
                minimum_share=indicator.share_within_deadline.minimum_share,
                window_days=indicator.window_days,
                minimum_sample=indicator.minimum_sample,
                severity=model.parse_severity(selfmonitoring_pb2.Severity.Name(indicator.severity)),
                actor=current_principal(),
            )
        )
        return indicator_to_proto(row)

    async def GetIndicator(
        self, request: selfmonitoring_pb2.GetIndicatorRequest, context: Context
    ) -> selfmonitoring_pb2.Indicator:
        parts = parse_name(request.name, INDICATOR_PATTERN, "name")
        return indicator_to_proto(await self._use_cases.get_indicator(parts["region"], parts["indicator"]))

    async def RecordObservation(
        self, request: selfmonitoring_pb2.RecordObservationRequest, context: Context
    ) -> selfmonitoring_pb2.RecordObservationResponse:
        parts = parse_name(request.parent, INDICATOR_PATTERN, "parent")
        observation = request.observation
        result = await self._use_cases.record_observation(
            handlers.RecordObservation(
                region=parts["region"],
                indicator_id=parts["indicator"],
                observation_id=observation.observation_id,
                provider=observation.provider,
                case_key=observation.case_key,
                started_on=_date(observation.started_on, "observation.started_on"),
                completed_on=_date(observation.completed_on, "observation.completed_on"),
                actor=current_principal(),
            )
        )
        return selfmonitoring_pb2.RecordObservationResponse(
            recorded=result.recorded,
            value=result.stats.share,
            sample_size=result.stats.sample_size,
            breach=result.open_breach,
        )

    async def GetBreach(
        self, request: selfmonitoring_pb2.GetBreachRequest, context: Context
    ) -> selfmonitoring_pb2.Breach:
        parts = parse_name(request.name, BREACH_PATTERN, "name")
        row = await self._use_cases.get_breach(parts["region"], parts["breach"], current_principal())
        return handlers.breach_to_proto(row)

    async def ListBreaches(
        self, request: selfmonitoring_pb2.ListBreachesRequest, context: Context
    ) -> selfmonitoring_pb2.ListBreachesResponse:
        region = _region(request.parent)
        size = page_size(request.page_size)
        position = decode_page_token(request.page_token)
        before = (position["opened_at"], position["id"]) if position else None
        rows = await self._use_cases.list_breaches(region, before, size + 1, current_principal())
        page, more = rows[:size], len(rows) > size
        token = (
            encode_page_token({"opened_at": page[-1].opened_at.isoformat(), "id": page[-1].id})
            if more
            else ""
        )
        return selfmonitoring_pb2.ListBreachesResponse(
            breaches=[handlers.breach_to_proto(r) for r in page], next_page_token=token
        )

    async def StreamAlerts(
        self, request: selfmonitoring_pb2.StreamAlertsRequest, context: Context
    ) -> AsyncIterator[selfmonitoring_pb2.Alert]:
        region = _region(request.parent)
        self._use_cases.require_supervision(region, current_principal())
        resume_after = request.resume_after if request.HasField("resume_after") else None

        async def headers_now() -> None:
            # Initial metadata tells the caller (the gateway's SSE) the stream is live.
            await context.send_initial_metadata(())

        async for alert in self._alerts.follow(region, resume_after, on_subscribed=headers_now):
            yield alert
