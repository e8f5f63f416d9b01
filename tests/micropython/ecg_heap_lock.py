"""The ECG sample path allocates nothing: the DRDY handler and take() run under heap_lock().

micropython tests/micropython/ecg_heap_lock.py REPO_ROOT BUS_SOCKET SAMPLES

Run by tests/component/test_firmware_ecg.py with the ADS1292R model served on BUS_SOCKET. After
start-up (which may allocate), the heap is locked and the driver
1. streams SAMPLES samples: pin IRQs serviced, frames read into the ring, take() drains them;
2. is left undrained for longer than its ring holds, so the IRQ takes the overrun path, then
   drained again past the frames dropped, whose periods take() hands out as a gap;
3. is held off for 20 ms (no IRQ serviced): with the chip's grace at 0, frames are overwritten,
   queued edges run back to back (the DRDY-level check finds them spurious) and the late-frame
   question is opened and answered.
Any allocation raises MemoryError. The last line printed is the verdict:
    ecg heap-lock OK taken T overruns O gaps G spurious S
    ecg heap-lock FAIL <why>
"""

import select
import sys
import time

import micropython

ROOT = sys.argv[1]
sys.path.insert(0, ROOT + "/firmware")
sys.path.insert(0, ROOT + "/firmware/host")

import hal_unix  # noqa: E402
from ecg_ads1292r import FAULT_NONE, Ads1292r  # noqa: E402
from hal import SPI, Pin, irq_source, service_irqs  # noqa: E402

RING = 64
CHUNK = 40


def stream(poller, afe, out, wanted):
    """Service DRDY and drain until `wanted` samples were taken; returns the count."""
    taken = 0
    while taken < wanted:
        poller.ipoll(100)
        service_irqs()
        taken += afe.take(out, 0, CHUNK)
    return taken


def starve(poller, afe, overruns):
    """Service DRDY without draining until the ring has overrun `overruns` times (or 5 s passed)."""
    target = afe.overruns + overruns
    started = time.ticks_ms()
    while afe.overruns < target and time.ticks_diff(time.ticks_ms(), started) < 5000:
        poller.ipoll(100)
        service_irqs()


def hold_off(ms):
    """Busy-wait without servicing IRQs: the DRDY edges queue up."""
    started = time.ticks_ms()
    while time.ticks_diff(time.ticks_ms(), started) < ms:
        pass


def main():
    hal_unix.attach_bus(sys.argv[2])
    wanted = int(sys.argv[3])
    spi = SPI(1, baudrate=1000000, polarity=0, phase=1)
    cs = Pin(5, Pin.OUT, value=1)
    drdy = Pin(4, Pin.IN, Pin.PULL_UP)
    afe = Ads1292r(spi, cs, drdy, ring_size=RING)
    fault = afe.start()
    if fault != FAULT_NONE:
        print("ecg heap-lock FAIL start fault %d id %r" % (fault, afe.device_id))
        return
    out = [0] * (2 * CHUNK)
    poller = select.poll()
    poller.register(irq_source(), select.POLLIN)
    stream(poller, afe, out, 50)  # warm-up, allowed to allocate (first calls, caches)
    phase = "streaming"
    taken = 0
    micropython.heap_lock()
    try:
        taken = stream(poller, afe, out, wanted)
        phase = "overrun"
        starve(poller, afe, 40)
        phase = "drain after overrun"
        taken += stream(poller, afe, out, RING + 10)  # past the ring: the gap of the overrun
        phase = "held off"
        hold_off(20)
        taken += stream(poller, afe, out, 100)  # 50 ms of frames answer the late-frame question
        micropython.heap_unlock()
    except MemoryError:
        micropython.heap_unlock()
        print("ecg heap-lock FAIL allocation while %s after %d samples" % (phase, taken))
        return
    print(
        "ecg heap-lock OK taken %d overruns %d gaps %d spurious %d"
        % (taken, afe.overruns, afe.gaps, afe.spurious)
    )


main()
