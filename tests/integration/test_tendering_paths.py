# ruff: noqa: F811 - the tendering fixture is test_tendering's
"""Tendering paths over gRPC against real SQLite and PostgreSQL that the other tendering tests leave
out: a supplier declining a call-off through the RPC, cancelling a call from each state the model
allows (and not once it has ended), committee shares sent before the deadline, and paging through
bids, call-offs and calls."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import grpc
import pytest
from kasvu.tendering.v1 import events_pb2, tendering_pb2

from services.runtime.names import next_page_token
from services.tendering import handlers
from tests.integration.helpers import business_ids, count_rows, error_reason, field_violations
from tests.integration.test_tendering import (  # noqa: F401 - the fixture
    DEADLINE,
    REGION,
    Member,
    Provider,
    World,
    call_message,
    concluded_framework,
    content,
    euros,
    share_of,
    world,
)
from tests.integration.test_tendering_rules import (
    AFTER_STANDSTILL,
    award,
    open_after_deadline,
    publish,
    serve,
    tendering_payloads,
)

RANKING = tendering_pb2.CALL_OFF_METHOD_RANKING
CANCELLED = tendering_pb2.CALL_STATE_CANCELLED


async def refused(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    return error.value


async def get(world: World, call: tendering_pb2.Call) -> tendering_pb2.Call:
    return await world.stub.GetCall(tendering_pb2.GetCallRequest(name=call.name), metadata=world.admin())


async def cancel(world: World, call: tendering_pb2.Call, reason: str) -> tendering_pb2.Call:
    return await world.stub.CancelCall(
        tendering_pb2.CancelCallRequest(name=call.name, reason=reason), metadata=world.admin()
    )


async def call_ended_events(world: World) -> list[tuple[str, str, str]]:
    return [
        (e.call, e.state, e.reason)
        for e in map(events_pb2.CallEnded.FromString, await tendering_payloads(world.db, "CallEnded"))
    ]


# -- 1. declining a call-off -----------------------------------------------------------------------


async def test_a_supplier_declining_a_call_off_passes_it_to_the_next_eligible_supplier(world: World) -> None:
    members = [Member("alice"), Member("bob")]
    next_id = business_ids(6_100_000)
    first, suspended, third = providers = [Provider(next_id()) for _ in range(3)]
    framework = await concluded_framework(world, members, providers, RANKING)
    assert [s.business_id for s in framework.suppliers if s.lot == "north"] == [
        p.business_id for p in providers
    ]
    await world.dispatcher.handle(
        handlers.SetSupplierEligibility(REGION, "recruitment", suspended.business_id, False, "breach-2")
    )
    call_off = await world.stub.CreateCallOff(
        tendering_pb2.CreateCallOffRequest(
            parent=framework.name,
            call_off=tendering_pb2.CallOff(lot="north", description="4 rekrytointia", value=euros(6_000)),
        ),
        metadata=world.admin(),
    )
    assert (call_off.offered_to, list(call_off.tried), list(call_off.skipped)) == (
        first.business_id,
        [first.business_id],
        [],
    )

    def decline(provider: Provider) -> Awaitable[tendering_pb2.CallOff]:
        return world.stub.DeclineCallOff(
            tendering_pb2.DeclineCallOffRequest(name=call_off.name),
            metadata=world.provider(provider.business_id),
        )

    # Only the supplier it is offered to may decline it; the organiser cannot decline for it.
    not_offered = await refused(decline(third))
    assert not_offered.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(not_offered) == "NOT_OFFERED"
    by_admin = await refused(
        world.stub.DeclineCallOff(
            tendering_pb2.DeclineCallOffRequest(name=call_off.name), metadata=world.admin()
        )
    )
    assert by_admin.code() == grpc.StatusCode.PERMISSION_DENIED
    assert len(await tendering_payloads(world.db, "CallOffOffered")) == 1

    # The first declines two hours in: the suspended second is skipped, the third is offered it.
    world.clock.set(world.clock.now() + timedelta(hours=2))
    declined_at = world.clock.now()
    declined = await decline(first)
    assert declined.state == tendering_pb2.CALL_OFF_STATE_OFFERED
    assert declined.offered_to == third.business_id
    assert list(declined.tried) == [first.business_id, third.business_id]
    assert list(declined.skipped) == [suspended.business_id]
    assert declined.offer_expire_time.ToDatetime(tzinfo=declined_at.tzinfo) == declined_at + timedelta(
        hours=24
    )
    offers = [
        events_pb2.CallOffOffered.FromString(p) for p in await tendering_payloads(world.db, "CallOffOffered")
    ]
    assert [(o.business_id, list(o.skipped)) for o in offers] == [
        (first.business_id, []),
        (third.business_id, [suspended.business_id]),
    ]
    assert await tendering_payloads(world.db, "CallOffDecided") == []

    # Having declined, the first can neither decline again nor accept.
    assert error_reason(await refused(decline(first))) == "NOT_OFFERED"
    again = await refused(
        world.stub.AcceptCallOff(
            tendering_pb2.AcceptCallOffRequest(name=call_off.name),
            metadata=world.provider(first.business_id),
        )
    )
    assert error_reason(again) == "NOT_OFFERED"

    # The first offer's lapse (24 h after it was made) does not move the third's offer on.
    world.clock.set(declined_at + timedelta(hours=23))
    await world.tick()
    listed = await world.stub.ListCallOffs(
        tendering_pb2.ListCallOffsRequest(parent=framework.name), metadata=world.admin()
    )
    [still] = listed.call_offs
    assert (still.state, still.offered_to) == (tendering_pb2.CALL_OFF_STATE_OFFERED, third.business_id)

    # The third declines too: nobody eligible is left, so the call-off fails.
    failed = await decline(third)
    assert failed.state == tendering_pb2.CALL_OFF_STATE_FAILED
    assert failed.offered_to == "" and not failed.HasField("offer_expire_time")
    assert list(failed.tried) == [first.business_id, third.business_id]
    [decided] = await tendering_payloads(world.db, "CallOffDecided")
    assert (
        events_pb2.CallOffDecided.FromString(decided).state,
        events_pb2.CallOffDecided.FromString(decided).business_id,
    ) == (
        "FAILED",
        "",
    )
    assert error_reason(await refused(decline(third))) == "NOT_OFFERED"


# -- 2. cancelling ---------------------------------------------------------------------------------


async def test_a_published_call_with_bids_is_cancelled_with_its_reason_and_its_deadline_closes_nothing(
    world: World,
) -> None:
    members = [Member("alice"), Member("bob")]
    next_id = business_ids(6_200_000)
    bidders = [Provider(next_id()) for _ in range(2)]
    call = await publish(world, call_message(members))
    for i, bidder in enumerate(bidders):
        await world.bid(call, bidder, "north", content(100_000 + i, 3))

    no_reason = await refused(cancel(world, call, "  "))
    assert no_reason.code() == grpc.StatusCode.INVALID_ARGUMENT and field_violations(no_reason) == ["reason"]
    assert (await get(world, call)).state == tendering_pb2.CALL_STATE_PUBLISHED

    cancelled = await cancel(world, call, "Tarve muuttui: the need changed.")
    assert (cancelled.state, cancelled.end_reason) == (CANCELLED, "Tarve muuttui: the need changed.")
    assert await call_ended_events(world) == [(call.name, "CANCELLED", "Tarve muuttui: the need changed.")]
    # The deadline's timer finds nothing to close, and no share opens a cancelled call.
    world.clock.set(DEADLINE + timedelta(minutes=1))
    await world.tick()
    later = await get(world, call)
    assert (later.state, later.end_reason) == (CANCELLED, "Tarve muuttui: the need changed.")
    assert await tendering_payloads(world.db, "CallClosed") == []
    assert error_reason(await refused(share_of(world, call, members, 0))) == "CALL_STATE"
    assert await count_rows(world.db, "tendering_opening_shares") == 0


async def test_a_closed_call_is_cancelled_between_the_committee_shares_and_opens_no_more(
    world: World,
) -> None:
    members = [Member("alice"), Member("bob"), Member("carol")]
    bidder = Provider(business_ids(6_300_000)())
    call = await publish(world, call_message(members))
    await world.bid(call, bidder, "north", content(100_000, 3))
    world.clock.set(DEADLINE + timedelta(minutes=1))
    await world.tick()
    after_one = await share_of(world, call, members, 0)
    assert after_one.state == tendering_pb2.CALL_STATE_CLOSED

    assert await count_rows(world.db, "tendering_opening_shares") == 1
    cancelled = await cancel(world, call, "Budget withdrawn.")
    assert (cancelled.state, cancelled.end_reason) == (CANCELLED, "Budget withdrawn.")
    assert await call_ended_events(world) == [(call.name, "CANCELLED", "Budget withdrawn.")]
    # The shares already in are forgotten: with k of them they would rebuild the key.
    assert await count_rows(world.db, "tendering_opening_shares") == 0
    # The k-th share that would have opened the bids is refused: the call stays sealed.
    too_late = await refused(share_of(world, call, members, 1))
    assert too_late.code() == grpc.StatusCode.FAILED_PRECONDITION and error_reason(too_late) == "CALL_STATE"
    later = await get(world, call)
    assert later.state == CANCELLED and not later.scores
    assert await tendering_payloads(world.db, "BidsOpened") == []


async def test_an_evaluated_call_is_cancelled_with_its_reason_and_cannot_be_awarded(world: World) -> None:
    members = [Member("alice"), Member("bob")]
    bidder = Provider(business_ids(6_400_000)())
    call = await publish(world, call_message(members))
    await world.bid(call, bidder, "north", content(100_000, 3))
    await open_after_deadline(world, call, members)

    cancelled = await cancel(world, call, "The evaluation found the terms unlawful.")
    assert (cancelled.state, cancelled.end_reason) == (CANCELLED, "The evaluation found the terms unlawful.")
    assert await call_ended_events(world) == [
        (call.name, "CANCELLED", "The evaluation found the terms unlawful.")
    ]
    no_award = await refused(award(world, call))
    assert error_reason(no_award) == "CALL_STATE"
    assert await tendering_payloads(world.db, "CallAwarded") == []
    assert (await get(world, call)).state == CANCELLED


async def test_a_call_in_standstill_is_cancelled_and_never_concludes(world: World) -> None:
    members = [Member("alice"), Member("bob")]
    bidder = Provider(business_ids(6_500_000)())
    call = await publish(world, call_message(members))
    await world.bid(call, bidder, "north", content(100_000, 3))
    await open_after_deadline(world, call, members)
    await award(world, call)
    served = await serve(world, call)
    assert served.state == tendering_pb2.CALL_STATE_STANDSTILL

    cancelled = await cancel(world, call, "An appeal showed the award was wrong.")
    assert (cancelled.state, cancelled.end_reason) == (CANCELLED, "An appeal showed the award was wrong.")
    assert await call_ended_events(world) == [
        (call.name, "CANCELLED", "An appeal showed the award was wrong.")
    ]
    # The standstill's end passes: nothing concludes and no framework exists.
    world.clock.set(AFTER_STANDSTILL)
    await world.tick()
    later = await get(world, call)
    assert later.state == CANCELLED and not later.framework_agreement
    assert await tendering_payloads(world.db, "CallConcluded") == []
    assert await count_rows(world.db, "tendering_frameworks") == 0


async def test_a_draft_cancelled_before_publication_stays_the_organisers_alone(world: World) -> None:
    members = [Member("alice"), Member("bob")]
    draft = await world.stub.CreateCall(
        tendering_pb2.CreateCallRequest(parent=f"regions/{REGION}", call=call_message(members)),
        metadata=world.admin(),
    )
    cancelled = await cancel(world, draft, "Not needed after all.")
    assert cancelled.state == CANCELLED

    provider = world.provider(business_ids(6_400_000)())
    unseen = await refused(
        world.stub.GetCall(tendering_pb2.GetCallRequest(name=draft.name), metadata=provider)
    )
    assert unseen.code() == grpc.StatusCode.NOT_FOUND
    listed = await world.stub.ListCalls(tendering_pb2.ListCallsRequest(parent=f"regions/{REGION}"))
    assert draft.name not in [c.name for c in listed.calls]
    assert (await get(world, draft)).state == CANCELLED  # the organiser still reads it


async def test_cancelling_a_call_that_has_ended_is_refused_and_changes_nothing(world: World) -> None:
    members = [Member("alice"), Member("bob")]
    next_id = business_ids(6_600_000)
    providers = [Provider(next_id()) for _ in range(2)]
    cancelled = await publish(world, call_message(members))
    await cancel(world, cancelled, "First reason.")
    unsuccessful = await publish(world, call_message(members))  # no bids: unsuccessful at the deadline
    framework = await concluded_framework(world, members, providers, RANKING)
    concluded = await world.stub.GetCall(tendering_pb2.GetCallRequest(name=framework.call))
    assert (await get(world, unsuccessful)).state == tendering_pb2.CALL_STATE_UNSUCCESSFUL
    assert concluded.state == tendering_pb2.CALL_STATE_CONCLUDED

    before = {c.name: await get(world, c) for c in (cancelled, unsuccessful, concluded)}
    ended_before = await call_ended_events(world)
    audited_before = await count_rows(world.db, "audit_log")
    assert sorted(state for _, state, _ in ended_before) == ["CANCELLED", "UNSUCCESSFUL"]
    for call in (cancelled, unsuccessful, concluded):
        error = await refused(cancel(world, call, "A second thought."))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and error_reason(error) == "CALL_STATE"
    for name, was in before.items():
        now = await world.stub.GetCall(tendering_pb2.GetCallRequest(name=name), metadata=world.admin())
        assert (now.state, now.end_reason, now.update_time) == (was.state, was.end_reason, was.update_time)
    assert await call_ended_events(world) == ended_before
    assert await count_rows(world.db, "audit_log") == audited_before
    still = await world.stub.GetFramework(tendering_pb2.GetFrameworkRequest(name=framework.name))
    assert still == framework


# -- 3. shares before the deadline -----------------------------------------------------------------


async def test_every_committee_share_sent_before_the_deadline_is_refused_and_none_counts_later(
    world: World,
) -> None:
    members = [Member("alice"), Member("bob"), Member("carol")]
    bidder = Provider(business_ids(6_700_000)())
    call = await publish(world, call_message(members))  # 2 of 3
    assert call.opening_threshold == 2
    await world.bid(call, bidder, "north", content(100_000, 3))

    # All the members, the k of them and more, try a second before the deadline.
    world.clock.set(DEADLINE - timedelta(seconds=1))
    for index in range(len(members)):
        early = await refused(share_of(world, call, members, index))
        assert early.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(early) == "DEADLINE_NOT_PASSED"
    assert await count_rows(world.db, "tendering_opening_shares") == 0
    assert await tendering_payloads(world.db, "OpeningShareSubmitted") == []
    assert (await get(world, call)).state == tendering_pb2.CALL_STATE_PUBLISHED

    # After the deadline the first share opens nothing: the early ones were not kept.
    world.clock.set(DEADLINE + timedelta(minutes=1))
    await world.tick()
    first = await share_of(world, call, members, 0)
    assert first.state == tendering_pb2.CALL_STATE_CLOSED and not first.scores
    assert await count_rows(world.db, "tendering_opening_shares") == 1
    second = await share_of(world, call, members, 1)
    assert second.state == tendering_pb2.CALL_STATE_EVALUATED
    assert [s.bidder for s in second.scores] == [bidder.business_id]
    assert len(await tendering_payloads(world.db, "OpeningShareSubmitted")) == 2


# -- 4. paging -------------------------------------------------------------------------------------


async def every_page(
    fetch: Callable[[int, str], Awaitable[tuple[list[str], str]]], size: int
) -> list[list[str]]:
    """Pages of names, following next_page_token to its end."""
    pages: list[list[str]] = []
    token = ""
    while True:
        names, token = await fetch(size, token)
        pages.append(names)
        assert len(pages) < 50, "the paging does not end"
        if not token:
            return pages


def flat(pages: list[list[str]]) -> list[str]:
    return [name for page in pages for name in page]


async def test_list_bids_pages_without_repeats_or_gaps_and_refuses_a_foreign_token(world: World) -> None:
    members = [Member("alice"), Member("bob")]
    bidder = Provider(business_ids(6_800_000)())
    call = await publish(world, call_message(members))
    other = await publish(world, call_message(members))
    made = []
    for i in range(5):  # replacements stay listed: five bids, one per line of the bidder's history
        world.clock.set(world.clock.now() + timedelta(minutes=1))
        made.append((await world.bid(call, bidder, ("north", "south")[i % 2], content(100_000 + i, 3))).name)
    await world.bid(other, bidder, "north", content(1, 1))

    async def fetch(size: int, token: str, parent: str = call.name) -> tuple[list[str], str]:
        listed = await world.stub.ListBids(
            tendering_pb2.ListBidsRequest(parent=parent, page_size=size, page_token=token),
            metadata=world.provider(bidder.business_id),
        )
        return [b.name for b in listed.bids], listed.next_page_token

    whole, no_token = await fetch(0, "")
    assert sorted(whole) == sorted(made) and not no_token
    for size in (1, 2, 3, 5):
        pages = await every_page(fetch, size)
        assert flat(pages) == whole
        assert [len(p) for p in pages] == [min(size, 5 - i) for i in range(0, 5, size)]

    # A bid made between pages is listed once, at the end; nothing is repeated or skipped.
    first_page, token = await fetch(2, "")
    world.clock.set(world.clock.now() + timedelta(minutes=1))
    added = await world.bid(call, bidder, "north", content(99_000, 4))
    rest = await every_page(lambda size, t: fetch(size, t or token), 2)
    assert first_page + flat(rest) == [*whole, added.name]

    # The organiser pages the same bids once they are opened.
    await open_after_deadline(world, call, members)

    async def by_admin(size: int, token: str) -> tuple[list[str], str]:
        listed = await world.stub.ListBids(
            tendering_pb2.ListBidsRequest(parent=call.name, page_size=size, page_token=token),
            metadata=world.admin(),
        )
        return [b.name for b in listed.bids], listed.next_page_token

    assert flat(await every_page(by_admin, 4)) == [*whole, added.name]

    _, own_token = await fetch(2, "")
    foreign = {
        "another call's token": (other.name, own_token),
        "garbled": (call.name, own_token[:-3] + ("AAA" if own_token[-3:] != "AAA" else "BBB")),
        "not a token": (call.name, "not-a-page-token"),
        # ListClarifications pages the same parent by the same kind of position.
        "a ListClarifications token": (
            call.name,
            next_page_token({"list": "tendering.ListClarifications", "parent": call.name}, {"index": "1"}),
        ),
        "a token bound to the parent only": (
            call.name,
            next_page_token({"parent": call.name}, {"index": "1"}),
        ),
        "a position that is no index": (
            call.name,
            next_page_token({"list": "tendering.ListBids", "parent": call.name}, {"index": "two"}),
        ),
    }
    for case, (parent, bad) in foreign.items():
        error = await refused(fetch(2, bad, parent))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, case
        assert field_violations(error) == ["page_token"], case
    negative = await refused(fetch(-1, ""))
    assert field_violations(negative) == ["page_size"]


async def test_list_call_offs_pages_without_repeats_or_gaps_and_refuses_a_foreign_token(
    world: World,
) -> None:
    members = [Member("alice"), Member("bob")]
    next_id = business_ids(6_900_000)
    providers = [Provider(next_id()) for _ in range(2)]
    await publish(world, call_message(members))  # a second call, so that ListCalls pages
    framework = await concluded_framework(world, members, providers, RANKING)
    made = []
    for i in range(7):
        call_off = await world.stub.CreateCallOff(
            tendering_pb2.CreateCallOffRequest(
                parent=framework.name,
                call_off=tendering_pb2.CallOff(
                    lot="north", description=f"{i + 1} rekrytointia", value=euros(1_000 * (i + 1))
                ),
            ),
            metadata=world.admin(),
        )
        made.append(call_off.name)

    async def fetch(size: int, token: str, parent: str = framework.name) -> tuple[list[str], str]:
        listed = await world.stub.ListCallOffs(
            tendering_pb2.ListCallOffsRequest(parent=parent, page_size=size, page_token=token),
            metadata=world.admin(),
        )
        return [c.name for c in listed.call_offs], listed.next_page_token

    whole, no_token = await fetch(0, "")
    assert sorted(whole) == sorted(made) and not no_token
    for size in (1, 3, 7):
        pages = await every_page(fetch, size)
        assert flat(pages) == whole
        assert [len(p) for p in pages] == [min(size, 7 - i) for i in range(0, 7, size)]

    _, token = await fetch(3, "")
    bids = await world.stub.ListBids(
        tendering_pb2.ListBidsRequest(parent=framework.call, page_size=1), metadata=world.admin()
    )
    calls = await world.stub.ListCalls(
        tendering_pb2.ListCallsRequest(parent=f"regions/{REGION}", page_size=1)
    )
    foreign = {
        "another list's token (bids)": bids.next_page_token,
        "another list's token (calls)": calls.next_page_token,
        "a token for another framework": next_page_token(
            {"list": "tendering.ListCallOffs", "parent": f"regions/{REGION}/frameworks/another"},
            {"after": ""},
        ),
        "garbled": token[:10] + ("B" if token[10] == "A" else "A") + token[11:],
        "not a token": "%%%",
    }
    assert bids.next_page_token and calls.next_page_token
    for case, bad in foreign.items():
        error = await refused(fetch(3, bad))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, case
        assert field_violations(error) == ["page_token"], case


async def test_list_calls_pages_newest_first_without_repeats_or_gaps_and_refuses_a_foreign_token(
    world: World,
) -> None:
    members = [Member("alice"), Member("bob")]
    parent = f"regions/{REGION}"
    made = []
    # Three calls made at one instant (the tie is broken by id), two later; a draft is never listed.
    for i in range(5):
        if i >= 3:
            world.clock.set(world.clock.now() + timedelta(minutes=i))
        made.append((await publish(world, call_message(members))).name)
    await world.stub.CreateCall(
        tendering_pb2.CreateCallRequest(parent=parent, call=call_message(members)), metadata=world.admin()
    )

    async def fetch(size: int, token: str, region_parent: str = parent) -> tuple[list[str], str]:
        listed = await world.stub.ListCalls(
            tendering_pb2.ListCallsRequest(parent=region_parent, page_size=size, page_token=token)
        )
        return [c.name for c in listed.calls], listed.next_page_token

    whole, no_token = await fetch(0, "")
    assert sorted(whole) == sorted(made) and not no_token
    assert whole[:2] == [made[4], made[3]]  # newest first
    for size in (1, 2, 4, 5):
        pages = await every_page(fetch, size)
        assert flat(pages) == whole
        assert [len(p) for p in pages] == [min(size, 5 - i) for i in range(0, 5, size)]

    # A call published between pages is newer than the first page: the rest is unchanged.
    first_page, token = await fetch(2, "")
    world.clock.set(world.clock.now() + timedelta(hours=1))
    newest = await publish(world, call_message(members))
    rest = await every_page(lambda size, t: fetch(size, t or token), 2)
    assert first_page + flat(rest) == whole
    assert (await fetch(0, ""))[0] == [newest.name, *whole]

    foreign = {
        "another region's token": (
            parent,
            next_page_token(
                {"list": "tendering.ListCalls", "parent": "regions/uusimaa"},
                {"created_at": "2026-11-02T09:00:00+00:00", "id": "x"},
            ),
        ),
        "a token from ListBids": (
            parent,
            next_page_token({"list": "tendering.ListBids", "parent": made[0]}, {"index": "1"}),
        ),
        "a position with no instant": (
            parent,
            next_page_token({"list": "tendering.ListCalls", "parent": parent}, {"id": "x"}),
        ),
        "a position with a bad instant": (
            parent,
            next_page_token(
                {"list": "tendering.ListCalls", "parent": parent}, {"created_at": "yesterday", "id": "x"}
            ),
        ),
        "garbled": (parent, token[:-4]),
    }
    for case, (region_parent, bad) in foreign.items():
        error = await refused(fetch(2, bad, region_parent))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, case
        assert field_violations(error) == ["page_token"], case
