"""Unix-port entry point: run the BP board application on pseudo-terminals.

micropython firmware/host/run_bp.py LINK_TTY CUFF_TTY DEVICE_ID [BAUD [JOURNAL_FILE]]
"""

import sys

sys.path.insert(0, sys.argv[0].rsplit("/", 2)[0])  # firmware/
sys.path.insert(0, sys.argv[0].rsplit("/", 1)[0])  # firmware/host/

import bp_app  # noqa: E402
from hal import UART  # noqa: E402


def main():
    link_path, cuff_path, device_id = sys.argv[1], sys.argv[2], sys.argv[3]
    baud = int(sys.argv[4]) if len(sys.argv) > 4 else 115200
    link_uart = UART(link_path, baud)
    cuff_uart = UART(cuff_path, 9600)
    print("firmware %s %s up as %s" % (bp_app.MODEL, bp_app.FIRMWARE_VERSION, device_id))
    journal = sys.argv[5] if len(sys.argv) > 5 else None
    bp_app.run(link_uart, cuff_uart, device_id, journal_path=journal)


main()
