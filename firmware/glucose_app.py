"""Glucose board application: strip-meter events and stored records -> kiosk link messages.

Every result the meter produces becomes one READING (kind glucose, FIELD_GLUCOSE as mantissa
mmol/L x 10 with exponent -1, so 5.2 mmol/L travels as (52, -1) and is never a float). The
meter's own clock time goes in the reading when the meter has one, so a record downloaded later
keeps the time it was measured; a live result from a meter without a clock gets the board's
time (from the gateway's TIME_SYNC), a downloaded one 0 (unknown).

HI and LO. A meter shows "HI" when the blood glucose is above what it can measure and "LO"
when below; the true value is unknown. Recording the meter's limit as if it were the value
would be clinically false (a HI is not 33.3 mmol/L; it may be 40). The gateway's profile
requires the glucose field, so the reading carries the meter's limit (33.3 or 1.1) together
with FLAG_ABOVE_RANGE or FLAG_BELOW_RANGE: the value is a bound, and downstream code must write
"> 33.3 mmol/L" / "< 1.1 mmol/L" whenever the flag is set. The limit is taken from the meter's
documented range, not from the payload, so a HI can never carry some other number.
Control-solution tests (the village doctor checking the meter and strips) carry
FLAG_CONTROL_SOLUTION: they are not the resident's blood and must not enter the health record.
A result outside the meter's range without HI/LO, or with both, is a meter fault
(ERROR_SENSOR_FAULT), not a reading.

Meal context (fasting / after a meal, chosen on the meter) travels as FLAG_FASTING /
FLAG_AFTER_MEAL: the fasting-glucose threshold only applies to fasting results.

Stored records. After boot, after every result, after a corrupt frame (it may have been a
result) and every `sync_ms`, the board asks the meter for its newest record index and downloads,
one at a time and only while the link ring has room, every record newer than the last one it
handed to the link. Live results that follow on directly are sent at once; any gap is filled by
the download, in index order, so nothing is sent twice and nothing is skipped. The index is kept
in `state_path` (flash on a board). With a link journal (`journal_path`) it is written as soon
as every record up to it is on flash in the journal, which resends unacked records after a
reboot under their original link seq, so the gateway stores each once. Without a journal it is
written only when the link ring is empty (every record up to it acked): a reboot may then resend
the records of an unfinished batch, but never loses one. A meter whose counter went backwards (memory
cleared, or a different meter plugged in) is downloaded from its oldest record.
"""

import select
import time

import kiosk_link as link
from glucose_meter import (
    EVENT_BAD_FRAME,
    EVENT_COUNTDOWN,
    EVENT_ERROR,
    EVENT_INFO,
    EVENT_NO_RECORD,
    EVENT_RECORD,
    EVENT_RESULT,
    EVENT_STRIP_IN,
    FLAG_AFTER_MEAL,
    FLAG_CONTROL,
    FLAG_FASTING,
    FLAG_HI,
    FLAG_LO,
    RANGE_HIGH,
    RANGE_LOW,
    GlucoseMeter,
)
from hal import pollable
from link_client import open_client

try:
    from micropython import const
except ImportError:

    def const(value):
        return value


MODEL = "KX-GLU100"
FIRMWARE_VERSION = "0.1.0"
# A link slot holds this board's largest message, a reading of 1 field.
_FRAME_CAPACITY = link.frame_size(link.reading_size(1))

_METER_ERRORS = {1: link.ERROR_STRIP, 2: link.ERROR_TEMPERATURE, 3: link.ERROR_SAMPLE_INSUFFICIENT}

_IDLE = const(0)
_WAIT_INFO = const(1)
_WAIT_RECORD = const(2)
_REPLY_MS = const(500)
_TRIES = const(3)


def reading_payload(glucose, meter_flags, device_time=0):
    """A meter result -> READING payload, or None when the result is not a valid value."""
    flags = link.FLAG_CONTROL_SOLUTION if meter_flags & FLAG_CONTROL else 0
    if meter_flags & FLAG_FASTING:
        flags |= link.FLAG_FASTING
    if meter_flags & FLAG_AFTER_MEAL:
        flags |= link.FLAG_AFTER_MEAL
    hi = meter_flags & FLAG_HI
    lo = meter_flags & FLAG_LO
    if hi and lo:
        return None
    if hi:
        flags |= link.FLAG_ABOVE_RANGE
        glucose = RANGE_HIGH
    elif lo:
        flags |= link.FLAG_BELOW_RANGE
        glucose = RANGE_LOW
    elif not RANGE_LOW <= glucose <= RANGE_HIGH:
        return None
    return link.encode_reading(link.KIND_GLUCOSE, flags, device_time, ((link.FIELD_GLUCOSE, glucose, -1),))


def meter_error_code(code):
    """Meter E-n -> link ERROR_*; an unknown E-code is reported as a sensor fault."""
    return _METER_ERRORS.get(code, link.ERROR_SENSOR_FAULT)


def load_last_index(path):
    if path is None:
        return 0
    try:
        with open(path) as file:
            return int(file.read().strip())
    except (OSError, ValueError):
        return 0  # no file yet, or a torn write: download everything the meter holds


def save_last_index(path, index, log):
    if path is None:
        return
    try:
        with open(path, "w") as file:
            file.write("%d\n" % index)
    except OSError as exc:
        log("glucose: cannot save last index: %s" % exc)


class GlucoseBoard:
    """The board's state between loop turns: what was sent, what the meter holds, what to ask."""

    def __init__(self, client, meter, state_path=None, sync_ms=10000, log=print):
        self.client = client
        self.meter = meter
        self.state_path = state_path
        self.sync_ms = sync_ms
        self.log = log
        self.backlog = []  # messages waiting for room in the link ring
        self.last = load_last_index(state_path)  # last record index handed to the link
        self.saved = self.last
        self.newest = 0
        self.wanted = 0  # next record to download, 0 = none
        self.waiting = _IDLE
        self.due = 0
        self.tries = 0
        self.want_info = True
        self.next_info = time.ticks_ms()
        self.meter_silent = False

    # meter events ------------------------------------------------------------------------
    def handle(self, event):
        meter = self.meter
        if event != EVENT_BAD_FRAME:
            self.meter_silent = False
        if event == EVENT_RESULT:
            self.log(
                "glucose result #%d: %d (x0.1 mmol/L) flags %02x" % (meter.index, meter.glucose, meter.flags)
            )
            if self.waiting == _IDLE and not self.wanted and self.last and meter.index == self.last + 1:
                self._queue_record(meter.time or self.client.device_time())
            else:
                self.want_info = True  # the download sends it, in order, after what is missing
        elif event == EVENT_ERROR:
            self.log("glucose meter E-%d" % meter.code)
            self._queue_error(meter_error_code(meter.code))
        elif event == EVENT_INFO:
            if self.waiting == _WAIT_INFO:
                self.waiting = _IDLE
                self._plan(meter.newest, meter.count)
        elif event == EVENT_RECORD or event == EVENT_NO_RECORD:
            if self.waiting == _WAIT_RECORD and meter.index == self.wanted:
                self.waiting = _IDLE
                if event == EVENT_RECORD:
                    self._queue_record(meter.time)
                else:
                    self.log("glucose record #%d is gone from the meter" % meter.index)
                    self.last = meter.index
                self.wanted = self.last + 1 if self.last < self.newest else 0
        elif event == EVENT_BAD_FRAME:
            self.want_info = True  # a lost frame may have been a result: the memory still has it
        elif event == EVENT_STRIP_IN:
            self.log("glucose strip inserted")
        elif event == EVENT_COUNTDOWN:
            self.log("glucose countdown %d" % meter.countdown)

    def _plan(self, newest, count):
        self.newest = newest
        if newest == 0 or count == 0:
            return
        oldest = newest - count + 1
        if self.last > newest or self.last < oldest - 1:
            if self.last:
                self.log(
                    "glucose meter memory moved (last sent #%d, meter holds #%d..#%d)"
                    % (self.last, oldest, newest)
                )
            start = oldest
        else:
            start = self.last + 1
        if start <= newest:
            self.wanted = start

    def _queue_record(self, device_time):
        meter = self.meter
        payload = reading_payload(meter.glucose, meter.flags, device_time)
        if payload is None:
            self.log("glucose record #%d has no valid value" % meter.index)
            self._queue_error(link.ERROR_SENSOR_FAULT)
        else:
            self.backlog.append((link.MSG_READING, payload))
        self.last = meter.index

    def _queue_error(self, code):
        self.backlog.append((link.MSG_DEVICE_ERROR, link.encode_device_error(link.KIND_GLUCOSE, code)))

    # requests to the meter ---------------------------------------------------------------
    def drive(self, now):
        meter = self.meter
        if self.waiting != _IDLE:
            if time.ticks_diff(now, self.due) < 0:
                return
            self.tries += 1
            if self.tries >= _TRIES:
                # Give up until the next periodic sync, which plans the download afresh.
                self.waiting = _IDLE
                self.wanted = 0
                self.want_info = False
                self.next_info = time.ticks_add(now, self.sync_ms)
                if not self.meter_silent:
                    self.meter_silent = True
                    self.log("glucose meter does not answer")
                    self._queue_error(link.ERROR_SENSOR_TIMEOUT)
                return
            if self.waiting == _WAIT_INFO:
                meter.request_info()
            else:
                meter.request_record(self.wanted)
            self.due = time.ticks_add(now, _REPLY_MS)
            return
        if self.wanted:
            if not self.backlog and self.client.has_room():
                meter.request_record(self.wanted)
                self._await(_WAIT_RECORD, now)
        elif self.want_info or time.ticks_diff(now, self.next_info) >= 0:
            self.want_info = False
            self.next_info = time.ticks_add(now, self.sync_ms)
            meter.request_info()
            self._await(_WAIT_INFO, now)

    def _await(self, what, now):
        self.waiting = what
        self.tries = 0
        self.due = time.ticks_add(now, _REPLY_MS)

    # link ----------------------------------------------------------------------------------
    def flush(self):
        client = self.client
        while self.backlog and client.has_room():
            msg_type, payload = self.backlog[0]
            if client.send(msg_type, payload) is None:
                break  # kept for the next turn: a message leaves the backlog only into the ring
            self.backlog.pop(0)
        handed_over = client.pending() == 0 or client.journaled  # acked, or on flash to be resent
        if self.last != self.saved and not self.backlog and handed_over:
            save_last_index(self.state_path, self.last, self.log)
            self.saved = self.last


def run(link_uart, meter_uart, device_id, state_path=None, max_ms=None, log=print, sync_ms=10000,
        journal_path=None):  # fmt: skip
    """Main loop; returns after max_ms (tests) or never (board)."""
    client, journal_caps = open_client(link_uart, journal_path, log=log, frame_capacity=_FRAME_CAPACITY)
    meter = GlucoseMeter(meter_uart)
    board = GlucoseBoard(client, meter, state_path, sync_ms, log)
    capabilities = link.capability_of_kind(link.KIND_GLUCOSE) | link.CAP_TIME_SYNC | journal_caps
    client.hello(link.encode_hello(client.session_id, device_id, MODEL, FIRMWARE_VERSION, capabilities))
    poller = select.poll()
    poller.register(pollable(link_uart), select.POLLIN)
    poller.register(pollable(meter_uart), select.POLLIN)
    started = time.ticks_ms()
    wait = 0
    while max_ms is None or time.ticks_diff(time.ticks_ms(), started) < max_ms:
        poller.poll(min(wait, 50))
        while True:
            event = meter.poll()
            if event is None:
                break
            board.handle(event)
        board.drive(time.ticks_ms())
        board.flush()
        wait = client.poll()
    return board
