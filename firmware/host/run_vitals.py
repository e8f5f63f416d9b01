"""Unix-port entry point: run the vitals board application on a pty and the simulated bus.

micropython firmware/host/run_vitals.py LINK_TTY BUS_SOCKET DEVICE_ID [BAUD [JOURNAL]]

LINK_TTY is the board's end of the serial cable to the gateway; BUS_SOCKET is the Unix socket
of simulators/bus_server.py serving the MAX30102 and MLX90614 models and the board's pins;
JOURNAL is the file standing in for the board's flash journal of unacked readings.
"""

import sys

sys.path.insert(0, sys.argv[0].rsplit("/", 2)[0])  # firmware/
sys.path.insert(0, sys.argv[0].rsplit("/", 1)[0])  # firmware/host/

import hal_unix  # noqa: E402
import vitals_app  # noqa: E402
from hal import I2C, UART  # noqa: E402


def main():
    link_path, bus_path, device_id = sys.argv[1], sys.argv[2], sys.argv[3]
    baud = int(sys.argv[4]) if len(sys.argv) > 4 else 115200
    journal_path = sys.argv[5] if len(sys.argv) > 5 else None
    hal_unix.attach_bus(bus_path)
    link_uart = UART(link_path, baud)
    board = vitals_app.BOARD
    i2c = I2C(board["i2c"], freq=board["i2c_freq"])
    print("firmware %s %s up as %s" % (vitals_app.MODEL, vitals_app.FIRMWARE_VERSION, device_id))
    vitals_app.run(link_uart, i2c, device_id, journal_path=journal_path)


main()
