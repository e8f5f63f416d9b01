"""Unix-port entry point: run the ECG board application on a pty and the simulated board bus.

micropython firmware/host/run_ecg.py LINK_TTY BUS_SOCKET DEVICE_ID [BAUD] [MAX_MS]

BUS_SOCKET is where simulators/bus_server.py serves the ADS1292R model (SPI, CS and DRDY pins).
MAX_MS, for tests, ends the run after that long and prints the final counters.
"""

import sys

sys.path.insert(0, sys.argv[0].rsplit("/", 2)[0])  # firmware/
sys.path.insert(0, sys.argv[0].rsplit("/", 1)[0])  # firmware/host/

import ecg_app  # noqa: E402
import hal_unix  # noqa: E402
from hal import SPI, UART, Pin  # noqa: E402

# The simulated board's wiring: the ESP32 reference pins (firmware/boards/esp32.py), SPI bus 1
# on the simulated bus. simulators/chips/ads1292r.py uses the same numbers by default.
SPI_BUS = 1
SPI_BAUD = 1000000  # SPI mode 1: polarity 0, phase 1
PIN_CS = 5
PIN_DRDY = 4


def main():
    link_path, bus_path, device_id = sys.argv[1], sys.argv[2], sys.argv[3]
    baud = int(sys.argv[4]) if len(sys.argv) > 4 else 921600
    max_ms = int(sys.argv[5]) if len(sys.argv) > 5 else None
    hal_unix.attach_bus(bus_path)
    link_uart = UART(link_path, baud)
    spi = SPI(SPI_BUS, baudrate=SPI_BAUD, polarity=0, phase=1)
    cs = Pin(PIN_CS, Pin.OUT, value=1)
    drdy = Pin(PIN_DRDY, Pin.IN, Pin.PULL_UP)
    print("firmware %s %s up as %s" % (ecg_app.MODEL, ecg_app.FIRMWARE_VERSION, device_id))
    ecg_app.run(link_uart, spi, cs, drdy, device_id, max_ms=max_ms)


main()
