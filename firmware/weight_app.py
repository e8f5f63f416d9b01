"""Body-weight scale board application: HX711 samples -> one READING per resident on the platform.

A resident steps on (the load passes `min_load_100g`, 2.0 kg); when the last second of samples
(the scale's window) is stable, its median goes out as one READING, kind weight, FIELD_BODY_WEIGHT
in kg with exponent -1 (72.4 kg is (724, -1)). A resident who never settles is weighed after
`unstable_after_ms` with FLAG_UNSTABLE: the median of a swaying second is still the best value,
and the flag says it did not settle. Nothing more is sent until the load drops below
`off_load_100g` (the resident stepped off), so standing there does not repeat the reading.

While the platform is empty and stable, the zero follows slow drift (within `zero_track_100g`;
the first zeroing after boot may move it up to `zero_range_100g` from the factory zero, so a
resident already standing there at boot is weighed against the factory zero, not tared away).
An empty platform reading more than `zero_range_100g` below the factory zero is a mechanical
fault (ERROR_SENSOR_FAULT): the board stops weighing until it reads within range again.
Faults (see weight_hx711) become DEVICE_ERROR messages, once per episode; a fault during a
weighing cancels it. A config that cannot be parsed leaves the board unable to weigh: it says
so with ERROR_SENSOR_FAULT instead of weighing with a wrong calibration.
"""

import select
import time

import kiosk_link as link
from hal import irq_source, pollable, service_irqs
from link_client import open_client
from weight_hx711 import (
    DEFAULTS,
    FAULT_OVERLOAD,
    FAULT_SATURATED_LOW,
    FAULT_STUCK_LOW,
    FAULT_TIMEOUT,
    UPDATE_FAULT,
    UPDATE_SAMPLE,
    Hx711,
    Scale,
    parse_config,
)

try:
    from micropython import const
except ImportError:

    def const(value):
        return value


MODEL = "KX-WS200"
FIRMWARE_VERSION = "0.1.0"
# A link slot holds this board's largest message, a reading of 1 field.
_FRAME_CAPACITY = link.frame_size(link.reading_size(1))

_FAULT_ERRORS = {
    FAULT_TIMEOUT: link.ERROR_SENSOR_TIMEOUT,
    FAULT_STUCK_LOW: link.ERROR_SENSOR_FAULT,
    FAULT_OVERLOAD: link.ERROR_OVERLOAD,
    FAULT_SATURATED_LOW: link.ERROR_SENSOR_FAULT,
}

_EMPTY = const(0)
_ON = const(1)
_DONE = const(2)


def reading_payload(weight_100g, flags=0, device_time=0):
    return link.encode_reading(
        link.KIND_WEIGHT, flags, device_time, ((link.FIELD_BODY_WEIGHT, weight_100g, -1),)
    )


def load_config(path, log=print):
    """The scale's calibration file ('name = integer' lines, on flash) -> config dict.

    No path: the nominal factory calibration (weight_hx711.DEFAULTS). A path that cannot be
    read or parsed: None, and the board refuses to weigh rather than guess.
    """
    if path is None:
        return DEFAULTS
    try:
        with open(path) as file:
            return parse_config(file.read())
    except (OSError, ValueError) as exc:
        log("scale config %s unusable: %s" % (path, exc))
        return None


class Weigher:
    """Step on, settle, one reading, step off."""

    def __init__(self, scale, config, clock, log=print):
        self.scale = scale
        self.clock = clock  # -> seconds since 1970, 0 when the board's clock is not set
        self.log = log
        self._min_load = config["min_load_100g"]
        self._off_load = config["off_load_100g"]
        self._zero_track = config["zero_track_100g"]
        self._zero_range = config["zero_range_100g"]
        self._unstable_after = config["unstable_after_ms"]
        self.state = _EMPTY
        self.on_since = 0
        self.zeroed = False
        self.zero_fault = False
        self.alarm = 0  # a link ERROR_* for the app to send (it clears it)

    def sample(self, now):
        """After a new sample: a READING payload when a weight is due, else None."""
        scale = self.scale
        state = self.state
        if state == _EMPTY:
            if scale.stable:
                offset = scale.to_100g(scale.median - scale.factory_zero)
                if offset < -self._zero_range and not self.zero_fault:
                    # The empty platform reads far below its factory zero (a cell or its
                    # mounting gave way): every weight would be that much light.
                    self.zero_fault = True
                    self.alarm = link.ERROR_SENSOR_FAULT
                    self.log("empty platform %d (x0.1 kg) below its zero range" % offset)
                elif self.zero_fault and -self._zero_range <= offset <= self._zero_range:
                    self.zero_fault = False  # the empty platform reads near zero again
            if self.zero_fault:
                return None
            if scale.latest > self._min_load:
                self.state = _ON
                self.on_since = now
            elif scale.stable:
                self._track_zero()
            return None
        if scale.latest < self._off_load:
            self.state = _EMPTY
            return None
        if state == _ON and scale.weight > self._min_load:
            if scale.stable:
                self.state = _DONE
                self.log("weight %d (x0.1 kg) stable" % scale.weight)
                return reading_payload(scale.weight, 0, self.clock())
            if scale.full() and time.ticks_diff(now, self.on_since) >= self._unstable_after:
                self.state = _DONE
                self.log("weight %d (x0.1 kg) did not settle" % scale.weight)
                return reading_payload(scale.weight, link.FLAG_UNSTABLE, self.clock())
        return None

    def _track_zero(self):
        scale = self.scale
        limit = self._zero_track if self.zeroed else self._zero_range
        if -limit <= scale.weight <= limit and scale.zero_here():
            self.zeroed = True

    def fault(self):
        if self.state == _ON:
            self.state = _DONE  # no reading from this weighing; wait for the platform to empty


def run(
    link_uart,
    sck,
    dout,
    device_id,
    config_path=None,
    max_ms=None,
    log=print,
    reset_hold_ms=1,
    journal_path=None,
):
    """Main loop; returns after max_ms (tests) or never (board).

    `reset_hold_ms`: how long PD_SCK is held high to power-cycle the HX711 at boot (> 60 us).
    With `journal_path` (a file on the board's flash), unacked readings survive a reboot.
    """
    config = load_config(config_path, log)
    client, journal_caps = open_client(link_uart, journal_path, log=log, frame_capacity=_FRAME_CAPACITY)
    capabilities = link.capability_of_kind(link.KIND_WEIGHT) | link.CAP_TIME_SYNC | journal_caps
    client.hello(link.encode_hello(client.session_id, device_id, MODEL, FIRMWARE_VERSION, capabilities))
    poller = select.poll()
    poller.register(pollable(link_uart), select.POLLIN)
    events = irq_source()
    if events is not None:
        poller.register(events, select.POLLIN)
    backlog = []
    scale = weigher = None
    if config is None:
        backlog.append(
            (link.MSG_DEVICE_ERROR, link.encode_device_error(link.KIND_WEIGHT, link.ERROR_SENSOR_FAULT))
        )
    else:
        adc = Hx711(sck, dout)
        adc.reset(reset_hold_ms)
        scale = Scale(adc, config)
        scale.begin(time.ticks_ms())
        weigher = Weigher(scale, config, client.device_time, log)
    started = time.ticks_ms()
    wait = 0
    while max_ms is None or time.ticks_diff(time.ticks_ms(), started) < max_ms:
        poller.poll(min(wait, 20))
        service_irqs()
        if scale is not None:
            now = time.ticks_ms()
            update = scale.update(now)
            if update == UPDATE_SAMPLE:
                payload = weigher.sample(now)
                if payload is not None:
                    backlog.append((link.MSG_READING, payload))
                elif weigher.alarm:
                    backlog.append(
                        (link.MSG_DEVICE_ERROR, link.encode_device_error(link.KIND_WEIGHT, weigher.alarm))
                    )
                    weigher.alarm = 0
            elif update == UPDATE_FAULT:
                weigher.fault()
                log("scale fault %d" % scale.fault)
                code = _FAULT_ERRORS.get(scale.fault, link.ERROR_SENSOR_FAULT)
                backlog.append((link.MSG_DEVICE_ERROR, link.encode_device_error(link.KIND_WEIGHT, code)))
        while backlog and client.has_room():
            msg_type, payload = backlog[0]
            if client.send(msg_type, payload) is None:
                break  # kept for the next turn: a message leaves the backlog only into the ring
            backlog.pop(0)
        wait = client.poll()
    return weigher
