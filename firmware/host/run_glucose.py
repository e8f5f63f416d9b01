"""Unix-port entry point: run the glucose board application on pseudo-terminals.

micropython firmware/host/run_glucose.py LINK_TTY METER_TTY DEVICE_ID [BAUD [STATE_FILE [JOURNAL_FILE]]]

STATE_FILE keeps the index of the last meter record the gateway acked (flash on a board);
without it the board downloads every record the meter holds after each start.
"""

import sys

sys.path.insert(0, sys.argv[0].rsplit("/", 2)[0])  # firmware/
sys.path.insert(0, sys.argv[0].rsplit("/", 1)[0])  # firmware/host/

import glucose_app  # noqa: E402
from hal import UART  # noqa: E402


def main():
    link_path, meter_path, device_id = sys.argv[1], sys.argv[2], sys.argv[3]
    baud = int(sys.argv[4]) if len(sys.argv) > 4 else 115200
    state_path = sys.argv[5] if len(sys.argv) > 5 else None
    journal_path = sys.argv[6] if len(sys.argv) > 6 else None
    link_uart = UART(link_path, baud)
    meter_uart = UART(meter_path, 9600)
    print("firmware %s %s up as %s" % (glucose_app.MODEL, glucose_app.FIRMWARE_VERSION, device_id))
    glucose_app.run(link_uart, meter_uart, device_id, state_path, journal_path=journal_path)


main()
