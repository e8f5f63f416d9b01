"""The end-to-end tests' chain: provisioned, on a running Mosquitto, closed after the test."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from simulators.chain import Chain
from tests.conftest import Mosquitto


@contextmanager
def provisioned_chain(tmp_path: Path, broker: Mosquitto) -> Iterator[Chain]:
    """A provisioned chain on `broker` (running or not yet), closed afterwards."""
    chain = Chain(workdir=tmp_path / "chain", broker_port=broker.port)
    chain.provision()
    try:
        yield chain
    finally:
        chain.close()


@pytest.fixture
def running_broker_chain(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[Chain]:
    with provisioned_chain(tmp_path, mosquitto) as chain:
        yield chain


@pytest.fixture
def stopped_broker_chain(tmp_path: Path, stopped_mosquitto: Mosquitto) -> Iterator[Chain]:
    """The 4G link is down at first: the test starts the broker when it wants the link back."""
    with provisioned_chain(tmp_path, stopped_mosquitto) as chain:
        yield chain
