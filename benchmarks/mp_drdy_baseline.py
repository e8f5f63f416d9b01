"""Raw baseline for the ECG DRDY service figure: the bare minimum a handler does, nothing more.

micropython benchmarks/mp_drdy_baseline.py FIRMWARE_DIR BUS_SOCKET SECONDS

The part is started by the real driver (so it runs exactly as for the app), then the DRDY
interrupt is given a handler that only clocks the 9-byte frame out: no ring, no timing, no link.
The loop services interrupts for SECONDS. What the chip counts as read late here is the host's
share; what the app adds over it is ours.
"""

import select
import sys
import time

FIRMWARE = sys.argv[1]
sys.path.insert(0, FIRMWARE)
sys.path.insert(0, FIRMWARE + "/host")

import hal_unix  # noqa: E402
from ecg_ads1292r import FAULT_NONE, Ads1292r  # noqa: E402
from hal import SPI, Pin, irq_source, service_irqs  # noqa: E402


def main():
    hal_unix.attach_bus(sys.argv[2])
    seconds = int(sys.argv[3])
    spi = SPI(1, baudrate=1000000, polarity=0, phase=1)
    cs = Pin(5, Pin.OUT, value=1)
    drdy = Pin(4, Pin.IN, Pin.PULL_UP)
    afe = Ads1292r(spi, cs, drdy, ring_size=16)
    if afe.start() != FAULT_NONE:
        print("baseline: part did not start")
        return
    zeros = bytearray(9)
    frame = bytearray(9)
    read = [0]

    def bare(_pin):
        cs.value(0)
        spi.write_readinto(zeros, frame)
        cs.value(1)
        read[0] += 1

    drdy.irq(bare, drdy.IRQ_FALLING)
    poller = select.poll()
    poller.register(irq_source(), select.POLLIN)
    started = time.ticks_ms()
    while time.ticks_diff(time.ticks_ms(), started) < seconds * 1000:
        poller.ipoll(100)
        service_irqs()
    print("read %d" % read[0])


main()
