"""Tell systemd how the gateway is doing (sd_notify), so `Type=notify` and `WatchdogSec=` work.

systemd starts the gateway with $NOTIFY_SOCKET (a unix datagram socket; a name starting with "@" is
in the abstract namespace) and, with `WatchdogSec=`, $WATCHDOG_USEC. READY=1 tells it the gateway
is up (units ordered after it start then); WATCHDOG=1 must come more often than the watchdog
interval or systemd kills and restarts the gateway, which is how a hung gateway gets restarted.
Outside systemd (a terminal, the tests, the demo) $NOTIFY_SOCKET is unset and all of this does
nothing. Written on `socket` rather than the unmaintained `sdnotify` package: it is this small.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

__all__ = ["Notifier", "watchdog_forever", "watchdog_interval_s"]

log = logging.getLogger(__name__)


class Notifier:
    """Sends state lines to the service manager; a no-op when not started by one."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # "@name" is Linux's abstract namespace, spelled with a leading NUL byte on the wire.
        self._address: bytes | None = (
            (b"\0" + os.fsencode(address[1:]) if address.startswith("@") else os.fsencode(address))
            if address
            else None
        )

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *lines: str) -> bool:
        """Send `lines` as one datagram; True if it was sent. A failure is logged, never raised:
        the gateway must keep storing readings even when it cannot talk to its supervisor."""
        if self._address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(lines).encode(), self._address)
        except OSError as exc:
            log.warning("systemd notify %s failed: %s", lines[0].split("=", 1)[0], exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        """One line `systemctl status` shows, e.g. why the gateway is about to be restarted."""
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")


def watchdog_interval_s(environ: Mapping[str, str] | None = None) -> float | None:
    """How often to ping: half of $WATCHDOG_USEC (systemd's advice), None when the watchdog is off
    or meant for another process ($WATCHDOG_PID names the process it watches)."""
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
        pid = int(env.get("WATCHDOG_PID", str(os.getpid())))
    except ValueError:
        return None
    if usec <= 0 or pid != os.getpid():
        return None
    return usec / 2_000_000


async def watchdog_forever(
    check: Callable[[], bool],
    *,
    notifier: Notifier | None = None,
    interval_s: float | None = None,
) -> None:
    """Ping the watchdog while `check()` passes; stop pinging while it fails, so systemd restarts a
    gateway whose event loop hangs or whose work has stopped. Returns at once without a watchdog."""
    notifier = notifier if notifier is not None else Notifier()
    interval_s = interval_s if interval_s is not None else watchdog_interval_s()
    if not notifier.enabled or interval_s is None:
        return
    healthy = True
    while True:
        if check():
            if not healthy:
                log.warning("health check passes again; pinging the systemd watchdog again")
                notifier.status("running")
            healthy = True
            notifier.watchdog()
        elif healthy:
            healthy = False
            log.error("health check failed: no more watchdog pings, systemd will restart this service")
            notifier.status("health check failed: waiting for the watchdog to restart the service")
        await asyncio.sleep(interval_s)
