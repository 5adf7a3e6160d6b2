"""`kasvu demo`: the whole loop against a suite the demo starts itself, and its failure messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from kasvuctl.demo import fresh_business_id, main
from kasvuctl.localsuite import free_port
from services.runtime.auth import generate_keypair
from services.runtime.domain import validate_business_id


@pytest.mark.e2e
def test_demo_runs_the_loop_against_its_own_local_suite(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--local"])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "ADMITTED" in out
    assert "SUSPENDED" in out
    assert "QUALITY_BREACH" in out
    assert "stream received alert" in out
    assert "Demo complete." in out


def test_an_unreachable_gateway_gets_a_hint_not_a_traceback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    generate_keypair(tmp_path / "keys")
    # A port just freed: nothing listens there.
    code = main(["--gateway", f"http://127.0.0.1:{free_port()}", "--data-dir", str(tmp_path)])
    _, err = capsys.readouterr()
    assert code == 1
    assert "is `make run` running?" in err


def test_a_missing_private_key_is_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(["--data-dir", str(tmp_path)])
    _, err = capsys.readouterr()
    assert code == 1
    assert str(tmp_path / "keys") in err


def test_fresh_business_ids_are_valid_and_differ() -> None:
    ids = {fresh_business_id() for _ in range(50)}
    assert len(ids) > 45
    assert all(validate_business_id(i) == i for i in ids)
