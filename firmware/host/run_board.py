"""Unix-port entry point of a board that takes firmware over the kiosk link: its boot.py and main.py.

micropython firmware/host/run_board.py FLASH_DIR APP DEVICE_ID [--trial-boots N]
    [--trial-deadline-ms MS] NAME=VALUE ...

FLASH_DIR is the board's flash: the process's working directory and the only place board modules
are imported from (what was installed: .mpy files, firmware.json, ...), so a version switched in
by an update runs after the next reset. Each NAME=VALUE is a keyword of APP's run():
`uart:PATH:BAUD` opens that pty as a UART (hal_unix.UART), anything else is passed as a string.

First what the generated boot.py does on a board (firmware/build.py `boot_source`):
`updater.boot()` counts a boot of a version on trial, or rolls it back once it used its boots up.
On trial, a thread stands in for the board's hardware timer: if the trial is still unconfirmed
at the deadline, it ends the process (SIGTERM), which is this port's reset. Then what main.py
does: start APP. The process also ends when the app resets the board (hal_unix.reset, after a
committed update) or crashes; simulators/link_board.py starts it again, as a reset would.

The bundle's main.py is not run here: it builds the board's buses from `machine`, which the unix
port does not have; this file stands in for it.
"""

import os
import sys
import time

_HOST = sys.argv[0].rsplit("/", 1)[0]
if not _HOST.startswith("/"):
    _HOST = os.getcwd() + "/" + _HOST


def _arguments(argv):
    flash, app, device_id = argv[0], argv[1], argv[2]
    boots, deadline_ms, options = 2, 60000, {}
    rest = argv[3:]
    while rest:
        item = rest.pop(0)
        if item == "--trial-boots":
            boots = int(rest.pop(0))
        elif item == "--trial-deadline-ms":
            deadline_ms = int(rest.pop(0))
        else:
            name, value = item.split("=", 1)
            options[name] = value
    return flash, app, device_id, boots, deadline_ms, options


def _deadline(updater, ms):
    time.sleep_ms(ms)
    if updater.exists(updater.TRIAL):
        print("trial deadline passed without a hello acked: reset")
        os.system("kill -TERM $PPID")  # the shell's parent is this process


def _boot(boots, deadline_ms):
    try:
        try:
            import updater
        except Exception:  # the installed version's updater does not load: the previous one's
            sys.path.insert(0, "prev")
            import updater

            sys.path.pop(0)
        if updater.boot(boots) == updater.ON_TRIAL:
            import _thread

            _thread.start_new_thread(_deadline, (updater, deadline_ms))
    except Exception as exc:  # never keep the application from starting
        sys.print_exception(exc)


def main():
    flash, app_name, device_id, boots, deadline_ms, options = _arguments(sys.argv[1:])
    os.chdir(flash)
    while sys.path:
        sys.path.pop()
    sys.path.append("")  # the flash: what is installed there is what runs
    sys.path.append(_HOST)  # hal_unix, sim_bus: the host's stand-ins for the board's hardware
    _boot(boots, deadline_ms)

    from hal_unix import UART

    kwargs = {}
    for name, value in options.items():
        if value.startswith("uart:"):
            _, path, baud = value.split(":")
            kwargs[name] = UART(path, int(baud))
        else:
            kwargs[name] = value
    app = __import__(app_name)
    print("firmware %s %s up as %s" % (app.MODEL, app.FIRMWARE_VERSION, device_id))
    app.run(device_id=device_id, **kwargs)


main()
