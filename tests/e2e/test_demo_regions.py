"""`kasvu demo` against a running suite works in regions of its own, a fresh pair per run, and
leaves the regions a user works in untouched."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from kasvuctl.demo import main
from kasvuctl.localsuite import LocalSuite
from services.runtime.auth import Role
from tests.e2e.flows import SERVICE

pytestmark = pytest.mark.e2e

USERS_REGIONS = ("pirkanmaa", "uusimaa")


async def test_each_demo_run_names_regions_of_its_own_and_leaves_the_users_alone(
    sqlite_suite: LocalSuite, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["--gateway", sqlite_suite.gateway_url, "--data-dir", str(sqlite_suite.data_dir)]
    runs = []
    for _ in range(2):
        assert await asyncio.to_thread(main, arguments) == 0, capsys.readouterr()
        out = capsys.readouterr().out
        named = re.search(r"regions of its own, (demo-[a-z0-9]+) and (demo-[a-z0-9]+-other)", out)
        assert named, out
        runs.append(named.groups())
        assert "Demo complete." in out

    assert len({region for pair in runs for region in pair}) == 4
    async with httpx.AsyncClient(base_url=sqlite_suite.gateway_url) as client:
        for region in USERS_REGIONS:
            admin = {"Authorization": f"Bearer {sqlite_suite.token(Role.REGION_ADMIN, region)}"}
            terms = await client.get(f"/v1/regions/{region}/services/{SERVICE}/terms/1", headers=admin)
            assert terms.status_code == 404, terms.text
            listed = await client.get(f"/v1/regions/{region}/services/{SERVICE}/providers")
            assert listed.json().get("providers", []) == []
            breaches = await client.get(f"/v1/regions/{region}/breaches", headers=admin)
            assert breaches.json().get("breaches", []) == []
        demo_terms = await client.get(
            f"/v1/regions/{runs[0][0]}/services/{SERVICE}/terms/1",
            headers={"Authorization": f"Bearer {sqlite_suite.token(Role.REGION_ADMIN, runs[0][0])}"},
        )
        assert demo_terms.status_code == 200, demo_terms.text
