"""Link sessions on the MicroPython interpreter: no message before the hello is acked, a new
session only after the old one drained, a rejected hello asked again only after a minute."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from simulators.chain import micropython_binary

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.micropython
def test_link_session_rules_on_micropython() -> None:
    result = subprocess.run(
        [micropython_binary(), str(ROOT / "tests" / "micropython" / "link_sessions.py"), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed, 0 failed" in result.stdout
