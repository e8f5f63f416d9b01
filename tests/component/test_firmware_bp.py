"""The BP board firmware on the real MicroPython unix port, wired by ptys to a simulated cuff.

The test holds the gateway's end of the serial cable and speaks the link protocol itself, so
it can withhold acks, send NAKs and watch retransmissions.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest
import serial

from firmware import kiosk_link as link
from simulators.bp_cuff import SimulatedCuff
from simulators.chain import REPO_ROOT, micropython_binary
from simulators.residents import BloodPressure
from simulators.serial_cable import SerialCable
from tests.component.link_peer import GatewayEnd

pytestmark = pytest.mark.micropython


@pytest.fixture
def rig() -> Iterator[tuple[SimulatedCuff, GatewayEnd]]:
    cable, cuff = SerialCable(), SimulatedCuff(inflate_seconds=0.05)
    process = subprocess.Popen(
        [
            micropython_binary(),
            str(REPO_ROOT / "firmware/host/run_bp.py"),
            cable.device_path,
            cuff.path,
            "bp-0042",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    end = GatewayEnd(serial.Serial(cable.gateway_path, 115200, timeout=0))
    try:
        yield cuff, end
    finally:
        process.kill()
        output = process.communicate()[0].decode(errors="replace")
        assert "Traceback" not in output, output
        end.port.close()
        cuff.close()
        cable.close()


def test_hello_then_reading_with_exact_values(rig: tuple[SimulatedCuff, GatewayEnd]) -> None:
    cuff, gateway = rig
    _, hello_seq, hello = gateway.wait_for(link.MSG_HELLO)
    _, device_id, model, firmware = link.decode_hello(hello)
    assert (device_id, model, firmware) == ("bp-0042", "KX-BP100", "0.1.0")
    gateway.send(link.MSG_ACK, hello_seq)

    cuff.measure(BloodPressure(systolic=143, diastolic=91, pulse=88, irregular=True))
    _, seq, payload = gateway.wait_for(link.MSG_READING)
    assert link.decode_reading(payload) == (
        link.KIND_BP,
        link.FLAG_IRREGULAR_PULSE,
        0,
        [(link.FIELD_SYSTOLIC, 143, 0), (link.FIELD_DIASTOLIC, 91, 0), (link.FIELD_MEAN_ARTERIAL, 108, 0),
         (link.FIELD_PULSE_RATE, 88, 0)],
    )  # fmt: skip
    assert seq != hello_seq


def test_reading_is_retransmitted_until_acked(rig: tuple[SimulatedCuff, GatewayEnd]) -> None:
    cuff, gateway = rig
    _, hello_seq, _ = gateway.wait_for(link.MSG_HELLO)
    gateway.send(link.MSG_ACK, hello_seq)
    cuff.measure(BloodPressure(120, 80, 70))
    _, seq, payload = gateway.wait_for(link.MSG_READING)
    repeats = [f for f in gateway.collect(1.5) if f[0] == link.MSG_READING]
    assert len(repeats) >= 2 and all(f == (link.MSG_READING, seq, payload) for f in repeats)

    gateway.send(link.MSG_ACK, seq)
    gateway.collect(0.3)  # a retransmission may already be on the wire
    assert [f for f in gateway.collect(1.5) if f[0] == link.MSG_READING] == []


def test_nak_for_corrupt_frame_makes_it_resend_at_once(rig: tuple[SimulatedCuff, GatewayEnd]) -> None:
    cuff, gateway = rig
    _, hello_seq, _ = gateway.wait_for(link.MSG_HELLO)
    gateway.send(link.MSG_ACK, hello_seq)
    cuff.measure(BloodPressure(120, 80, 70))
    _, seq, _ = gateway.wait_for(link.MSG_READING)
    gateway.send(link.MSG_NAK, 0, link.encode_nak(link.NAK_BAD_CRC))
    started = time.monotonic()
    _, again, _ = gateway.wait_for(link.MSG_READING, timeout=2)
    assert again == seq
    assert time.monotonic() - started < 1.0  # sooner than the back-off would have


def test_gateway_restart_asks_for_hello_and_gets_the_reading_again(
    rig: tuple[SimulatedCuff, GatewayEnd],
) -> None:
    cuff, gateway = rig
    _, hello_seq, hello = gateway.wait_for(link.MSG_HELLO)
    gateway.send(link.MSG_ACK, hello_seq)
    cuff.measure(BloodPressure(120, 80, 70))
    _, seq, payload = gateway.wait_for(link.MSG_READING)
    gateway.send(link.MSG_NAK, seq, link.encode_nak(link.NAK_HELLO_REQUIRED))
    _, new_hello_seq, new_hello = gateway.wait_for(link.MSG_HELLO)
    assert new_hello == hello  # same boot: the gateway can tell it is the same board session
    gateway.send(link.MSG_ACK, new_hello_seq)
    assert gateway.wait_for(link.MSG_READING) == (link.MSG_READING, seq, payload)


def test_rejected_reading_is_not_resent(rig: tuple[SimulatedCuff, GatewayEnd]) -> None:
    cuff, gateway = rig
    _, hello_seq, _ = gateway.wait_for(link.MSG_HELLO)
    gateway.send(link.MSG_ACK, hello_seq)
    cuff.measure(BloodPressure(120, 80, 70))
    _, seq, _ = gateway.wait_for(link.MSG_READING)
    gateway.send(link.MSG_NAK, seq, link.encode_nak(link.NAK_REJECTED))
    gateway.collect(0.3)
    assert [f for f in gateway.collect(1.5) if f[0] == link.MSG_READING] == []


CUFF_FAULTS = [
    ("cuff_leak", link.ERROR_CUFF_LEAK),
    ("motion", link.ERROR_MOTION),
    ("over_pressure", link.ERROR_OVER_PRESSURE),
]


@pytest.mark.parametrize(("fault", "code"), CUFF_FAULTS)
def test_cuff_faults_become_typed_device_errors(
    rig: tuple[SimulatedCuff, GatewayEnd], fault: str, code: int
) -> None:
    cuff, gateway = rig
    _, hello_seq, _ = gateway.wait_for(link.MSG_HELLO)
    gateway.send(link.MSG_ACK, hello_seq)
    cuff.measure(fault=fault)
    _, _, payload = gateway.wait_for(link.MSG_DEVICE_ERROR)
    assert link.decode_device_error(payload) == (link.KIND_BP, code)


def test_corrupt_cuff_frame_gives_no_reading_and_the_next_one_works(
    rig: tuple[SimulatedCuff, GatewayEnd],
) -> None:
    cuff, gateway = rig
    _, hello_seq, _ = gateway.wait_for(link.MSG_HELLO)
    gateway.send(link.MSG_ACK, hello_seq)
    cuff.measure(BloodPressure(120, 80, 70), fault="corrupt_frame")
    assert [f for f in gateway.collect(1.0) if f[0] == link.MSG_READING] == []
    cuff.measure(BloodPressure(131, 84, 72))
    _, _, payload = gateway.wait_for(link.MSG_READING)
    assert link.decode_reading(payload)[3][0] == (link.FIELD_SYSTOLIC, 131, 0)
