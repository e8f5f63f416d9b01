"""The MAX30102 FIFO read path allocates nothing (run by tests/component/test_firmware_vitals.py).

micropython tests/micropython/vitals_heap.py REPO_ROOT BUS_SOCKET

The test serves a MAX30102 model with a finger already on it. This script sets the part up,
lets the driver reach its measuring window, then calls read_fifo() (bus transactions, FIFO
decoding, the per-sample state machine, storing into the window) with the heap locked: any
allocation raises MemoryError. It prints one line the test parses:
    heap-locked reads=R samples=S stored=N result=SPO2/PULSE
"""

import sys

ROOT = sys.argv[1]
sys.path.insert(0, ROOT + "/firmware")
sys.path.insert(0, ROOT + "/firmware/host")

import time  # noqa: E402

import hal_unix  # noqa: E402
import micropython  # noqa: E402
import spo2_max30102 as spo2  # noqa: E402


def heap_lock_works():
    """Control: on this build an allocation under heap_lock must fail."""
    micropython.heap_lock()
    try:
        bytearray(16)
    except MemoryError:
        return True
    finally:
        micropython.heap_unlock()
    return False


def main():
    hal_unix.attach_bus(sys.argv[2])
    sensor = spo2.Max30102(hal_unix.I2C(0))
    assert sensor.service() == spo2.FOUND
    assert heap_lock_works(), "heap_lock does not catch allocations on this build"
    # Warm up outside the lock: finger seen, settling done, window started.
    deadline = time.ticks_add(time.ticks_ms(), 5000)
    while sensor.state != spo2.STATE_MEASURING or sensor.index < 20:
        sensor.read_fifo()
        time.sleep_ms(5)
        assert time.ticks_diff(deadline, time.ticks_ms()) > 0, "never reached the window"
    first = sensor.index
    reads = 0
    samples = 0
    micropython.heap_lock()
    try:
        while sensor.state == spo2.STATE_MEASURING and sensor.index < 300:
            samples += sensor.read_fifo()
            reads += 1
            time.sleep_ms(5)
    finally:
        micropython.heap_unlock()
    stored = sensor.index - first
    event = spo2.NONE
    deadline = time.ticks_add(time.ticks_ms(), 5000)
    while event == spo2.NONE and time.ticks_diff(deadline, time.ticks_ms()) > 0:
        event = sensor.service()
        time.sleep_ms(5)
    result = "%d/%d" % (sensor.spo2, sensor.pulse) if event == spo2.RESULT else "event%d" % event
    print("heap-locked reads=%d samples=%d stored=%d result=%s" % (reads, samples, stored, result))


main()
