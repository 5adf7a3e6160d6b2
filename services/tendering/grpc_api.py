"""Thin gRPC servicer for tendering: proto in, command or query to the dispatcher, domain object
out as proto."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, TypeAlias, TypeVar

import grpc
from kasvu.tendering.v1 import tendering_pb2, tendering_pb2_grpc

from services.runtime.dispatch import Dispatcher
from services.runtime.errors import FieldViolation, InvalidArgument
from services.runtime.grpc_server import call_context
from services.runtime.names import PageRequest, page
from services.runtime.protoconv import (
    enum_from_proto,
    enum_to_proto,
    from_money,
    from_timestamp,
    money,
    proto_date,
    timestamp,
)
from services.tendering import bidder_keys, handlers, model, sealing

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

_ENUMS = tendering_pb2.DESCRIPTOR.enum_types_by_name
_CALL_KIND = _ENUMS["CallKind"]
_CALL_OFF_METHOD = _ENUMS["CallOffMethod"]
_CRITERION_KIND = _ENUMS["CriterionKind"]
_DECLARATION_PART = _ENUMS["DeclarationPart"]
_CALL_STATE = _ENUMS["CallState"]
_BID_STATE = _ENUMS["BidState"]
_CALL_OFF_STATE = _ENUMS["CallOffState"]


def _decimal(text: str, field: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite():
        raise InvalidArgument(
            f"{field} must be a decimal number", [FieldViolation(field, "must be a decimal number")]
        )
    return value


def _instant(stamp: Any, field: str) -> datetime:
    if stamp.seconds == 0 and stamp.nanos == 0:
        raise InvalidArgument(f"{field} is required", [FieldViolation(field, "is required")])
    return from_timestamp(stamp)


def spec_from_proto(call: tendering_pb2.Call) -> model.CallSpec:
    framework = call.framework
    method = (
        model.CallOffMethod.RANKING
        if framework.call_off_method == tendering_pb2.CALL_OFF_METHOD_UNSPECIFIED
        else enum_from_proto(
            model.CallOffMethod, framework.call_off_method, _CALL_OFF_METHOD, "call.framework.call_off_method"
        )
    )
    return model.CallSpec(
        title=call.title,
        service=call.service,
        kind=enum_from_proto(model.CallKind, call.kind, _CALL_KIND, "call.kind"),
        lots=tuple(
            model.Lot(
                lot=lot.lot,
                title=lot.title,
                cpv_codes=tuple(lot.cpv_codes),
                estimated_value=from_money(lot.estimated_value, f"call.lots[{i}].estimated_value"),
                max_suppliers=lot.max_suppliers or 1,
            )
            for i, lot in enumerate(call.lots)
        ),
        criteria=tuple(
            model.Criterion(
                code=c.code,
                kind=enum_from_proto(
                    model.CriterionKind, c.kind, _CRITERION_KIND, f"call.criteria[{i}].kind"
                ),
                weight=_decimal(c.weight, f"call.criteria[{i}].weight"),
                scale_max=c.scale_max,
                description=c.description,
            )
            for i, c in enumerate(call.criteria)
        ),
        declarations=tuple(
            model.Declaration(
                code=d.code,
                part=enum_from_proto(
                    model.DeclarationPart, d.part, _DECLARATION_PART, f"call.declarations[{i}].part"
                ),
                description=d.description,
            )
            for i, d in enumerate(call.declarations)
        ),
        questions_deadline=_instant(call.questions_deadline, "call.questions_deadline"),
        submission_deadline=_instant(call.submission_deadline, "call.submission_deadline"),
        framework=model.FrameworkTerms(
            duration_months=framework.duration_months,
            justification=framework.justification,
            call_off_method=method,
            offer_hours=framework.offer_hours or 72,
        ),
        committee=tuple(model.CommitteeMember(m.member, m.public_key) for m in call.committee),
        opening_threshold=call.opening_threshold,
        social_and_health=call.social_and_health,
        description=call.description,
    )


def call_to_proto(call: model.Call, receipt_public_key: bytes = b"") -> tendering_pb2.Call:
    spec = call.spec

    def bid_name(bid: str) -> str:
        return model.BID.format(region=call.region, call=call.id, bid=bid)

    message = tendering_pb2.Call(
        name=call.name,
        title=spec.title,
        service=spec.service,
        kind=enum_to_proto(spec.kind, _CALL_KIND),  # type: ignore[arg-type]
        lots=[
            tendering_pb2.Lot(
                lot=lot.lot,
                title=lot.title,
                cpv_codes=list(lot.cpv_codes),
                estimated_value=money(lot.estimated_value),
                max_suppliers=lot.max_suppliers,
            )
            for lot in spec.lots
        ],
        criteria=[
            tendering_pb2.Criterion(
                code=c.code,
                kind=enum_to_proto(c.kind, _CRITERION_KIND),  # type: ignore[arg-type]
                weight=str(c.weight),
                scale_max=c.scale_max,
                description=c.description,
            )
            for c in spec.criteria
        ],
        declarations=[
            tendering_pb2.Declaration(
                code=d.code,
                part=enum_to_proto(d.part, _DECLARATION_PART),  # type: ignore[arg-type]
                description=d.description,
            )
            for d in spec.declarations
        ],
        questions_deadline=timestamp(spec.questions_deadline),
        submission_deadline=timestamp(spec.submission_deadline),
        framework=tendering_pb2.FrameworkTerms(
            duration_months=spec.framework.duration_months,
            justification=spec.framework.justification,
            call_off_method=enum_to_proto(spec.framework.call_off_method, _CALL_OFF_METHOD),  # type: ignore[arg-type]
            offer_hours=spec.framework.offer_hours,
        ),
        committee=[
            tendering_pb2.CommitteeMember(
                member=m.member,
                public_key=m.public_key,
                sealed_share=call.sealed_shares[i] if i < len(call.sealed_shares) else b"",
            )
            for i, m in enumerate(spec.committee)
        ],
        opening_threshold=spec.opening_threshold,
        social_and_health=spec.social_and_health,
        description=spec.description,
        buyers=[
            tendering_pb2.Buyer(organisation=b.organisation, cost_share=str(b.cost_share), lead=b.lead)
            for b in call.buyers
        ],
        state=enum_to_proto(call.state, _CALL_STATE),  # type: ignore[arg-type]
        amendment=call.amendment,
        regime=str(call.regime),
        opening_public_key=call.opening_public_key,
        receipt_public_key=receipt_public_key,
        scores=[
            tendering_pb2.Score(
                bid=bid_name(s.bid),
                lot=s.lot,
                bidder=s.bidder,
                price=money(s.price),
                price_points=str(s.price_points),
                quality_points=str(s.quality_points),
                total=str(s.total),
                rank=s.rank,
                abnormally_low=s.abnormally_low,
                excluded_reason=s.excluded_reason,
            )
            for s in call.scores
        ],
        award_reasons=call.award_reasons,
        appeals=[
            tendering_pb2.Appeal(appeal=a.appeal, kind=a.kind, resolved=a.resolved) for a in call.appeals
        ],
        end_reason=call.end_reason,
        framework_agreement=model.FRAMEWORK.format(region=call.region, framework=call.id)
        if call.state == model.CallState.CONCLUDED
        else "",
        create_time=timestamp(call.created_at),
        update_time=timestamp(call.updated_at),
        invited=list(spec.invited),
        parent_framework=model.FRAMEWORK.format(region=call.region, framework=spec.parent_framework)
        if spec.parent_framework
        else "",
    )
    if call.standstill_end is not None:
        message.standstill_end.CopyFrom(proto_date(call.standstill_end))
    if call.published_at is not None:
        message.publish_time.CopyFrom(timestamp(call.published_at))
    if call.awarded_at is not None:
        message.award_time.CopyFrom(timestamp(call.awarded_at))
    if call.served_at is not None:
        message.serve_time.CopyFrom(timestamp(call.served_at))
    return message


def bid_to_proto(bid: model.Bid, call_name: str) -> tendering_pb2.Bid:
    message = tendering_pb2.Bid(
        name=bid.name,
        lot=bid.lot,
        bidder=bid.bidder,
        public_key=bid.public_key,
        signature=bid.signature,
        state=enum_to_proto(bid.state, _BID_STATE),  # type: ignore[arg-type]
        receipt=tendering_pb2.BidReceipt(
            bid=bid.name,
            call=call_name,
            lot=bid.lot,
            bidder=bid.bidder,
            ciphertext_sha256=bid.ciphertext_sha256,
            receive_time=bid.received_at.isoformat(),
            signature=bid.receipt_signature,
        ),
        plaintext_sha256=bid.plaintext_sha256,
    )
    if bid.content is not None:
        message.price.CopyFrom(money(bid.content.price))
    return message


def framework_to_proto(
    framework: model.Framework, suspended: tuple[str, ...] = ()
) -> tendering_pb2.Framework:
    return tendering_pb2.Framework(
        name=framework.name,
        call=model.CALL.format(region=framework.region, call=framework.call),
        service=framework.service,
        suppliers=[
            tendering_pb2.Supplier(
                lot=s.lot, business_id=s.business_id, rank=s.rank, suspended=s.business_id in suspended
            )
            for s in framework.suppliers
        ],
        call_off_method=enum_to_proto(framework.call_off_method, _CALL_OFF_METHOD),  # type: ignore[arg-type]
        start=proto_date(framework.start),
        end=proto_date(framework.end),
    )


def call_off_to_proto(call_off: model.CallOff) -> tendering_pb2.CallOff:
    message = tendering_pb2.CallOff(
        name=call_off.name,
        lot=call_off.lot,
        description=call_off.description,
        value=money(call_off.value),
        state=enum_to_proto(call_off.state, _CALL_OFF_STATE),  # type: ignore[arg-type]
        offered_to=call_off.offered_to,
        skipped=list(call_off.skipped),
        tried=list(call_off.tried),
        create_time=timestamp(call_off.created_at),
    )
    if call_off.offer_expires is not None:
        message.offer_expire_time.CopyFrom(timestamp(call_off.offer_expires))
    return message


def bidder_key_to_proto(key: bidder_keys.BidderKey) -> tendering_pb2.BidderKey:
    message = tendering_pb2.BidderKey(
        name=key.name,
        public_key=key.public_key,
        fingerprint=key.fingerprint,
        state=tendering_pb2.BIDDER_KEY_STATE_LIVE if key.live else tendering_pb2.BIDDER_KEY_STATE_RETIRED,
        enroll_time=timestamp(key.enrolled_at),
    )
    if key.retired_at is not None:
        message.retire_time.CopyFrom(timestamp(key.retired_at))
    return message


def receipt_of(bid: tendering_pb2.Bid) -> sealing.Receipt:
    """The receipt as the service signed it, for a provider's check with sealing.verify_receipt."""
    r = bid.receipt
    return sealing.Receipt(r.bid, r.call, r.lot, r.bidder, r.ciphertext_sha256, r.receive_time)


class TenderingServicer(tendering_pb2_grpc.TenderingServiceServicer):
    """Maps TenderingService RPCs onto tendering's dispatcher."""

    def __init__(self, dispatcher: Dispatcher, receipt_public_key: bytes) -> None:
        self._dispatcher = dispatcher
        self._receipt_public_key = receipt_public_key

    async def _handle(self, command: Any, request_id: str = "") -> Any:
        return await self._dispatcher.handle(command, call_context(request_id))

    async def _query(self, query: Any) -> Any:
        return await self._dispatcher.query(query, call_context())

    def _call(self, call: model.Call) -> tendering_pb2.Call:
        return call_to_proto(call, self._receipt_public_key)

    async def CreateCall(
        self, request: tendering_pb2.CreateCallRequest, context: Context
    ) -> tendering_pb2.Call:
        region = model.REGION.parse(request.parent, "parent")["region"]
        command = handlers.CreateCall(region, spec_from_proto(request.call))
        return self._call(await self._handle(command, request.request_id))

    async def PublishCall(
        self, request: tendering_pb2.PublishCallRequest, context: Context
    ) -> tendering_pb2.Call:
        parts = model.CALL.parse(request.name, "name")
        return self._call(
            await self._handle(handlers.PublishCall(parts["region"], parts["call"]), request.request_id)
        )

    async def AmendCall(
        self, request: tendering_pb2.AmendCallRequest, context: Context
    ) -> tendering_pb2.Call:
        parts = model.CALL.parse(request.name, "name")
        command = handlers.AmendCall(parts["region"], parts["call"], spec_from_proto(request.call))
        return self._call(await self._handle(command, request.request_id))

    async def CancelCall(
        self, request: tendering_pb2.CancelCallRequest, context: Context
    ) -> tendering_pb2.Call:
        parts = model.CALL.parse(request.name, "name")
        command = handlers.CancelCall(parts["region"], parts["call"], request.reason)
        return self._call(await self._handle(command, request.request_id))

    async def GetCall(self, request: tendering_pb2.GetCallRequest, context: Context) -> tendering_pb2.Call:
        parts = model.CALL.parse(request.name, "name")
        return self._call(await self._query(handlers.GetCall(parts["region"], parts["call"])))

    async def ListCalls(
        self, request: tendering_pb2.ListCallsRequest, context: Context
    ) -> tendering_pb2.ListCallsResponse:
        region = model.REGION.parse(request.parent, "parent")["region"]
        paging = page(
            request.page_size, request.page_token, {"parent": request.parent}, listing="tendering.ListCalls"
        )
        before = (paging.instant("created_at"), paging.text("id")) if paging.after else None
        found: list[model.Call] = await self._query(handlers.ListCalls(region, before, paging.size + 1))
        listed, token = _keyset_page(
            found, paging, lambda c: {"created_at": c.created_at.isoformat(), "id": c.id}
        )
        return tendering_pb2.ListCallsResponse(calls=[self._call(c) for c in listed], next_page_token=token)

    async def AskQuestion(
        self, request: tendering_pb2.AskQuestionRequest, context: Context
    ) -> tendering_pb2.Clarification:
        parts = model.CALL.parse(request.parent, "parent")
        command = handlers.AskQuestion(parts["region"], parts["call"], request.clarification.question)
        asked: model.Clarification = await self._handle(command, request.request_id)
        return _clarification(parts["region"], parts["call"], asked)

    async def AnswerQuestion(
        self, request: tendering_pb2.AnswerQuestionRequest, context: Context
    ) -> tendering_pb2.Clarification:
        parts = model.CLARIFICATION.parse(request.name, "name")
        command = handlers.AnswerQuestion(
            parts["region"], parts["call"], parts["clarification"], request.answer
        )
        answered: model.Clarification = await self._handle(command, request.request_id)
        return _clarification(parts["region"], parts["call"], answered)

    async def ListClarifications(
        self, request: tendering_pb2.ListClarificationsRequest, context: Context
    ) -> tendering_pb2.ListClarificationsResponse:
        parts = model.CALL.parse(request.parent, "parent")
        paging = page(
            request.page_size,
            request.page_token,
            {"parent": request.parent},
            listing="tendering.ListClarifications",
        )
        call: model.Call = await self._query(handlers.GetCall(parts["region"], parts["call"]))
        answered = [c for c in call.clarifications if c.answered_at is not None]
        chunk, token = _index_page(answered, paging)
        return tendering_pb2.ListClarificationsResponse(
            clarifications=[_clarification(call.region, call.id, c) for c in chunk], next_page_token=token
        )

    async def SubmitBid(self, request: tendering_pb2.SubmitBidRequest, context: Context) -> tendering_pb2.Bid:
        parts = model.CALL.parse(request.parent, "parent")
        bid = request.bid
        command = handlers.SubmitBid(
            parts["region"],
            parts["call"],
            bid.lot,
            bid.public_key,
            bid.sealed_bid,
            bid.signature,
            bid.opening_key_sha256,
        )
        return bid_to_proto(await self._handle(command, request.request_id), request.parent)

    async def WithdrawBid(
        self, request: tendering_pb2.WithdrawBidRequest, context: Context
    ) -> tendering_pb2.Bid:
        parts = model.BID.parse(request.name, "name")
        command = handlers.WithdrawBid(parts["region"], parts["call"], parts["bid"])
        call = model.CALL.format(region=parts["region"], call=parts["call"])
        return bid_to_proto(await self._handle(command, request.request_id), call)

    async def GetBid(self, request: tendering_pb2.GetBidRequest, context: Context) -> tendering_pb2.Bid:
        parts = model.BID.parse(request.name, "name")
        call = model.CALL.format(region=parts["region"], call=parts["call"])
        return bid_to_proto(
            await self._query(handlers.GetBid(parts["region"], parts["call"], parts["bid"])), call
        )

    async def ListBids(
        self, request: tendering_pb2.ListBidsRequest, context: Context
    ) -> tendering_pb2.ListBidsResponse:
        parts = model.CALL.parse(request.parent, "parent")
        paging = page(
            request.page_size, request.page_token, {"parent": request.parent}, listing="tendering.ListBids"
        )
        bids: list[model.Bid] = await self._query(handlers.ListBids(parts["region"], parts["call"]))
        chunk, token = _index_page(bids, paging)
        return tendering_pb2.ListBidsResponse(
            bids=[bid_to_proto(b, request.parent) for b in chunk], next_page_token=token
        )

    async def SubmitOpeningShare(
        self, request: tendering_pb2.SubmitOpeningShareRequest, context: Context
    ) -> tendering_pb2.Call:
        parts = model.CALL.parse(request.name, "name")
        command = handlers.SubmitOpeningShare(parts["region"], parts["call"], request.share)
        return self._call(await self._handle(command, request.request_id))

    async def AwardCall(
        self, request: tendering_pb2.AwardCallRequest, context: Context
    ) -> tendering_pb2.Call:
        parts = model.CALL.parse(request.name, "name")
        command = handlers.AwardCall(parts["region"], parts["call"], request.reasons)
        return self._call(await self._handle(command, request.request_id))

    async def ServeAwardDecision(
        self, request: tendering_pb2.ServeAwardDecisionRequest, context: Context
    ) -> tendering_pb2.Call:
        parts = model.CALL.parse(request.name, "name")
        command = handlers.ServeAwardDecision(parts["region"], parts["call"])
        return self._call(await self._handle(command, request.request_id))

    async def RecordAppeal(
        self, request: tendering_pb2.RecordAppealRequest, context: Context
    ) -> tendering_pb2.Call:
        parts = model.CALL.parse(request.name, "name")
        command = handlers.RecordAppeal(parts["region"], parts["call"], request.kind)
        return self._call(await self._handle(command, request.request_id))

    async def ResolveAppeal(
        self, request: tendering_pb2.ResolveAppealRequest, context: Context
    ) -> tendering_pb2.Call:
        parts = model.CALL.parse(request.name, "name")
        command = handlers.ResolveAppeal(parts["region"], parts["call"], request.appeal)
        return self._call(await self._handle(command, request.request_id))

    async def GetFramework(
        self, request: tendering_pb2.GetFrameworkRequest, context: Context
    ) -> tendering_pb2.Framework:
        parts = model.FRAMEWORK.parse(request.name, "name")
        view: handlers.FrameworkView = await self._query(
            handlers.GetFramework(parts["region"], parts["framework"])
        )
        return framework_to_proto(view.framework, view.suspended)

    async def ListFrameworks(
        self, request: tendering_pb2.ListFrameworksRequest, context: Context
    ) -> tendering_pb2.ListFrameworksResponse:
        region = model.REGION.parse(request.parent, "parent")["region"]
        paging = page(
            request.page_size,
            request.page_token,
            {"parent": request.parent},
            listing="tendering.ListFrameworks",
        )
        found: list[model.Framework] = await self._query(
            handlers.ListFrameworks(region, paging.after.get("after", ""), paging.size + 1)
        )
        listed, token = _keyset_page(found, paging, lambda f: {"after": f.id})
        return tendering_pb2.ListFrameworksResponse(
            frameworks=[framework_to_proto(f) for f in listed], next_page_token=token
        )

    async def CreateCallOff(
        self, request: tendering_pb2.CreateCallOffRequest, context: Context
    ) -> tendering_pb2.CallOff:
        parts = model.FRAMEWORK.parse(request.parent, "parent")
        call_off = request.call_off
        command = handlers.CreateCallOff(
            parts["region"],
            parts["framework"],
            call_off.lot,
            call_off.description,
            from_money(call_off.value, "call_off.value"),
        )
        return call_off_to_proto(await self._handle(command, request.request_id))

    async def StartMiniCompetition(
        self, request: tendering_pb2.StartMiniCompetitionRequest, context: Context
    ) -> tendering_pb2.Call:
        parts = model.FRAMEWORK.parse(request.name, "name")
        call_off = request.call_off
        command = handlers.StartMiniCompetition(
            parts["region"],
            parts["framework"],
            call_off.lot,
            call_off.description,
            from_money(call_off.value, "call_off.value"),
        )
        return self._call(await self._handle(command, request.request_id))

    async def AcceptCallOff(
        self, request: tendering_pb2.AcceptCallOffRequest, context: Context
    ) -> tendering_pb2.CallOff:
        return await self._answer(request.name, True, request.request_id)

    async def DeclineCallOff(
        self, request: tendering_pb2.DeclineCallOffRequest, context: Context
    ) -> tendering_pb2.CallOff:
        return await self._answer(request.name, False, request.request_id)

    async def _answer(self, name: str, accept: bool, request_id: str) -> tendering_pb2.CallOff:
        parts = model.CALL_OFF.parse(name, "name")
        command = handlers.AnswerCallOff(parts["region"], parts["framework"], parts["call_off"], accept)
        return call_off_to_proto(await self._handle(command, request_id))

    async def ListCallOffs(
        self, request: tendering_pb2.ListCallOffsRequest, context: Context
    ) -> tendering_pb2.ListCallOffsResponse:
        parts = model.FRAMEWORK.parse(request.parent, "parent")
        paging = page(
            request.page_size,
            request.page_token,
            {"parent": request.parent},
            listing="tendering.ListCallOffs",
        )
        found: list[model.CallOff] = await self._query(
            handlers.ListCallOffs(
                parts["region"], parts["framework"], paging.after.get("after", ""), paging.size + 1
            )
        )
        listed, token = _keyset_page(found, paging, lambda c: {"after": c.id})
        return tendering_pb2.ListCallOffsResponse(
            call_offs=[call_off_to_proto(c) for c in listed], next_page_token=token
        )

    async def ExportOcds(
        self, request: tendering_pb2.ExportOcdsRequest, context: Context
    ) -> tendering_pb2.OcdsExport:
        parts = model.CALL.parse(request.name, "name")
        exported: handlers.OcdsPackages = await self._query(
            handlers.ExportOcds(parts["region"], parts["call"])
        )
        return tendering_pb2.OcdsExport(
            release_package_json=exported.release_package_json,
            record_package_json=exported.record_package_json,
        )

    async def EnrolBidderKey(
        self, request: tendering_pb2.EnrolBidderKeyRequest, context: Context
    ) -> tendering_pb2.BidderKey:
        bidder = bidder_keys.BIDDER.parse(request.parent, "parent")["bidder"]
        key = request.bidder_key
        command = handlers.EnrolBidderKey(bidder, key.public_key, key.proof)
        return bidder_key_to_proto(await self._handle(command, request.request_id))

    async def ListBidderKeys(
        self, request: tendering_pb2.ListBidderKeysRequest, context: Context
    ) -> tendering_pb2.ListBidderKeysResponse:
        bidder = bidder_keys.BIDDER.parse(request.parent, "parent")["bidder"]
        paging = page(
            request.page_size,
            request.page_token,
            {"parent": request.parent},
            listing="tendering.ListBidderKeys",
        )
        before = (paging.instant("enrolled_at"), paging.text("fingerprint")) if paging.after else None
        found: list[bidder_keys.BidderKey] = await self._query(
            handlers.ListBidderKeys(bidder, before, paging.size + 1)
        )
        listed, token = _keyset_page(
            found, paging, lambda k: {"enrolled_at": k.enrolled_at.isoformat(), "fingerprint": k.fingerprint}
        )
        return tendering_pb2.ListBidderKeysResponse(
            bidder_keys=[bidder_key_to_proto(k) for k in listed], next_page_token=token
        )

    async def RetireBidderKey(
        self, request: tendering_pb2.RetireBidderKeyRequest, context: Context
    ) -> tendering_pb2.BidderKey:
        parts = bidder_keys.BIDDER_KEY.parse(request.name, "name")
        fingerprint = bidder_keys.fingerprint_of(parts["fingerprint"], "name")
        command = handlers.RetireBidderKey(parts["bidder"], fingerprint)
        return bidder_key_to_proto(await self._handle(command, request.request_id))


T = TypeVar("T")


def _keyset_page(
    found: list[T], paging: PageRequest, position: Callable[[T], dict[str, str]]
) -> tuple[list[T], str]:
    """The page of `found` (fetched one longer than the page) and the token for the next one."""
    listed = found[: paging.size]
    return listed, paging.next_token(position(listed[-1]) if len(found) > paging.size else None)


def _index_page(items: list[T], paging: PageRequest) -> tuple[list[T], str]:
    """A page of a short list held whole (a call's answers, a bidder's bids) by position."""
    start = paging.number("index") if paging.after else 0
    end = start + paging.size
    return items[start:end], paging.next_token({"index": str(end)} if end < len(items) else None)


def _clarification(
    region: str, call_id: str, clarification: model.Clarification
) -> tendering_pb2.Clarification:
    message = tendering_pb2.Clarification(
        name=model.CLARIFICATION.format(
            region=region, call=call_id, clarification=clarification.clarification
        ),
        question=clarification.question,
        answer=clarification.answer,
    )
    if clarification.answered_at is not None:
        message.answer_time.CopyFrom(timestamp(clarification.answered_at))
    return message
