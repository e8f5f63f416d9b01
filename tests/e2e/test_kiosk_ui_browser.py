"""The kiosk screen in a real browser (headless Chromium from Debian, driven by Playwright) on
the whole chain: Mosquitto, the bridge, the gateway, and the blood-pressure, glucose and ECG
boards' firmware on the MicroPython unix port with their simulated sensors.

A village doctor signs in, checks a resident in (after a mistyped ID-card number is refused),
and watches the readings arrive: the BP's crisis flag and referral, the glucose flag, the ECG
strip drawn, a refused reading. The screen switches to English and remembers it. The broker
stops (the 4G link is down): the sync bar says offline and a new reading waits; the broker
returns: the waiting count falls to 0. Screenshots go to tests/artifacts/kiosk_ui/.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from simulators.chain import REPO_ROOT, Chain, micropython_binary, wait_for
from simulators.chips.ads1292r import AdsBoardProcess
from simulators.glucose_meter import SimulatedMeter
from simulators.residents import BloodPressure
from simulators.serial_cable import SerialCable
from tests.conftest import Mosquitto

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO_ROOT / "tests" / "artifacts" / "kiosk_ui"
ECG_BAUD = 921600
DOCTOR, DOCTOR_NAME, PIN = "doctor-li", "李医生", "482913"
ID_CARD = "11010519491231002X"
ID_CARD_TYPO = "110105194912310021"

pytestmark = [
    pytest.mark.mosquitto,
    pytest.mark.micropython,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (./dev test)"
    ),
]


@dataclass
class Kiosk:
    """The chain with three boards, and the simulated glucose meter and ECG front end."""

    chain: Chain
    broker: Mosquitto
    meter: SimulatedMeter
    ecg: AdsBoardProcess

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.chain.gateway_api_port}/"


def _spawn(chain: Chain, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
    with (chain.workdir / "logs" / f"{name}.log").open("ab") as log:
        return subprocess.Popen(
            argv, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


@pytest.fixture
def kiosk(tmp_path: Path, stopped_mosquitto: Mosquitto) -> Iterator[Kiosk]:
    stopped_mosquitto.start()
    chain = Chain(workdir=tmp_path / "chain", broker_port=stopped_mosquitto.port)
    glucose_cable, ecg_cable = SerialCable(), SerialCable(baudrate=ECG_BAUD)
    meter = SimulatedMeter(countdown_step_s=0.01)
    ecg = AdsBoardProcess(str(tmp_path / "ecg-bus.sock"), grace_s=0.2)
    boards: list[subprocess.Popen[bytes]] = []
    try:
        chain.provision()
        with chain.gateway_config.open("a") as config:  # the kiosk's other two boards
            config.write(f'\n[[serial]]\npath = "{glucose_cable.gateway_path}"\nbaudrate = 115200\n')
            config.write(f'\n[[serial]]\npath = "{ecg_cable.gateway_path}"\nbaudrate = {ECG_BAUD}\n')
        subprocess.run(
            [sys.executable, "-m", "gateway.cli", "operator", "add", DOCTOR, "--name", DOCTOR_NAME,
             "--role", "doctor", "--pin-stdin", "--config", str(chain.gateway_config)],
            input=f"{PIN}\n".encode(), check=True, cwd=REPO_ROOT, capture_output=True,
        )  # fmt: skip
        chain.start_bridge()
        chain.start_gateway()
        chain.start_firmware()
        firmware = REPO_ROOT / "firmware" / "host"
        boards.append(
            _spawn(chain, "glucose", [micropython_binary(), str(firmware / "run_glucose.py"),
                   glucose_cable.device_path, meter.path, "glu-0001", "115200", str(tmp_path / "glu.state")])
        )  # fmt: skip
        boards.append(
            _spawn(chain, "ecg", [micropython_binary(), str(firmware / "run_ecg.py"), ecg_cable.device_path,
                   ecg.path, "ecg-0001", str(ECG_BAUD)])
        )  # fmt: skip
        wait_for(
            lambda: sum(bool(p["device"]) for p in chain.gateway_get("/api/status")["peripherals"]) == 3,
            timeout=60,
            what="the three boards' hello at the gateway",
        )
        ecg.set_stalled(True)  # no electrodes on anybody yet
        yield Kiosk(chain, stopped_mosquitto, meter, ecg)
    finally:
        chain.stop("gateway")  # first: it holds the boards' cables
        for board in boards:
            board.kill()
            board.wait()
        chain.close()
        ecg.close()
        meter.close()
        glucose_cable.close()
        ecg_cable.close()


@pytest.fixture
def page(kiosk: Kiosk) -> Iterator[Page]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 1000}, locale="zh-CN")
        page = context.new_page()
        try:
            yield page
        except BaseException:
            page.screenshot(path=str(ARTIFACTS / "failure.png"), full_page=True)
            raise
        finally:
            context.close()
            browser.close()


# The trace's pixels (near black; the grid is pink, the paper white) on the ECG canvases that
# hold a full strip (a short one is also drawn when the recording stops): the most on any.
ECG_TRACE_PIXELS = """() => {
    let most = 0;
    for (const canvas of document.querySelectorAll("#live canvas[data-drawn=true]")) {
        if (Number(canvas.dataset.seconds) < 5) continue;
        const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
        let dark = 0;
        for (let i = 0; i < data.length; i += 4) {
            if (data[i + 3] > 0 && data[i] < 90 && data[i + 1] < 90 && data[i + 2] < 90) dark += 1;
        }
        most = Math.max(most, dark);
    }
    return most;
}"""


def test_a_doctor_checks_a_resident_in_and_sees_readings_flags_ecg_and_sync_state(
    kiosk: Kiosk, page: Page
) -> None:
    p = page
    p.goto(kiosk.url)
    # Chinese first; the sync bar shows before anyone signs in, and nothing of a resident does.
    expect(p.locator("#link-state")).to_have_text("网络已连接", timeout=15_000)
    expect(p.locator("section[data-view=signin] h1")).to_have_text("操作员登录")

    p.fill("#signin-operator", DOCTOR)
    p.fill("#signin-pin", "000000")
    p.click("#signin-form button[type=submit]")
    expect(p.locator("#message")).to_have_text("工号或密码不正确")
    p.fill("#signin-pin", PIN)
    p.click("#signin-form button[type=submit]")
    expect(p.locator("section[data-view=checkin]")).to_be_visible()
    expect(p.locator("#who")).to_have_text(f"{DOCTOR_NAME}（村医）")

    # A mistyped ID-card number is refused with the reason; the right one checks in.
    p.select_option("#checkin-system", "id-card")
    p.fill("#checkin-value", ID_CARD_TYPO)
    p.click("#checkin-form button[type=submit]")
    expect(p.locator("#message")).to_have_text("身份证号校验位不对，请逐位核对")
    p.screenshot(path=str(ARTIFACTS / "01-checkin-refused-zh.png"), full_page=True)
    p.fill("#checkin-value", ID_CARD)
    p.click("#checkin-form button[type=submit]")
    expect(p.locator("section[data-view=check]")).to_be_visible()
    expect(p.locator("#resident")).to_contain_text("1101**********002X")
    expect(p.locator("#devices li[data-state=connected]")).to_have_count(3)

    # The resident is measured: BP (a crisis), fasting glucose (raised), ECG (electrodes on).
    kiosk.chain.cuff.measure(BloodPressure(systolic=182, diastolic=115, pulse=88))
    kiosk.meter.measure(84, meal="fasting")
    kiosk.ecg.set_stalled(False)
    crisis = p.locator('#live .alert[data-rule="hypertensive_crisis"]')
    expect(crisis.locator(".text")).to_have_text(
        "紧急: 血压 182/115 mmHg — 高血压危象（3级高血压）：请当日转诊", timeout=30_000
    )
    expect(crisis.locator(".referral")).to_contain_text("建议：安静休息5分钟后复测")
    expect(p.locator("#live .reading[data-kind=bp] .values")).to_have_text("182/115 mmHg · 脉率 88 /min")
    glucose = p.locator('#live .alert[data-rule="fasting_hyperglycaemia"] .text')
    expect(glucose).to_contain_text("空腹血糖 8.4 mmol/L", timeout=30_000)
    p.wait_for_function(f"({ECG_TRACE_PIXELS})() > 1000", timeout=60_000)  # a 10 s strip, drawn
    kiosk.ecg.set_stalled(True)  # electrodes off
    expect(p.locator("#steps li[data-done=true]")).to_have_count(3)

    # A reading the gateway refuses (implausible) is said so, not silently missing.
    kiosk.chain.cuff.measure(BloodPressure(systolic=320, diastolic=82, pulse=71))
    expect(p.locator("#refused .refused")).to_contain_text(
        "网关拒收了一次血压测量：收缩压 320 mmHg 超出合理范围（40–300）", timeout=30_000
    )
    p.screenshot(path=str(ARTIFACTS / "02-readings-zh.png"), full_page=True)

    # English, remembered by the browser across a reload.
    p.select_option("#lang", "en")
    expect(crisis.locator(".text")).to_have_text(
        "Urgent: BP 182/115 mmHg — hypertensive crisis (grade 3): refer today"
    )
    p.reload()
    expect(p.locator("#link-state")).to_have_text("Online", timeout=15_000)
    expect(crisis.locator(".text")).to_contain_text(
        "hypertensive crisis (grade 3): refer today", timeout=15_000
    )
    expect(crisis.locator(".referral")).to_contain_text("Suggested: Recheck after 5 minutes' rest")
    p.wait_for_function(f"({ECG_TRACE_PIXELS})() > 1000", timeout=15_000)
    p.screenshot(path=str(ARTIFACTS / "03-readings-en.png"), full_page=True)

    # The 4G link goes down: the bar says so, and the next reading waits on the kiosk.
    kiosk.broker.stop()
    expect(p.locator("#link-state")).to_have_attribute("data-state", "offline", timeout=30_000)
    kiosk.chain.cuff.measure(BloodPressure(systolic=128, diastolic=82, pulse=71))
    expect(p.locator("#waiting")).not_to_have_text("0", timeout=30_000)
    expect(p.locator("#live .reading[data-kind=bp]")).to_have_count(2, timeout=30_000)
    p.screenshot(path=str(ARTIFACTS / "04-offline-en.png"), full_page=True)

    # The link returns: everything waiting is synced.
    kiosk.broker.start()
    expect(p.locator("#link-state")).to_have_attribute("data-state", "online", timeout=60_000)
    expect(p.locator("#waiting")).to_have_text("0", timeout=60_000)
    expect(p.locator("#live .reading .device").first).to_contain_text("synced")
    p.screenshot(path=str(ARTIFACTS / "05-synced-en.png"), full_page=True)
