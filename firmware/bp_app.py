"""Blood-pressure board application: cuff driver events -> kiosk link messages."""

import select
import time

import kiosk_link as link
from bp_cuff import EVENT_ERROR, EVENT_RESULT, STATUS_CUFF_LOOSE, STATUS_IRREGULAR, STATUS_MOVEMENT, BpCuff
from hal import pollable
from link_client import open_client

MODEL = "KX-BP100"
FIRMWARE_VERSION = "0.1.0"
# A link slot holds this board's largest message, a reading of 4 fields.
_FRAME_CAPACITY = link.frame_size(link.reading_size(4))

_CUFF_ERRORS = {1: link.ERROR_CUFF_LEAK, 2: link.ERROR_MOTION, 3: link.ERROR_OVER_PRESSURE}


def _flags(status):
    flags = 0
    if status & STATUS_IRREGULAR:
        flags |= link.FLAG_IRREGULAR_PULSE
    if status & STATUS_MOVEMENT:
        flags |= link.FLAG_BODY_MOVEMENT
    if status & STATUS_CUFF_LOOSE:
        flags |= link.FLAG_CUFF_LOOSE
    return flags


def reading_payload(result, device_time=0):
    """Cuff result (sys, dia, map, pulse, status) -> READING payload."""
    systolic, diastolic, mean, pulse, status = result
    return link.encode_reading(
        link.KIND_BP,
        _flags(status),
        device_time,
        (
            (link.FIELD_SYSTOLIC, systolic, 0),
            (link.FIELD_DIASTOLIC, diastolic, 0),
            (link.FIELD_MEAN_ARTERIAL, mean, 0),
            (link.FIELD_PULSE_RATE, pulse, 0),
        ),
    )


STATUS_INTERVAL_MS = 60000
MAINS_POWERED = 255


def run(link_uart, cuff_uart, device_id, max_ms=None, log=print, journal_path=None):
    """Main loop; returns after max_ms (tests) or never (board).

    With `journal_path` (a file on the board's flash), unacked readings survive a reboot.
    """
    client, journal_caps = open_client(link_uart, journal_path, log=log, frame_capacity=_FRAME_CAPACITY)
    cuff = BpCuff(cuff_uart)
    capabilities = link.capability_of_kind(link.KIND_BP) | link.CAP_TIME_SYNC | link.CAP_STATUS | journal_caps
    client.hello(link.encode_hello(client.session_id, device_id, MODEL, FIRMWARE_VERSION, capabilities))
    poller = select.poll()
    poller.register(pollable(link_uart), select.POLLIN)
    poller.register(pollable(cuff_uart), select.POLLIN)
    backlog = []  # results waiting for room in the link ring
    started = time.ticks_ms()
    last_status = time.ticks_add(started, -STATUS_INTERVAL_MS)
    wait = 0
    while max_ms is None or time.ticks_diff(time.ticks_ms(), started) < max_ms:
        poller.poll(min(wait, 50))
        for event, value in cuff.poll():
            if event == EVENT_RESULT:
                backlog.append((link.MSG_READING, reading_payload(value, client.device_time())))
                log("bp result %d/%d pulse %d" % (value[0], value[1], value[3]))
            elif event == EVENT_ERROR:
                code = _CUFF_ERRORS.get(value, link.ERROR_SENSOR_TIMEOUT)
                backlog.append((link.MSG_DEVICE_ERROR, link.encode_device_error(link.KIND_BP, code)))
                log("bp cuff error %d" % value)
        while backlog and client.has_room():
            msg_type, payload = backlog[0]
            if client.send(msg_type, payload) is None:
                break
            backlog.pop(0)
        if time.ticks_diff(time.ticks_ms(), last_status) >= STATUS_INTERVAL_MS and client.has_room():
            last_status = time.ticks_ms()
            uptime_s = time.ticks_diff(last_status, started) // 1000
            client.send(
                link.MSG_STATUS, link.encode_status(MAINS_POWERED, cuff.bad_frames & 0xFFFF, uptime_s), False
            )
        wait = client.poll()
    return client
