"""Self-monitoring end to end through the gateway: a programme with the default catalogue is
published and public; a supervisor follows alerts live, resumes after a disconnect without
gaps or repeats, and acknowledges an alert."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from kasvuctl.localsuite import LocalSuite
from services.runtime.auth import Role
from tests.e2e.flows import Api
from tests.e2e.test_loop import collect_alerts

pytestmark = pytest.mark.e2e

REGION = "satakunta"
PROVIDER = "0737546-2"


async def test_a_published_default_programme_alerts_a_supervisor_who_resumes_and_acknowledges(
    sqlite_suite: LocalSuite,
) -> None:
    async with httpx.AsyncClient(base_url=sqlite_suite.gateway_url, timeout=10.0) as client:
        api = Api(sqlite_suite, client)
        admin = api.auth(Role.REGION_ADMIN, REGION)
        drafted = await client.post(
            f"/v1/regions/{REGION}/programmes",
            json={
                "programme": {"displayName": "Omavalvontaohjelma"},
                "defaultCatalogueService": "recruitment",
            },
            headers=admin,
        )
        assert drafted.status_code == 200, drafted.text
        name = drafted.json()["name"]
        published = await client.post(f"/v1/{name}:publish", json={}, headers=admin)
        assert published.status_code == 200, published.text
        public = await client.get(f"/v1/{name}")
        assert public.status_code == 200, public.text
        assert public.json()["state"] == "PROGRAMME_STATE_PUBLISHED"
        assert len(public.json()["indicators"]) == 7

        alerts: asyncio.Queue[tuple[str, dict[str, object]]] = asyncio.Queue()
        opened = asyncio.Event()
        stream = asyncio.create_task(collect_alerts(api, REGION, alerts, opened=opened))
        await asyncio.wait_for(opened.wait(), timeout=15)

        # The 14-day assessment indicator needs 10 cases before it can breach.
        indicator = f"regions/{REGION}/indicators/need-assessment-14d"
        breach = await api.breach_until_opened(REGION, indicator, PROVIDER)
        event_id, alert = await asyncio.wait_for(alerts.get(), timeout=15)
        stream.cancel()
        assert alert["breach"]["name"] == breach  # type: ignore[index]
        assert alert["kind"] == "ALERT_KIND_OPENED"
        assert alert["breach"].get("value", 0) == 0  # type: ignore[attr-defined]  # proto3 JSON omits 0

        # Reconnecting with the id seen before it gives the same alert again, and nothing else first.
        resumed: asyncio.Queue[tuple[str, dict[str, object]]] = asyncio.Queue()
        again = asyncio.create_task(collect_alerts(api, REGION, resumed, str(int(event_id) - 1)))
        replay_id, replay = await asyncio.wait_for(resumed.get(), timeout=15)
        again.cancel()
        assert (replay_id, replay["name"]) == (event_id, alert["name"])

        supervisor = api.auth(Role.SUPERVISOR, REGION)
        acknowledged = await client.post(f"/v1/{alert['name']}:acknowledge", json={}, headers=supervisor)
        assert acknowledged.status_code == 200, acknowledged.text
        assert acknowledged.json()["acknowledgeTime"]
        listed = await client.get(f"/v1/regions/{REGION}/alerts", headers=supervisor)
        assert [a["acknowledgeTime"] for a in listed.json()["alerts"]] == [
            acknowledged.json()["acknowledgeTime"]
        ]
