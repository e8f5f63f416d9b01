"""The end-to-end tests' chain: provisioned, on a running Mosquitto, closed after the test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from simulators.chain import Chain
from tests.conftest import Mosquitto


@pytest.fixture
def running_broker_chain(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[Chain]:
    chain = Chain(workdir=tmp_path / "chain", broker_port=mosquitto.port)
    chain.provision()
    try:
        yield chain
    finally:
        chain.close()
