"""Thin gRPC servicer for self-monitoring: proto in, command or query to the dispatcher, domain
object out as proto."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from kasvu.selfmonitoring.v1 import selfmonitoring_pb2, selfmonitoring_pb2_grpc

from services.runtime.dispatch import Dispatcher
from services.runtime.domain import validate_resource_id
from services.runtime.errors import DomainError, FieldViolation, InvalidArgument
from services.runtime.grpc_server import call_context, current_principal, status_code_for
from services.runtime.names import page
from services.runtime.protoconv import (
    enum_from_proto,
    optional_date,
    proto_date,
    timestamp,
    to_message,
)
from services.selfmonitoring import handlers, model
from services.selfmonitoring.alert_hub import HubStopped, Overflowed, encoded_batch
from services.selfmonitoring.alerts import AlertFeed, AlertFilter

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

_SEVERITY = selfmonitoring_pb2.DESCRIPTOR.enum_types_by_name["Severity"]
_SCOPE = selfmonitoring_pb2.DESCRIPTOR.enum_types_by_name["Scope"]
_SOURCE = selfmonitoring_pb2.DESCRIPTOR.enum_types_by_name["ObservationSource"]
_KIND = selfmonitoring_pb2.DESCRIPTOR.enum_types_by_name["MetricKind"]
_STATE = selfmonitoring_pb2.DESCRIPTOR.enum_types_by_name["BreachState"]
BATCH_SIZE = 1000
"""Records of a client stream taken per unit of work: one transaction, one insert, one bucket
upsert and one evaluation per provider for up to this many observations."""


def _kind_to_proto(kind: model.MetricKind) -> selfmonitoring_pb2.MetricKind.ValueType:
    return selfmonitoring_pb2.MetricKind.Value(f"METRIC_KIND_{kind}")


def indicator_to_proto(indicator: model.Indicator) -> selfmonitoring_pb2.Indicator:
    metric: dict[str, Any] = {}
    if indicator.kind is model.MetricKind.SHARE_WITHIN_DEADLINE:
        metric["share_within_deadline"] = selfmonitoring_pb2.ShareWithinDeadline(
            deadline_days=indicator.deadline_days,
            minimum_share=indicator.threshold,
            recovery_share=indicator.recovery_threshold,
            warning_share=indicator.warning_threshold,
        )
    else:
        metric["measure"] = selfmonitoring_pb2.Measure(
            kind=_kind_to_proto(indicator.kind),
            breach_threshold=indicator.threshold,
            recovery_threshold=indicator.recovery_threshold,
            warning_threshold=indicator.warning_threshold,
        )
    return selfmonitoring_pb2.Indicator(
        name=indicator.name,
        display_name=indicator.display_name,
        service=indicator.service,
        **metric,
        kind=_kind_to_proto(indicator.kind),
        window_days=indicator.window_days,
        minimum_sample=indicator.minimum_sample,
        severity=selfmonitoring_pb2.Severity.Value(f"SEVERITY_{indicator.severity}"),
        create_time=timestamp(indicator.created_at) if indicator.created_at else None,
        scope=selfmonitoring_pb2.Scope.Value(f"SCOPE_{indicator.scope}"),
    )


def breach_to_proto(breach: model.Breach) -> selfmonitoring_pb2.Breach:
    return to_message(breach.facts, selfmonitoring_pb2.Breach)


_ACTION = selfmonitoring_pb2.DESCRIPTOR.enum_types_by_name["PolicyAction"]


def programme_to_proto(programme: model.Programme) -> selfmonitoring_pb2.Programme:
    return selfmonitoring_pb2.Programme(
        name=programme.name,
        display_name=programme.display_name,
        indicators=[
            selfmonitoring_pb2.WatchedIndicator(
                indicator=model.INDICATOR.format(region=programme.region, indicator=item.indicator),
                risk=item.risk,
            )
            for item in programme.indicators
        ],
        policies=[
            selfmonitoring_pb2.SeverityPolicy(
                severity=selfmonitoring_pb2.Severity.Value(f"SEVERITY_{policy.severity}"),
                action=selfmonitoring_pb2.PolicyAction.Value(f"POLICY_ACTION_{policy.action}"),
                corrective_action_days=policy.corrective_action_days,
                recurrence_days=policy.recurrence_days,
            )
            for policy in programme.policies
        ],
        state=selfmonitoring_pb2.ProgrammeState.Value(f"PROGRAMME_STATE_{programme.state}"),
        version=programme.version,
        create_time=timestamp(programme.created_at) if programme.created_at else None,
        publish_time=timestamp(programme.published_at) if programme.published_at else None,
        publication_date=proto_date(programme.publication_date) if programme.publication_date else None,
    )


def programme_from_proto(
    region: str, programme: selfmonitoring_pb2.Programme, *, with_default_catalogue: bool
) -> model.Programme:
    watched = []
    for index, item in enumerate(programme.indicators):
        parts = model.INDICATOR.parse(item.indicator, f"programme.indicators[{index}].indicator")
        if parts["region"] != region:
            path = f"programme.indicators[{index}].indicator"
            raise InvalidArgument(
                f"{path} is another region's", [FieldViolation(path, "must be the region's own")]
            )
        watched.append(model.WatchedIndicator(parts["indicator"], item.risk))
    policies = [
        model.SeverityPolicy(
            enum_from_proto(
                model.Severity, policy.severity, _SEVERITY, f"programme.policies[{index}].severity"
            ),
            enum_from_proto(
                model.PolicyAction, policy.action, _ACTION, f"programme.policies[{index}].action"
            ),
            policy.corrective_action_days,
            policy.recurrence_days,
        )
        for index, policy in enumerate(programme.policies)
    ]
    return model.new_programme(
        region, programme.display_name, watched, policies, with_default_catalogue=with_default_catalogue
    )


def alert_to_proto(view: handlers.AlertView) -> selfmonitoring_pb2.Alert:
    alert = view.alert
    return selfmonitoring_pb2.Alert(
        breach=breach_to_proto(view.breach),
        name=alert.name,
        kind=selfmonitoring_pb2.AlertKind.Value(f"ALERT_KIND_{alert.kind}"),
        evidence=f"{alert.breach}/observations",
        acknowledge_time=timestamp(alert.acknowledged_at) if alert.acknowledged_at else None,
        acknowledged_by=alert.acknowledged_by,
    )


def observation_to_proto(observation: model.Observation) -> selfmonitoring_pb2.Observation:
    return selfmonitoring_pb2.Observation(
        observation_id=observation.observation_id,
        provider=observation.provider,
        case_key=observation.case_key,
        started_on=proto_date(observation.started_on),
        completed_on=proto_date(observation.completed_on),
        source=selfmonitoring_pb2.ObservationSource.Value(f"OBSERVATION_SOURCE_{observation.source}"),
        value=observation.value,
        service=observation.service,
        municipality=observation.municipality,
        group=observation.group,
    )


def action_to_proto(action: model.CorrectiveAction) -> selfmonitoring_pb2.CorrectiveAction:
    return selfmonitoring_pb2.CorrectiveAction(
        name=action.name,
        breach=action.breach,
        provider=action.provider,
        state=selfmonitoring_pb2.CorrectiveActionState.Value(f"CORRECTIVE_ACTION_STATE_{action.state}"),
        due_date=proto_date(action.due_on),
        request_time=timestamp(action.requested_at),
        response=action.response,
        respond_time=timestamp(action.responded_at) if action.responded_at else None,
    )


async def _end_stream(context: Context, code: grpc.StatusCode, why: str) -> None:
    """Ends an alert stream with `code` and a google.rpc.Status (so the gateway passes the
    message on to SSE clients as it is) that says how to go on."""
    message = f"{why}: resume after the last sequence received"
    status = status_pb2.Status(code=code.value[0], message=message)
    status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=0)))
    details = (("grpc-status-details-bin", status.SerializeToString()),)
    await context.abort(code, message, trailing_metadata=details)


class SelfMonitoringServicer(selfmonitoring_pb2_grpc.SelfMonitoringServiceServicer):
    """Maps SelfMonitoringService RPCs onto the dispatcher and the alert feed."""

    def __init__(self, dispatcher: Dispatcher, alerts: AlertFeed) -> None:
        self._dispatcher = dispatcher
        self._alerts = alerts

    async def CreateIndicator(
        self, request: selfmonitoring_pb2.CreateIndicatorRequest, context: Context
    ) -> selfmonitoring_pb2.Indicator:
        region = model.REGION.parse(request.parent, "parent")["region"]
        definition = indicator_from_proto(region, request.indicator_id, request.indicator)
        created = await self._dispatcher.handle(handlers.CreateIndicator(definition), call_context())
        return indicator_to_proto(created)

    async def CreateProgramme(
        self, request: selfmonitoring_pb2.CreateProgrammeRequest, context: Context
    ) -> selfmonitoring_pb2.Programme:
        region = model.REGION.parse(request.parent, "parent")["region"]
        service = request.default_catalogue_service
        if service:
            validate_resource_id(service, "default_catalogue_service")
        draft = programme_from_proto(region, request.programme, with_default_catalogue=bool(service))
        command = handlers.CreateProgramme(draft, service)
        created = await self._dispatcher.handle(command, call_context(request.request_id))
        return programme_to_proto(created)

    async def PublishProgramme(
        self, request: selfmonitoring_pb2.PublishProgrammeRequest, context: Context
    ) -> selfmonitoring_pb2.Programme:
        parts = model.PROGRAMME.parse(request.name, "name")
        command = handlers.PublishProgramme(parts["region"], int(parts["programme"]))
        return programme_to_proto(await self._dispatcher.handle(command, call_context()))

    async def GetProgramme(
        self, request: selfmonitoring_pb2.GetProgrammeRequest, context: Context
    ) -> selfmonitoring_pb2.Programme:
        parts = model.PROGRAMME.parse(request.name, "name")
        query = handlers.GetProgramme(parts["region"], int(parts["programme"]))
        return programme_to_proto(await self._dispatcher.query(query, call_context()))

    async def ListProgrammes(
        self, request: selfmonitoring_pb2.ListProgrammesRequest, context: Context
    ) -> selfmonitoring_pb2.ListProgrammesResponse:
        region = model.REGION.parse(request.parent, "parent")["region"]
        paging = page(
            request.page_size,
            request.page_token,
            {"parent": request.parent},
            listing="selfmonitoring.ListProgrammes",
        )
        before = paging.number("version") if paging.after else None
        query = handlers.ListProgrammes(region, before, paging.size + 1)
        found: list[model.Programme] = await self._dispatcher.query(query, call_context())
        listed, more = found[: paging.size], len(found) > paging.size
        last = {"version": str(listed[-1].version)} if more else None
        return selfmonitoring_pb2.ListProgrammesResponse(
            programmes=[programme_to_proto(p) for p in listed], next_page_token=paging.next_token(last)
        )

    async def ListIndicators(
        self, request: selfmonitoring_pb2.ListIndicatorsRequest, context: Context
    ) -> selfmonitoring_pb2.ListIndicatorsResponse:
        region = model.REGION.parse(request.parent, "parent")["region"]
        paging = page(
            request.page_size,
            request.page_token,
            {"parent": request.parent},
            listing="selfmonitoring.ListIndicators",
        )
        after = paging.text("id") if paging.after else ""
        found: list[model.Indicator] = await self._dispatcher.query(
            handlers.ListIndicators(region, after, paging.size + 1), call_context()
        )
        listed, more = found[: paging.size], len(found) > paging.size
        last = {"id": listed[-1].indicator_id} if more else None
        return selfmonitoring_pb2.ListIndicatorsResponse(
            indicators=[indicator_to_proto(i) for i in listed], next_page_token=paging.next_token(last)
        )

    async def GetIndicator(
        self, request: selfmonitoring_pb2.GetIndicatorRequest, context: Context
    ) -> selfmonitoring_pb2.Indicator:
        parts = model.INDICATOR.parse(request.name, "name")
        query = handlers.GetIndicator(parts["region"], parts["indicator"])
        return indicator_to_proto(await self._dispatcher.query(query, call_context()))

    async def RecordObservation(
        self, request: selfmonitoring_pb2.RecordObservationRequest, context: Context
    ) -> selfmonitoring_pb2.RecordObservationResponse:
        result: handlers.ObservationRecorded = await self._dispatcher.handle(
            observation_command(request.parent, request.observation), call_context()
        )
        return selfmonitoring_pb2.RecordObservationResponse(
            recorded=result.recorded,
            value=result.value,
            sample_size=result.stats.sample_size,
            breach=result.open_breach,
        )

    async def RecordObservations(
        self, request_iterator: AsyncIterator[selfmonitoring_pb2.RecordObservationsRequest], context: Context
    ) -> selfmonitoring_pb2.RecordObservationsResponse:
        response = selfmonitoring_pb2.RecordObservationsResponse()
        items: list[handlers.RecordObservation] = []
        first_index = 0
        index = 0

        async def flush() -> None:
            nonlocal first_index
            if items:
                command = handlers.RecordObservations(tuple(items), first_index)
                result: handlers.ObservationsRecorded = await self._dispatcher.handle(command, call_context())
                response.recorded += result.recorded
                response.duplicates += result.duplicates
                response.rejected.extend(
                    selfmonitoring_pb2.RejectedObservation(
                        index=r.index,
                        observation_id=r.observation_id,
                        code=r.code,
                        message=r.message,
                        fields=r.fields,
                    )
                    for r in result.rejected
                )
                response.opened_breaches.extend(result.opened_breaches)
                response.resolved_breaches.extend(result.resolved_breaches)
                response.raised_warnings.extend(result.raised_warnings)
                response.cleared_warnings.extend(result.cleared_warnings)
                items.clear()
            first_index = index

        async for request in request_iterator:
            for observation in request.observations or [request.observation]:
                try:
                    command = observation_command(request.parent, observation)
                except DomainError as error:
                    # A record that cannot even be read (a bad parent or date) is reported here.
                    await flush()
                    response.rejected.append(
                        selfmonitoring_pb2.RejectedObservation(
                            index=index,
                            observation_id=observation.observation_id,
                            code=status_code_for(error).name,
                            message=error.message,
                            fields=[v.field for v in error.violations],
                        )
                    )
                    index += 1
                    first_index = index
                    continue
                items.append(command)
                index += 1
                if len(items) >= BATCH_SIZE:
                    await flush()
        await flush()
        return response

    async def GetBreach(
        self, request: selfmonitoring_pb2.GetBreachRequest, context: Context
    ) -> selfmonitoring_pb2.Breach:
        parts = model.BREACH.parse(request.name, "name")
        query = handlers.GetBreach(parts["region"], parts["breach"])
        return breach_to_proto(await self._dispatcher.query(query, call_context()))

    async def ListBreaches(
        self, request: selfmonitoring_pb2.ListBreachesRequest, context: Context
    ) -> selfmonitoring_pb2.ListBreachesResponse:
        region = model.REGION.parse(request.parent, "parent")["region"]
        handlers.require_supervision(region, current_principal())
        filters = {
            "parent": request.parent,
            "state": str(request.state),
            "severity": str(request.severity),
            "provider": request.provider,
        }
        paging = page(request.page_size, request.page_token, filters, listing="selfmonitoring.ListBreaches")
        before = (paging.instant("opened_at"), paging.text("id")) if paging.after else None
        state = enum_from_proto(model.BreachState, request.state, _STATE, "state") if request.state else None
        severity = (
            enum_from_proto(model.Severity, request.severity, _SEVERITY, "severity")
            if request.severity
            else None
        )
        query = handlers.ListBreaches(region, before, paging.size + 1, state, severity, request.provider)
        found: list[model.Breach] = await self._dispatcher.query(query, call_context())
        listed, more = found[: paging.size], len(found) > paging.size
        last = {"opened_at": listed[-1].opened_at.isoformat(), "id": listed[-1].id} if more else None
        return selfmonitoring_pb2.ListBreachesResponse(
            breaches=[breach_to_proto(b) for b in listed], next_page_token=paging.next_token(last)
        )

    # Yields each batch already encoded (the edge passes bytes through): an alert is encoded
    # once for every subscriber, not once per subscriber.
    async def StreamAlerts(  # type: ignore[override]
        self, request: selfmonitoring_pb2.StreamAlertsRequest, context: Context
    ) -> AsyncIterator[bytes]:
        region = model.REGION.parse(request.parent, "parent")["region"]
        handlers.require_supervision(region, current_principal())
        resume_after = request.resume_after if request.HasField("resume_after") else None

        async def headers_now() -> None:
            # Initial metadata tells the caller (the gateway's SSE) the stream is live.
            await context.send_initial_metadata(())

        only = AlertFilter(request.severity, request.service, request.provider)
        try:
            async for batch in self._alerts.follow(
                region, resume_after, on_subscribed=headers_now, only=only
            ):
                yield encoded_batch(batch)
        except Overflowed as error:
            # Told, not silently dropped: the client resumes after the last sequence it saw.
            await _end_stream(
                context, grpc.StatusCode.RESOURCE_EXHAUSTED, f"the stream fell behind ({error})"
            )
        except HubStopped as error:
            await _end_stream(context, grpc.StatusCode.UNAVAILABLE, str(error))

    async def ListAlerts(
        self, request: selfmonitoring_pb2.ListAlertsRequest, context: Context
    ) -> selfmonitoring_pb2.ListAlertsResponse:
        region = model.REGION.parse(request.parent, "parent")["region"]
        handlers.require_supervision(region, current_principal())
        paging = page(
            request.page_size,
            request.page_token,
            {"parent": request.parent},
            listing="selfmonitoring.ListAlerts",
        )
        before = (paging.instant("created_at"), paging.text("id")) if paging.after else None
        found: list[handlers.AlertView] = await self._dispatcher.query(
            handlers.ListAlerts(region, before, paging.size + 1), call_context()
        )
        listed, more = found[: paging.size], len(found) > paging.size
        last = (
            {"created_at": listed[-1].alert.created_at.isoformat(), "id": listed[-1].alert.id}
            if more
            else None
        )
        return selfmonitoring_pb2.ListAlertsResponse(
            alerts=[alert_to_proto(view) for view in listed], next_page_token=paging.next_token(last)
        )

    async def AcknowledgeAlert(
        self, request: selfmonitoring_pb2.AcknowledgeAlertRequest, context: Context
    ) -> selfmonitoring_pb2.Alert:
        parts = model.ALERT.parse(request.name, "name")
        command = handlers.AcknowledgeAlert(parts["region"], parts["alert"])
        return alert_to_proto(await self._dispatcher.handle(command, call_context()))

    async def ListCorrectiveActions(
        self, request: selfmonitoring_pb2.ListCorrectiveActionsRequest, context: Context
    ) -> selfmonitoring_pb2.ListCorrectiveActionsResponse:
        region = model.REGION.parse(request.parent, "parent")["region"]
        filters = {"parent": request.parent, "provider": request.provider}
        paging = page(
            request.page_size, request.page_token, filters, listing="selfmonitoring.ListCorrectiveActions"
        )
        before = (paging.instant("requested_at"), paging.text("id")) if paging.after else None
        query = handlers.ListCorrectiveActions(region, request.provider, before, paging.size + 1)
        found: list[model.CorrectiveAction] = await self._dispatcher.query(query, call_context())
        listed, more = found[: paging.size], len(found) > paging.size
        last = {"requested_at": listed[-1].requested_at.isoformat(), "id": listed[-1].id} if more else None
        return selfmonitoring_pb2.ListCorrectiveActionsResponse(
            corrective_actions=[action_to_proto(a) for a in listed], next_page_token=paging.next_token(last)
        )

    async def RespondToCorrectiveAction(
        self, request: selfmonitoring_pb2.RespondToCorrectiveActionRequest, context: Context
    ) -> selfmonitoring_pb2.CorrectiveAction:
        parts = model.CORRECTIVE_ACTION.parse(request.name, "name")
        command = handlers.RespondToCorrectiveAction(parts["region"], parts["action"], request.response)
        return action_to_proto(await self._dispatcher.handle(command, call_context()))

    async def GetAvailabilityReport(
        self, request: selfmonitoring_pb2.GetAvailabilityReportRequest, context: Context
    ) -> selfmonitoring_pb2.AvailabilityReport:
        region = model.AVAILABILITY_REPORT.parse(request.name, "name")["region"]
        cells: list[model.AvailabilityCell] = await self._dispatcher.query(
            handlers.GetAvailabilityReport(region), call_context()
        )
        return selfmonitoring_pb2.AvailabilityReport(
            name=request.name,
            cells=[
                selfmonitoring_pb2.AvailabilityCell(
                    service=c.service,
                    municipality=c.municipality,
                    language=c.language,
                    admitted_providers=c.admitted,
                    active_providers=c.active,
                )
                for c in cells
            ],
        )

    async def GetIndicatorReport(
        self, request: selfmonitoring_pb2.GetIndicatorReportRequest, context: Context
    ) -> selfmonitoring_pb2.IndicatorReport:
        region = model.INDICATOR_REPORT.parse(request.name, "name")["region"]
        as_of = optional_date(request.as_of, "as_of")
        found: list[handlers.IndicatorValue] = await self._dispatcher.query(
            handlers.GetIndicatorReport(region, as_of), call_context()
        )
        return selfmonitoring_pb2.IndicatorReport(
            name=request.name,
            values=[
                selfmonitoring_pb2.IndicatorValue(
                    indicator=v.indicator.name,
                    service=v.indicator.service,
                    provider=v.provider if v.indicator.scope is model.Scope.PROVIDER else "",
                    scope_key=v.provider,
                    value=v.value,
                    sample_size=v.sample_size,
                    window_start=proto_date(v.window[0]),
                    window_end=proto_date(v.window[1]),
                )
                for v in found
            ],
        )

    async def ListBreachObservations(
        self, request: selfmonitoring_pb2.ListBreachObservationsRequest, context: Context
    ) -> selfmonitoring_pb2.ListBreachObservationsResponse:
        parts = model.BREACH.parse(request.parent, "parent")
        paging = page(
            request.page_size,
            request.page_token,
            {"parent": request.parent},
            listing="selfmonitoring.ListBreachObservations",
        )
        before = (paging.day("day"), paging.text("source"), paging.text("id")) if paging.after else None
        query = handlers.ListBreachObservations(parts["region"], parts["breach"], before, paging.size + 1)
        found: list[model.Observation] = await self._dispatcher.query(query, call_context())
        listed, more = found[: paging.size], len(found) > paging.size
        tail = listed[-1] if more else None
        last = (
            {"day": tail.completed_on.isoformat(), "source": str(tail.source), "id": tail.observation_id}
            if tail is not None
            else None
        )
        return selfmonitoring_pb2.ListBreachObservationsResponse(
            observations=[observation_to_proto(o) for o in listed], next_page_token=paging.next_token(last)
        )


def observation_command(
    parent: str, observation: selfmonitoring_pb2.Observation
) -> handlers.RecordObservation:
    parts = model.INDICATOR.parse(parent, "parent")
    completed_on = optional_date(observation.completed_on, "observation.completed_on")
    source = (
        enum_from_proto(model.ObservationSource, observation.source, _SOURCE, "observation.source")
        if observation.source
        else None
    )
    return handlers.RecordObservation(
        region=parts["region"],
        indicator_id=parts["indicator"],
        observation_id=observation.observation_id,
        provider=observation.provider,
        case_key=observation.case_key,
        started_on=optional_date(observation.started_on, "observation.started_on"),
        completed_on=completed_on,
        source=source,
        value=observation.value if observation.HasField("value") else None,
        service=observation.service,
        municipality=observation.municipality,
        group=observation.group,
    )


def indicator_from_proto(
    region: str, indicator_id: str, indicator: selfmonitoring_pb2.Indicator
) -> model.Indicator:
    """The definition, validated by the model (share_within_deadline unless a measure is given)."""
    severity = enum_from_proto(model.Severity, indicator.severity, _SEVERITY, "indicator.severity")
    if indicator.WhichOneof("metric") == "measure":
        measure = indicator.measure
        kind = enum_from_proto(model.MetricKind, measure.kind, _KIND, "indicator.measure.kind")
        if kind is model.MetricKind.SHARE_WITHIN_DEADLINE:
            description = "SHARE_WITHIN_DEADLINE is defined by share_within_deadline"
            raise InvalidArgument(description, [FieldViolation("indicator.measure.kind", description)])
        threshold, recovery, deadline_days = measure.breach_threshold, measure.recovery_threshold, 0
        warning = measure.warning_threshold if measure.HasField("warning_threshold") else None
    else:
        kind = model.MetricKind.SHARE_WITHIN_DEADLINE
        share = indicator.share_within_deadline
        threshold, recovery, deadline_days = share.minimum_share, share.recovery_share, share.deadline_days
        warning = share.warning_share if share.HasField("warning_share") else None
    return model.new_indicator(
        region,
        indicator_id,
        indicator.display_name,
        indicator.service,
        deadline_days,
        threshold,
        indicator.window_days,
        indicator.minimum_sample,
        severity,
        recovery_threshold=recovery,
        kind=kind,
        warning_threshold=warning,
        scope=model.Scope.PROVIDER
        if indicator.scope == selfmonitoring_pb2.SCOPE_UNSPECIFIED
        else enum_from_proto(model.Scope, indicator.scope, _SCOPE, "indicator.scope"),
    )
