"""The one-command demo: a resident's blood pressure from MicroPython firmware to the FHIR record.

Everything runs for real on this machine: an embedded MQTT broker (amqtt), the bridge and the
gateway as their own processes, the BP board firmware on the MicroPython unix port, and a
simulated cuff module and serial cable on pseudo-terminals. The 4G link is down at first.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.panel import Panel

from contract.wire import RESIDENT_ID_SYSTEMS
from simulators.chain import REPO_ROOT, Chain, free_port, port_open, wait_for
from simulators.residents import BloodPressure

RESIDENT = ("health-record", "330781-2026-000123")
OPERATOR = "doctor-wang"


def run_demo(workdir: Path | None = None, *, keep_running: bool = False) -> int:
    console = Console()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="kiosk-demo-"))
    broker_port = free_port()
    chain = Chain(workdir=workdir, broker_port=broker_port)
    broker: subprocess.Popen[bytes] | None = None
    started = time.monotonic()
    try:
        console.rule("[bold]Kiosk edge demo: one blood-pressure check, offline first")
        console.print(f"working directory: {workdir}")
        chain.provision()
        console.print(
            f"[green]✓[/] provisioned gateway [bold]{chain.gateway_id}[/]"
            " and enrolled its key with the bridge"
        )
        console.print(
            "[green]✓[/] made an admin token for the bridge's HTTP API "
            "(kiosk-bridge token add demo --role admin): every request but /healthz and /metrics needs it"
        )
        chain.start_bridge()
        chain.start_gateway()
        chain.start_firmware()
        device = chain.wait_until_device_connected()
        console.print(
            f"[green]✓[/] firmware on MicroPython said hello: {device['device']['id']} "
            f"({device['device']['model']} firmware {device['device']['firmware']})"
        )
        console.print("[yellow]![/] 4G link is [bold]down[/]: no MQTT broker reachable")

        chain.check_in(*RESIDENT, operator=OPERATOR)
        console.print(
            f"[green]✓[/] {OPERATOR} checked in resident (health record {RESIDENT[1][:4]}…{RESIDENT[1][-4:]})"
        )
        chain.cuff.measure(BloodPressure(systolic=128, diastolic=82, pulse=71))
        console.print("  cuff inflating … resident measured 128/82 mmHg, pulse 71")
        status = chain.wait_for_outbox(
            lambda o: o["stored"] + o["batched"] >= 1, timeout=30, what="the reading in the outbox"
        )
        console.print(
            f"[green]✓[/] reading stored durably on the gateway; waiting to sync: "
            f"{status['outbox']['stored'] + status['outbox']['batched']}, link up: {status['link_up']}"
        )

        console.print("[cyan]…[/] 4G link comes back: starting the broker")
        broker = subprocess.Popen(
            [sys.executable, "-m", "simulators.embedded_broker", "--port", str(broker_port)],
            cwd=REPO_ROOT,
            stdout=open(workdir / "logs" / "broker.log", "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        wait_for(lambda: port_open(broker_port), timeout=30, what="the embedded broker")
        status = chain.wait_for_outbox(lambda o: o["synced"] >= 1, timeout=60, what="the bridge's ack")
        console.print(
            f"[green]✓[/] bridge acknowledged seq {status['sync']['last_ack_seq']}: reading marked synced"
        )

        system = RESIDENT_ID_SYSTEMS[RESIDENT[0]]
        params = {"subject:identifier": f"{system}|{RESIDENT[1]}"}
        bundle = chain.bridge_get("/fhir/Observation", **params)
        url = (
            f"http://127.0.0.1:{chain.bridge_port}/fhir/Observation?subject:identifier={system}|{RESIDENT[1]}"
        )
        bp = next(
            e["resource"] for e in bundle["entry"] if e["resource"]["code"]["coding"][0]["code"] == "85354-9"
        )
        console.print(
            Panel(
                json.dumps(bp, indent=2, ensure_ascii=False),
                title="FHIR R4 Observation (blood pressure panel)",
            )
        )
        console.print(f"searchset Bundle with {bundle['total']} Observation(s), fetched from:\n  {url}")
        console.print(
            "with the demo's token, e.g.:\n"
            f"  curl -s -H 'Authorization: Bearer {chain.bridge_token}' '{url}'\n"
            f"  curl -s http://127.0.0.1:{chain.bridge_port}/metrics   (Prometheus text, no token)",
            highlight=False,
            soft_wrap=True,
        )
        console.print(
            f"[bold green]demo finished in {time.monotonic() - started:.1f}s[/] — logs in {workdir / 'logs'}"
        )
        if keep_running:
            console.print(
                f"services keep running: the record at the URL above, the gateway's status at "
                f"http://127.0.0.1:{chain.gateway_api_port}/api/status — Ctrl-C to stop"
            )
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                console.print("stopping")
        return 0
    except Exception as exc:
        console.print(f"[bold red]demo failed:[/] {exc}")
        for name in ("firmware", "gateway", "bridge"):
            console.print(Panel(chain.log(name)[-3000:] or "(empty)", title=f"{name} log (tail)"))
        return 1
    finally:
        chain.close()
        if broker is not None:
            broker.terminate()
            broker.wait(10)
