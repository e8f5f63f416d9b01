"""Unix-port entry point: run the weight-scale board application on a pty and the simulated bus.

micropython firmware/host/run_weight.py LINK_TTY BUS_SOCKET DEVICE_ID [BAUD [CONFIG [JOURNAL]]]

BUS_SOCKET is where simulators/bus_server.py serves the HX711 model. CONFIG is the scale's
calibration file ('name = integer' lines, see weight_hx711.DEFAULTS); on a board it lives on
flash, as does JOURNAL (unacked readings kept across a reboot; CONFIG '-' for none). Each
simulated bus transaction takes about 0.1 ms, so the simulated HX711 stretches its 60 us
power-down threshold, and the reset here holds PD_SCK high long enough for it.
"""

import sys

sys.path.insert(0, sys.argv[0].rsplit("/", 2)[0])  # firmware/
sys.path.insert(0, sys.argv[0].rsplit("/", 1)[0])  # firmware/host/

import hal_unix  # noqa: E402
import weight_app  # noqa: E402
from hal import UART, Pin  # noqa: E402

PIN_DOUT = 4
PIN_SCK = 5  # the pins simulators/chips/hx711.py listens on
RESET_HOLD_MS = 100  # the simulated HX711 powers down after 50 ms high (a board: 1 ms is plenty)


def main():
    link_path, bus_path, device_id = sys.argv[1], sys.argv[2], sys.argv[3]
    baud = int(sys.argv[4]) if len(sys.argv) > 4 else 115200
    config_path = sys.argv[5] if len(sys.argv) > 5 and sys.argv[5] != "-" else None
    journal_path = sys.argv[6] if len(sys.argv) > 6 else None
    link_uart = UART(link_path, baud)
    hal_unix.attach_bus(bus_path)
    sck = Pin(PIN_SCK, Pin.OUT, value=0)
    dout = Pin(PIN_DOUT, Pin.IN, Pin.PULL_UP)
    print("firmware %s %s up as %s" % (weight_app.MODEL, weight_app.FIRMWARE_VERSION, device_id))
    weight_app.run(
        link_uart, sck, dout, device_id, config_path, reset_hold_ms=RESET_HOLD_MS, journal_path=journal_path
    )


main()
