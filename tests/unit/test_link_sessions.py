"""Link sessions on the MicroPython interpreter: no message before the hello is acked, a new
session only after the old one drained, a rejected hello asked again only after a minute."""

from __future__ import annotations

import pytest

from tests.conftest import run_on_micropython


@pytest.mark.micropython
def test_link_session_rules_on_micropython() -> None:
    assert "3 passed, 0 failed" in run_on_micropython("link_sessions.py")
