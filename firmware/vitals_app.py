"""Vitals board application (KX-VS300): pulse oximeter and IR thermometer -> kiosk link messages.

One I2C bus carries both parts, at 100 kHz (the MLX90614's SMBus limit). A SpO2 measurement
starts when the resident rests a finger on the probe (the MAX30102 driver sees the IR level
rise); a temperature measurement when the resident presses the "measure" button. Both the
button and the MAX30102's INT line (A_FULL: 17 samples waiting) are pins with falling-edge
IRQs whose handlers only set a flag; the loop does the work, and also services the FIFO every
_FIFO_POLL_MS so a missed edge costs nothing. Every driver outcome becomes a READING or a
typed DEVICE_ERROR message.
"""

import gc
import select
import time

import kiosk_link as link
import spo2_max30102 as spo2
import temp_mlx90614 as thermo
from hal import Pin, irq_source, pollable, service_irqs
from link_client import open_client

try:
    from micropython import const
except ImportError:

    def const(value):
        return value


MODEL = "KX-VS300"
FIRMWARE_VERSION = "0.1.0"
# A link slot holds this board's largest message, a reading of 2 fields.
_FRAME_CAPACITY = link.frame_size(link.reading_size(2))

# Board wiring (ESP32 DevKit numbering; the unix port's simulated bus uses the same numbers).
BOARD = {
    "i2c": 0,  # I2C peripheral shared by both parts
    "scl": 22,
    "sda": 21,
    "i2c_freq": 100000,  # SMBus limit of the MLX90614
    "spo2_int": 4,  # MAX30102 INT: open drain, active low, pulled up
    "button": 5,  # "measure" push button to ground, pulled up
}

_TICK_MS = const(20)
_FIFO_POLL_MS = const(40)  # < 17 samples at 100/s even when the INT edge is missed
_DEBOUNCE_MS = const(300)

_IRQ_SPO2 = const(0)
_IRQ_BUTTON = const(1)
_pending = bytearray(2)  # set by the IRQ handlers, cleared by the loop


def _on_spo2_int(pin):
    _pending[_IRQ_SPO2] = 1


def _on_button(pin):
    _pending[_IRQ_BUTTON] = 1


_SPO2_ERRORS = {
    spo2.NO_FINGER: link.ERROR_NO_FINGER,
    spo2.NOT_FOUND: link.ERROR_SENSOR_NOT_FOUND,
    spo2.UNUSABLE: link.ERROR_MOTION,  # no regular pulse: ask the resident to keep still
}
_TEMPERATURE_ERRORS = {
    thermo.NOT_FOUND: link.ERROR_SENSOR_NOT_FOUND,
    thermo.FAULT: link.ERROR_SENSOR_FAULT,
    thermo.AMBIENT_OUT_OF_RANGE: link.ERROR_TEMPERATURE,
}


def spo2_payload(spo2_percent, pulse, flags, device_time=0):
    """Driver result -> READING payload (SpO2 in %, pulse in /min, both exponent 0)."""
    link_flags = 0
    if flags & spo2.FLAG_LOW_PERFUSION:
        link_flags |= link.FLAG_LOW_PERFUSION
    if flags & spo2.FLAG_BELOW_RANGE:
        link_flags |= link.FLAG_BELOW_RANGE
    return link.encode_reading(
        link.KIND_SPO2,
        link_flags,
        device_time,
        ((link.FIELD_SPO2, spo2_percent, 0), (link.FIELD_PULSE_RATE, pulse, 0)),
    )


def temperature_payload(centi_celsius, device_time=0):
    """Object temperature in centi-degC -> READING payload (exponent -2: exact)."""
    return link.encode_reading(
        link.KIND_TEMPERATURE, 0, device_time, ((link.FIELD_BODY_TEMPERATURE, centi_celsius, -2),)
    )


class _Counts:
    """Driver counters last logged, so each overflow is logged once."""

    overflows = 0
    restarts = 0


def _spo2_event(oximeter, event, backlog, seen, log, device_time):
    if oximeter.overflows != seen.overflows:
        restarted = oximeter.restarts != seen.restarts
        log(
            "spo2 fifo overflow #%d (%d+ samples lost)%s"
            % (oximeter.overflows, oximeter.lost_samples, ", window restarted" if restarted else "")
        )
        seen.overflows = oximeter.overflows
        seen.restarts = oximeter.restarts
    if event == spo2.NONE:
        return
    if event == spo2.RESULT:
        payload = spo2_payload(oximeter.spo2, oximeter.pulse, oximeter.flags, device_time)
        backlog.append((link.MSG_READING, payload))
        log("spo2 %d%% pulse %d flags %x" % (oximeter.spo2, oximeter.pulse, oximeter.flags))
    elif event == spo2.FOUND:
        log("spo2 sensor ready")
    else:
        code = _SPO2_ERRORS[event]
        backlog.append((link.MSG_DEVICE_ERROR, link.encode_device_error(link.KIND_SPO2, code)))
        log("spo2 error %d" % code)


def _measure_temperature(thermometer, backlog, log, device_time):
    status = thermometer.measure()
    if status == thermo.OK:
        backlog.append((link.MSG_READING, temperature_payload(thermometer.object, device_time)))
        log("temperature %d cC (ambient %d cC)" % (thermometer.object, thermometer.ambient))
        return
    code = _TEMPERATURE_ERRORS[status]
    backlog.append((link.MSG_DEVICE_ERROR, link.encode_device_error(link.KIND_TEMPERATURE, code)))
    log("temperature error %d" % code)


def run(link_uart, i2c, device_id, max_ms=None, log=print, journal_path=None):
    """Main loop; returns after max_ms (tests) or never (board).

    With `journal_path` (a file on the board's flash), unacked readings survive a reboot.
    """
    # The drivers first: the oximeter's sample windows want free space in one piece.
    oximeter = spo2.Max30102(i2c)
    thermometer = thermo.Mlx90614(i2c)
    client, journal_caps = open_client(link_uart, journal_path, log=log, frame_capacity=_FRAME_CAPACITY)
    # The hello's boot id is the link session id (LinkClient.hello puts it there).
    capabilities = (
        link.capability_of_kind(link.KIND_SPO2)
        | link.capability_of_kind(link.KIND_TEMPERATURE)
        | link.CAP_TIME_SYNC
        | journal_caps
    )
    client.hello(link.encode_hello(client.session_id, device_id, MODEL, FIRMWARE_VERSION, capabilities))
    Pin(BOARD["spo2_int"], Pin.IN, Pin.PULL_UP).irq(_on_spo2_int, Pin.IRQ_FALLING)
    Pin(BOARD["button"], Pin.IN, Pin.PULL_UP).irq(_on_button, Pin.IRQ_FALLING)
    poller = select.poll()
    poller.register(pollable(link_uart), select.POLLIN)
    source = irq_source()
    if source is not None:
        poller.register(source, select.POLLIN)
    backlog = []  # messages waiting for room in the link ring
    seen = _Counts()
    started = time.ticks_ms()
    last_fifo = time.ticks_add(started, -_FIFO_POLL_MS)
    last_press = time.ticks_add(started, -_DEBOUNCE_MS)
    wait = 0
    while max_ms is None or time.ticks_diff(time.ticks_ms(), started) < max_ms:
        poller.ipoll(min(wait, _TICK_MS))  # ipoll: no list of events built each turn
        service_irqs()
        now = time.ticks_ms()
        if _pending[_IRQ_SPO2] or time.ticks_diff(now, last_fifo) >= _FIFO_POLL_MS:
            _pending[_IRQ_SPO2] = 0
            last_fifo = now
            _spo2_event(oximeter, oximeter.service(), backlog, seen, log, client.device_time())
        if _pending[_IRQ_BUTTON]:
            _pending[_IRQ_BUTTON] = 0
            if time.ticks_diff(now, last_press) >= _DEBOUNCE_MS:
                last_press = now
                _measure_temperature(thermometer, backlog, log, client.device_time())
        while backlog and client.has_room():
            msg_type, payload = backlog[0]
            if client.send(msg_type, payload) is None:
                break  # a message leaves the backlog only into the link ring
            backlog.pop(0)
        wait = client.poll()
    return client


# Loading the modules above leaves garbage between the code they keep. Collected now, before the
# caller (main.py) makes its UART and I2C objects, those fill the holes instead of splitting the
# free space at the top of the heap, where run() needs room in one piece for the sample windows.
gc.collect()
