"""Thin gRPC servicer of AllianceService: alliances and market failure, proto in, command or
query to tendering's dispatcher, domain object out as proto."""

from __future__ import annotations

from typing import Any

from kasvu.tendering.v1 import alliance_pb2, alliance_pb2_grpc, tendering_pb2

from services.runtime.dispatch import Dispatcher
from services.runtime.grpc_server import call_context
from services.runtime.names import page
from services.runtime.protoconv import (
    enum_from_proto,
    enum_to_proto,
    from_money,
    money,
    proto_date,
    required_date,
    timestamp,
    to_message,
)
from services.tendering import alliance, alliance_handlers, market_failure, sealing
from services.tendering.grpc_api import Context, _decimal, _index_page, _instant
from services.tendering.handlers import OcdsPackages
from services.tendering.model import REGION

_ENUMS = alliance_pb2.DESCRIPTOR.enum_types_by_name


def _enum(value: Any, enum_name: str) -> Any:
    """The proto number of a model enum (typed Any: the stubs want each enum's own ValueType)."""
    return enum_to_proto(value, _ENUMS[enum_name])


def buyer_from_proto(buyer: alliance_pb2.JointBuyer, path: str) -> alliance.JointBuyer:
    return alliance.JointBuyer(
        organisation=buyer.organisation,
        cost_share=_decimal(buyer.cost_share, f"{path}.cost_share"),
        lead=buyer.lead,
        kind=enum_from_proto(alliance.BuyerKind, buyer.kind, _ENUMS["BuyerKind"], f"{path}.kind"),
        tasks=tuple(buyer.tasks),
    )


def buyer_to_proto(buyer: alliance.JointBuyer) -> alliance_pb2.JointBuyer:
    return alliance_pb2.JointBuyer(
        organisation=buyer.organisation,
        cost_share=str(buyer.cost_share),
        lead=buyer.lead,
        kind=_enum(buyer.kind, "BuyerKind"),
        tasks=list(buyer.tasks),
    )


def spec_from_proto(message: alliance_pb2.Alliance) -> alliance.AllianceSpec:
    return alliance.AllianceSpec(
        title=message.title,
        service=message.service,
        description=message.description,
        buyers=tuple(buyer_from_proto(b, f"alliance.buyers[{i}]") for i, b in enumerate(message.buyers)),
        bid_deadline=_instant(message.bid_deadline, "alliance.bid_deadline"),
        quality_weight=_decimal(message.quality_weight, "alliance.quality_weight"),
        provider_ratio=(
            _decimal(message.provider_ratio, "alliance.provider_ratio")
            if message.provider_ratio
            else alliance.DEFAULT_PROVIDER_RATIO
        ),
        duration_months=message.duration_months or 120,
    )


def _kpi_from_proto(kpi: alliance_pb2.Kpi, path: str) -> alliance.Kpi:
    return alliance.Kpi(
        kpi.code,
        kpi.result_area,
        kpi.description,
        _decimal(kpi.target, f"{path}.target"),
        _decimal(kpi.weight, f"{path}.weight"),
        kpi.higher_is_better,
    )


def _period_from_proto(period: alliance_pb2.ContractPeriod, path: str) -> alliance.Period:
    return alliance.Period(
        period.period,
        required_date(period.start, f"{path}.start"),
        required_date(period.end, f"{path}.end"),
        from_money(period.target_cost, f"{path}.target_cost"),
        from_money(period.incentive_pool, f"{path}.incentive_pool"),
    )


def _kpi_to_proto(kpi: alliance.Kpi) -> alliance_pb2.Kpi:
    return alliance_pb2.Kpi(
        code=kpi.code,
        result_area=kpi.result_area,
        description=kpi.description,
        target=str(kpi.target),
        weight=str(kpi.weight),
        higher_is_better=kpi.higher_is_better,
    )


def _period_to_proto(period: alliance.Period) -> alliance_pb2.ContractPeriod:
    return alliance_pb2.ContractPeriod(
        period=period.period,
        start=proto_date(period.start),
        end=proto_date(period.end),
        target_cost=money(period.target_cost),
        incentive_pool=money(period.incentive_pool),
    )


def alliance_to_proto(found: alliance.Alliance) -> alliance_pb2.Alliance:
    spec = found.spec
    return alliance_pb2.Alliance(
        name=found.name,
        title=spec.title,
        service=spec.service,
        description=spec.description,
        buyers=[buyer_to_proto(b) for b in found.buyers],
        bid_deadline=timestamp(spec.bid_deadline),
        quality_weight=str(spec.quality_weight),
        provider_ratio=str(spec.provider_ratio),
        duration_months=spec.duration_months,
        stage=_enum(found.stage, "AllianceStage"),
        stages=[
            alliance_pb2.StageRecord(
                stage=_enum(s.stage, "AllianceStage"),
                reasons=s.reasons,
                bids=[found.bid_name(b) for b in s.bids],
                decide_time=timestamp(s.decided_at),
            )
            for s in found.stages
        ],
        selected=found.bid_name(found.selected) if found.selected else "",
        parties=list(found.parties()),
        goals=list(found.goals),
        kpis=[_kpi_to_proto(k) for k in found.kpis],
        periods=[_period_to_proto(p) for p in found.periods],
        amendment=found.amendment,
        closed_periods=[
            alliance.PERIOD.format(region=found.region, alliance=found.id, period=c.period)
            for c in found.closings
        ],
    )


def bid_to_proto(region: str, alliance_id: str, bid: alliance.ConsortiumBid) -> alliance_pb2.ConsortiumBid:
    return alliance_pb2.ConsortiumBid(
        name=alliance.ALLIANCE_BID.format(region=region, alliance=alliance_id, bid=bid.bid),
        consortium=bid.consortium,
        members=[
            alliance_pb2.ConsortiumMember(
                business_id=m.business_id,
                role=m.role,
                public_key=m.public_key,
                share=str(m.share),
                lead=m.lead,
            )
            for m in bid.members
        ],
        document=bid.document,
        signatures=[
            alliance_pb2.MemberSignature(business_id=s.business_id, signature=s.signature)
            for s in bid.signatures
        ],
        receive_time=timestamp(bid.received_at),
        document_sha256=sealing.digest(bid.document),
        workshop_score="" if bid.workshop_score is None else str(bid.workshop_score),
        total="" if bid.total is None else str(bid.total),
    )


def decision_to_proto(decision: alliance.Decision) -> alliance_pb2.LeadershipDecision:
    message = alliance_pb2.LeadershipDecision(
        decision=decision.decision,
        kind=_enum(decision.kind, "DecisionKind"),
        approvals=list(decision.approvals),
        reasons=decision.reasons,
        goals=list(decision.goals),
        kpis=[_kpi_to_proto(k) for k in decision.kpis],
        periods=[_period_to_proto(p) for p in decision.periods],
        buyers=[buyer_to_proto(b) for b in decision.buyers],
    )
    if decision.decided_at is not None:
        message.decide_time.CopyFrom(timestamp(decision.decided_at))
    return message


def closing_to_proto(
    region: str, alliance_id: str, closing: alliance.PeriodClosing
) -> alliance_pb2.PeriodClosing:
    return alliance_pb2.PeriodClosing(
        name=alliance.PERIOD.format(region=region, alliance=alliance_id, period=closing.period),
        period=closing.period,
        target_cost=money(closing.target_cost),
        actual_cost=money(closing.actual_cost),
        fee=money(closing.fee),
        incentive=money(closing.incentive),
        kpis_met=list(closing.kpis_met),
        difference=money(closing.difference),
        providers_part=money(closing.providers_part),
        buyers_part=money(closing.buyers_part),
        statements=[to_message(s, alliance_pb2.Statement) for s in closing.statements],
        close_time=timestamp(closing.closed_at),
    )


def finding_to_proto(finding: market_failure.Finding) -> alliance_pb2.MarketFailureFinding:
    spec = finding.spec
    return alliance_pb2.MarketFailureFinding(
        name=finding.name,
        service=spec.service,
        municipalities=list(spec.municipalities),
        evidence=[to_message(e, alliance_pb2.MarketFailureEvidence) for e in spec.evidence],
        valid_from=timestamp(spec.valid_from),
        valid_until=timestamp(spec.valid_until),
        review_date=proto_date(spec.review_date),
        criteria=spec.criteria,
        state=_enum(finding.state, "FindingState"),
        end_reason=finding.end_reason,
    )


def award_to_proto(award: market_failure.DirectAward) -> alliance_pb2.DirectAward:
    return alliance_pb2.DirectAward(
        name=award.name,
        service=award.service,
        municipality=award.municipality,
        awardee_kind=_enum(award.awardee_kind, "AwardeeKind"),
        awardee=award.awardee,
        value=money(award.value),
        reasons=award.reasons,
        finding=award.finding,
        create_time=timestamp(award.created_at),
    )


class AllianceServicer(alliance_pb2_grpc.AllianceServiceServicer):
    """Maps AllianceService RPCs onto tendering's dispatcher."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher

    async def _handle(self, command: Any, request_id: str = "") -> Any:
        return await self._dispatcher.handle(command, call_context(request_id))

    async def _query(self, query: Any) -> Any:
        return await self._dispatcher.query(query, call_context())

    @staticmethod
    def _alliance_name(name: str, field: str = "name") -> tuple[str, str]:
        parts = alliance.ALLIANCE.parse(name, field)
        return parts["region"], parts["alliance"]

    async def CreateAlliance(
        self, request: alliance_pb2.CreateAllianceRequest, context: Context
    ) -> alliance_pb2.Alliance:
        region = REGION.parse(request.parent, "parent")["region"]
        command = alliance_handlers.CreateAlliance(region, spec_from_proto(request.alliance))
        return alliance_to_proto(await self._handle(command, request.request_id))

    async def GetAlliance(
        self, request: alliance_pb2.GetAllianceRequest, context: Context
    ) -> alliance_pb2.Alliance:
        region, alliance_id = self._alliance_name(request.name)
        return alliance_to_proto(await self._query(alliance_handlers.GetAlliance(region, alliance_id)))

    async def SubmitConsortiumBid(
        self, request: alliance_pb2.SubmitConsortiumBidRequest, context: Context
    ) -> alliance_pb2.ConsortiumBid:
        region, alliance_id = self._alliance_name(request.parent, "parent")
        bid = request.bid
        command = alliance_handlers.SubmitConsortiumBid(
            region,
            alliance_id,
            bid.consortium,
            tuple(
                alliance.Member(
                    m.business_id, m.role, m.public_key, _decimal(m.share, f"bid.members[{i}].share"), m.lead
                )
                for i, m in enumerate(bid.members)
            ),
            bid.document,
            tuple(alliance.Signature(s.business_id, s.signature) for s in bid.signatures),
        )
        received: alliance.ConsortiumBid = await self._handle(command, request.request_id)
        return bid_to_proto(region, alliance_id, received)

    async def ListConsortiumBids(
        self, request: alliance_pb2.ListConsortiumBidsRequest, context: Context
    ) -> alliance_pb2.ListConsortiumBidsResponse:
        region, alliance_id = self._alliance_name(request.parent, "parent")
        paging = page(
            request.page_size,
            request.page_token,
            {"parent": request.parent},
            listing="tendering.ListConsortiumBids",
        )
        bids: list[alliance.ConsortiumBid] = await self._query(
            alliance_handlers.ListConsortiumBids(region, alliance_id)
        )
        listed, token = _index_page(bids, paging)
        return alliance_pb2.ListConsortiumBidsResponse(
            bids=[bid_to_proto(region, alliance_id, b) for b in listed], next_page_token=token
        )

    def _bid_ids(self, region: str, alliance_id: str, names: Any, field: str) -> tuple[str, ...]:
        ids = []
        for i, name in enumerate(names):
            parts = alliance.ALLIANCE_BID.parse(name, f"{field}[{i}]")
            if (parts["region"], parts["alliance"]) == (region, alliance_id):
                ids.append(parts["bid"])
            else:
                ids.append(name)  # refused by the model as "no such bid"
        return tuple(ids)

    async def ShortlistBids(
        self, request: alliance_pb2.ShortlistBidsRequest, context: Context
    ) -> alliance_pb2.Alliance:
        region, alliance_id = self._alliance_name(request.name)
        ids = self._bid_ids(region, alliance_id, request.bids, "bids")
        command = alliance_handlers.ShortlistBids(region, alliance_id, ids, request.reasons)
        return alliance_to_proto(await self._handle(command, request.request_id))

    async def ScoreWorkshops(
        self, request: alliance_pb2.ScoreWorkshopsRequest, context: Context
    ) -> alliance_pb2.Alliance:
        region, alliance_id = self._alliance_name(request.name)
        ids = self._bid_ids(region, alliance_id, [s.bid for s in request.scores], "scores")
        scores = tuple(
            (bid_id, _decimal(s.score, f"scores[{i}].score"))
            for i, (bid_id, s) in enumerate(zip(ids, request.scores, strict=True))
        )
        command = alliance_handlers.ScoreWorkshops(region, alliance_id, scores, request.reasons)
        return alliance_to_proto(await self._handle(command, request.request_id))

    async def SelectConsortium(
        self, request: alliance_pb2.SelectConsortiumRequest, context: Context
    ) -> alliance_pb2.Alliance:
        region, alliance_id = self._alliance_name(request.name)
        command = alliance_handlers.SelectConsortium(region, alliance_id, request.reasons)
        return alliance_to_proto(await self._handle(command, request.request_id))

    async def DecideInLeadershipGroup(
        self, request: alliance_pb2.DecideInLeadershipGroupRequest, context: Context
    ) -> alliance_pb2.LeadershipDecision:
        region, alliance_id = self._alliance_name(request.name)
        d = request.decision
        decision = alliance.Decision(
            kind=enum_from_proto(alliance.DecisionKind, d.kind, _ENUMS["DecisionKind"], "decision.kind"),
            approvals=tuple(d.approvals),
            reasons=d.reasons,
            goals=tuple(d.goals),
            kpis=tuple(_kpi_from_proto(k, f"decision.kpis[{i}]") for i, k in enumerate(d.kpis)),
            periods=tuple(_period_from_proto(p, f"decision.periods[{i}]") for i, p in enumerate(d.periods)),
            buyers=tuple(buyer_from_proto(b, f"decision.buyers[{i}]") for i, b in enumerate(d.buyers)),
        )
        command = alliance_handlers.DecideInLeadershipGroup(region, alliance_id, decision)
        return decision_to_proto(await self._handle(command, request.request_id))

    async def RecordCost(
        self, request: alliance_pb2.RecordCostRequest, context: Context
    ) -> alliance_pb2.CostEntry:
        region, alliance_id = self._alliance_name(request.parent, "parent")
        cost = request.cost
        command = alliance_handlers.RecordCost(
            region, alliance_id, cost.period, from_money(cost.amount, "cost.amount"), cost.description
        )
        entry: alliance.CostEntry = await self._handle(command, request.request_id)
        return alliance_pb2.CostEntry(
            entry=entry.entry,
            period=entry.period,
            member=entry.member,
            amount=money(entry.amount),
            description=entry.description,
            record_time=timestamp(entry.recorded_at),
        )

    async def ClosePeriod(
        self, request: alliance_pb2.ClosePeriodRequest, context: Context
    ) -> alliance_pb2.PeriodClosing:
        parts = alliance.PERIOD.parse(request.name, "name")
        results = tuple(
            (r.code, _decimal(r.value, f"kpi_results[{i}].value")) for i, r in enumerate(request.kpi_results)
        )
        command = alliance_handlers.ClosePeriod(parts["region"], parts["alliance"], parts["period"], results)
        closing = await self._handle(command, request.request_id)
        return closing_to_proto(parts["region"], parts["alliance"], closing)

    async def GetPeriodClosing(
        self, request: alliance_pb2.GetPeriodClosingRequest, context: Context
    ) -> alliance_pb2.PeriodClosing:
        parts = alliance.PERIOD.parse(request.name, "name")
        query = alliance_handlers.GetPeriodClosing(parts["region"], parts["alliance"], parts["period"])
        return closing_to_proto(parts["region"], parts["alliance"], await self._query(query))

    async def ExportAllianceOcds(
        self, request: alliance_pb2.ExportAllianceOcdsRequest, context: Context
    ) -> tendering_pb2.OcdsExport:
        region, alliance_id = self._alliance_name(request.name)
        exported: OcdsPackages = await self._query(alliance_handlers.ExportAllianceOcds(region, alliance_id))
        return tendering_pb2.OcdsExport(
            release_package_json=exported.release_package_json,
            record_package_json=exported.record_package_json,
        )

    async def DeclareMarketFailure(
        self, request: alliance_pb2.DeclareMarketFailureRequest, context: Context
    ) -> alliance_pb2.MarketFailureFinding:
        region = REGION.parse(request.parent, "parent")["region"]
        f = request.finding
        spec = market_failure.FindingSpec(
            service=f.service,
            municipalities=tuple(f.municipalities),
            evidence=tuple(
                market_failure.Evidence(
                    enum_from_proto(
                        market_failure.EvidenceKind,
                        e.kind,
                        _ENUMS["EvidenceKind"],
                        f"finding.evidence[{i}].kind",
                    ),
                    e.reference,
                    e.summary,
                )
                for i, e in enumerate(f.evidence)
            ),
            valid_from=_instant(f.valid_from, "finding.valid_from"),
            valid_until=_instant(f.valid_until, "finding.valid_until"),
            review_date=required_date(f.review_date, "finding.review_date"),
            criteria=f.criteria,
        )
        command = alliance_handlers.DeclareMarketFailure(region, spec)
        return finding_to_proto(await self._handle(command, request.request_id))

    async def GetMarketFailure(
        self, request: alliance_pb2.GetMarketFailureRequest, context: Context
    ) -> alliance_pb2.MarketFailureFinding:
        parts = market_failure.FINDING.parse(request.name, "name")
        query = alliance_handlers.GetMarketFailure(parts["region"], parts["finding"])
        return finding_to_proto(await self._query(query))

    async def LiftMarketFailure(
        self, request: alliance_pb2.LiftMarketFailureRequest, context: Context
    ) -> alliance_pb2.MarketFailureFinding:
        parts = market_failure.FINDING.parse(request.name, "name")
        command = alliance_handlers.LiftMarketFailure(parts["region"], parts["finding"], request.reason)
        return finding_to_proto(await self._handle(command, request.request_id))

    async def CreateDirectAward(
        self, request: alliance_pb2.CreateDirectAwardRequest, context: Context
    ) -> alliance_pb2.DirectAward:
        region = REGION.parse(request.parent, "parent")["region"]
        a = request.direct_award
        spec = market_failure.DirectAwardSpec(
            service=a.service,
            municipality=a.municipality,
            awardee_kind=enum_from_proto(
                market_failure.AwardeeKind, a.awardee_kind, _ENUMS["AwardeeKind"], "direct_award.awardee_kind"
            ),
            awardee=a.awardee,
            value=from_money(a.value, "direct_award.value"),
            reasons=a.reasons,
        )
        command = alliance_handlers.CreateDirectAward(region, spec)
        return award_to_proto(await self._handle(command, request.request_id))
