"""Alert streams (Server-Sent Events) through the gateway and the real services: a stream ends
with a final event when its token expires or the gateway stops, and one caller can hold only
so many open at once."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import timedelta
from typing import Any

import httpx
import pytest

from kasvuctl.localsuite import LocalSuite
from services.gateway.app import STREAMS_PER_PRINCIPAL
from services.runtime.auth import REVOKED_NAME, Principal, Role, mint_token, revoke, token_id
from services.runtime.catalog import GATEWAY

pytestmark = pytest.mark.e2e


def supervisor_token(
    suite: LocalSuite, region: str, ttl: timedelta = timedelta(hours=1), who: str = "s"
) -> str:
    principal = Principal(Role.SUPERVISOR, region, f"{who}@{region}")
    return mint_token(suite.private_key(), principal, ttl)


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    """(event type, data) of each event; comments (keep-alives) as ("comment", text)."""
    kind, data = "message", ""
    async for line in response.aiter_lines():
        if line.startswith(":"):
            yield "comment", line[1:].strip()
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()
        elif line == "" and data:
            yield kind, data
            kind, data = "message", ""


async def final_event(response: httpx.Response) -> dict[str, Any]:
    """Reads the stream to its end; its last event must be its one error event, saying why."""
    events = [(kind, data) async for kind, data in sse_events(response) if kind != "comment"]
    assert events and events[-1][0] == "error", events
    assert [kind for kind, _ in events].count("error") == 1, events
    error: dict[str, Any] = json.loads(events[-1][1])["error"]
    return error


def alerts_url(region: str) -> str:
    return f"/v1/regions/{region}/alerts:stream"


async def test_a_stream_ends_with_a_final_event_when_its_token_expires(module_suite: LocalSuite) -> None:
    token = supervisor_token(module_suite, "streams-expiry", ttl=timedelta(seconds=3))
    async with (
        httpx.AsyncClient(
            base_url=module_suite.gateway_url, timeout=httpx.Timeout(10.0, read=15.0)
        ) as client,
        client.stream(
            "GET", alerts_url("streams-expiry"), headers={"Authorization": f"Bearer {token}"}
        ) as response,
    ):
        assert response.status_code == 200
        error = await asyncio.wait_for(final_event(response), timeout=10)
    assert error["code"] == 401 and error["status"] == "UNAUTHENTICATED"
    assert "expired" in error["message"]
    assert error["details"][-1]["requestId"] == response.headers["x-request-id"]


async def test_one_caller_holds_at_most_the_cap_of_open_streams(module_suite: LocalSuite) -> None:
    region = "streams-cap"
    token = supervisor_token(module_suite, region)
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx.AsyncClient(
            base_url=module_suite.gateway_url, timeout=httpx.Timeout(10.0, read=None)
        ) as client,
        AsyncExitStack() as streams,
    ):
        opened = [
            await streams.enter_async_context(client.stream("GET", alerts_url(region), headers=headers))
            for _ in range(STREAMS_PER_PRINCIPAL)
        ]
        assert [response.status_code for response in opened] == [200] * STREAMS_PER_PRINCIPAL

        refused = await client.get(alerts_url(region), headers=headers)
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert error["status"] == "RESOURCE_EXHAUSTED" and str(STREAMS_PER_PRINCIPAL) in error["message"]
        assert refused.headers["x-request-id"] and refused.headers["retry-after"]

        # Another caller is not held back by this one.
        other = {"Authorization": f"Bearer {supervisor_token(module_suite, region, who='other')}"}
        async with client.stream("GET", alerts_url(region), headers=other) as theirs:
            assert theirs.status_code == 200

        # Closing one frees its place.
        await opened.pop().aclose()
        for _ in range(50):
            async with client.stream("GET", alerts_url(region), headers=headers) as again:
                if again.status_code == 200:
                    break
            await asyncio.sleep(0.1)
        assert again.status_code == 200


async def test_open_streams_end_with_a_final_event_when_the_gateway_stops(sqlite_suite: LocalSuite) -> None:
    token = supervisor_token(sqlite_suite, "streams-stop")
    async with (
        httpx.AsyncClient(
            base_url=sqlite_suite.gateway_url, timeout=httpx.Timeout(10.0, read=None)
        ) as client,
        client.stream(
            "GET", alerts_url("streams-stop"), headers={"Authorization": f"Bearer {token}"}
        ) as response,
    ):
        assert response.status_code == 200
        started = time.monotonic()
        stopping = asyncio.create_task(asyncio.to_thread(sqlite_suite.stop_process, GATEWAY))
        error = await asyncio.wait_for(final_event(response), timeout=10)
        exit_code = await stopping
    # Well within the 5 s grace: uvicorn no longer waits out the stream, nor cancels it.
    assert time.monotonic() - started < 4
    # uvicorn exits by the signal it caught, once its graceful shutdown is done.
    assert exit_code in (0, -signal.SIGTERM)
    assert "graceful shutdown exceeded" not in sqlite_suite.log_text(GATEWAY)
    assert error["code"] == 503 and error["status"] == "UNAVAILABLE"
    assert "Last-Event-ID" in error["message"]


async def test_a_revoked_token_is_refused_by_the_running_suite_within_seconds(
    module_suite: LocalSuite,
) -> None:
    """`kasvu token revoke` adds the token's id to the list every service reads again when it
    changes: a token that worked a moment ago, and that the services have already checked and
    remembered, is refused from then on, and another token of the same caller still works."""
    region = "streams-revoked"
    token, other = supervisor_token(module_suite, region), supervisor_token(module_suite, region)
    url = f"/v1/regions/{region}/alerts"
    async with httpx.AsyncClient(base_url=module_suite.gateway_url, timeout=10.0) as client:

        async def status(bearer: str) -> int:
            response = await client.get(url, headers={"Authorization": f"Bearer {bearer}"})
            return response.status_code

        assert await status(token) == 200
        revoke(module_suite.data_dir / "keys" / REVOKED_NAME, token_id(token), note="test")
        for _ in range(25):  # the list is read again at most once a second
            if await status(token) != 200:
                break
            await asyncio.sleep(0.2)
        refused = await client.get(url, headers={"Authorization": f"Bearer {token}"})
        assert refused.status_code == 401, refused.text
        assert "revoked" in refused.json()["error"]["message"]
        assert await status(other) == 200
