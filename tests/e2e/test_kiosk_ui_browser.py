"""The kiosk screen in a real browser (headless Chromium from Debian, driven by Playwright) on
the whole chain: Mosquitto, the bridge, the gateway, and the blood-pressure, glucose and ECG
boards' firmware on the MicroPython unix port with their simulated sensors.

A village doctor signs in, checks a resident in (after a mistyped ID-card number is refused),
and watches the readings arrive: the BP's crisis flag and referral, the glucose flag, the ECG
strip drawn, a refused reading. The screen switches to English and remembers it. The broker
stops (the 4G link is down): the sync bar says offline and a new reading waits; the broker
returns: the waiting count falls to 0.

A vehicle crew, with the 4G link down all morning, imports the township's list (GBK CSV with a
mistyped number), adds a resident by hand, skips one, checks one in from the queue in one tap;
the cuff finds a hypertensive crisis, the screen offers the chronic-disease follow-up with
hypertension ticked; a missing answer is named; the saved follow-up shows in the visit; checking
out returns to the queue with its progress. Back in coverage, the follow-up reaches the bridge
as a FHIR QuestionnaireResponse. Screenshots go to tests/artifacts/kiosk_ui/.
"""

from __future__ import annotations

import contextlib
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
CREW, CREW_NAME, CREW_PIN = "crew-zhou", "周师傅", "735194"
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


@contextlib.contextmanager
def chromium_page(failure_shot: str) -> Iterator[Page]:
    """A page in headless Chromium as a kiosk's screen shows it (zh-CN); a screenshot of it goes
    to `failure_shot` in the artifacts if the test fails."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 1000}, locale="zh-CN")
        page = context.new_page()
        try:
            yield page
        except BaseException:
            page.screenshot(path=str(ARTIFACTS / failure_shot), full_page=True)
            raise
        finally:
            context.close()
            browser.close()


@pytest.fixture
def page(kiosk: Kiosk) -> Iterator[Page]:
    with chromium_page("failure.png") as kiosk_page:
        yield kiosk_page


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


# --- a vehicle's day of outreach ------------------------------------------------------------------

HEALTH_RECORD = "330781-2026-000123"
TOWNSHIP_CSV = (
    "姓名,身份证号,健康档案号,村\n"
    f"张三,{ID_CARD},,东村\n"
    f"李四,,{HEALTH_RECORD},西村\n"
    f"王五,{ID_CARD_TYPO},,西村\n"  # mistyped at the township: refused, the others come in
    "赵六,,330781-2026-000456,南村\n"
)


@pytest.fixture
def vehicle(tmp_path: Path, stopped_mosquitto: Mosquitto) -> Iterator[Chain]:
    """The chain with the blood-pressure board; the broker stays down (no 4G) until the test says."""
    chain = Chain(workdir=tmp_path / "chain", broker_port=stopped_mosquitto.port)
    try:
        chain.provision()
        subprocess.run(
            [sys.executable, "-m", "gateway.cli", "operator", "add", CREW, "--name", CREW_NAME,
             "--role", "crew", "--pin-stdin", "--config", str(chain.gateway_config)],
            input=f"{CREW_PIN}\n".encode(), check=True, cwd=REPO_ROOT, capture_output=True,
        )  # fmt: skip
        chain.start_bridge()
        chain.start_gateway()
        chain.start_firmware()
        wait_for(
            lambda: any(p["device"] for p in chain.gateway_get("/api/status")["peripherals"]),
            timeout=60,
            what="the BP board's hello at the gateway",
        )
        yield chain
    finally:
        chain.close()


@pytest.fixture
def vehicle_page(vehicle: Chain) -> Iterator[Page]:
    with chromium_page("vehicle-failure.png") as crew_page:
        yield crew_page


def shot(p: Page, name: str) -> None:
    p.evaluate("window.scrollTo(0, 0)")  # the sticky sync bar on top, not half-way down the image
    p.screenshot(path=str(ARTIFACTS / name), full_page=True)


def answer(p: Page, link_id: str, value: str) -> None:
    p.check(f'#followup-items fieldset[data-link-id="{link_id}"] input[value="{value}"]')


def test_a_crew_works_the_days_queue_offline_and_records_a_followup(
    vehicle: Chain, vehicle_page: Page, stopped_mosquitto: Mosquitto
) -> None:
    p, chain = vehicle_page, vehicle
    p.goto(f"http://127.0.0.1:{chain.gateway_api_port}/")
    expect(p.locator("#link-state")).to_have_attribute("data-state", "offline", timeout=15_000)
    p.fill("#signin-operator", CREW)
    p.fill("#signin-pin", CREW_PIN)
    p.click("#signin-form button[type=submit]")
    # A crew member lands on the day's queue, empty this morning.
    expect(p.locator("section[data-view=queue]")).to_be_visible()
    expect(p.locator("#queue-empty")).to_be_visible()

    # The township's list, as Excel saves it on a Chinese Windows (GBK).
    p.set_input_files(
        "#queue-file",
        files=[
            {"name": "东村巡诊名单.csv", "mimeType": "text/csv", "buffer": TOWNSHIP_CSV.encode("gb18030")}
        ],
    )
    p.click("#queue-import-form button[type=submit]")
    expect(p.locator("#queue-imported")).to_have_text("已导入 3 人；1 行未导入")
    expect(p.locator("#queue-rejected li")).to_have_text("第 4 行（王五）：身份证号校验位不对，请逐位核对")
    expect(p.locator("#queue-table tbody tr")).to_have_count(3)

    # One more by hand; one not at home today is skipped.
    p.fill("#queue-name", "孙八")
    p.fill("#queue-village", "北村")
    p.fill("#queue-value", "330781-2026-000789")
    p.click("#queue-add-form button[type=submit]")
    expect(p.locator("#queue-table tbody tr")).to_have_count(4)
    expect(p.locator("#queue-table tbody tr").nth(3)).to_contain_text("孙八")
    p.locator('#queue-table tbody tr:has-text("赵六") button[data-action=skip]').click()
    expect(p.locator('#queue-table tbody tr:has-text("赵六") td.state')).to_have_text("跳过")
    expect(p.locator("#queue-progress")).to_have_text("已查 0 / 4 人 · 等待 3 · 跳过 1")
    expect(p.locator("#queue-table")).not_to_contain_text(ID_CARD)  # numbers masked
    expect(p.locator("#queue-table tbody tr").first).to_contain_text("1101**********002X身份证")
    shot(p, "06-queue-zh.png")

    # One tap checks 张三 in; the cuff finds a crisis; the follow-up is offered, hypertension due.
    p.locator('#queue-table tbody tr:has-text("张三") button[data-action=checkin]').click()
    expect(p.locator("section[data-view=check]")).to_be_visible()
    expect(p.locator("#resident")).to_contain_text("1101**********002X")
    chain.cuff.measure(BloodPressure(systolic=182, diastolic=115, pulse=88))
    expect(p.locator('#live .alert[data-rule="hypertensive_crisis"]')).to_be_visible(timeout=30_000)
    expect(p.locator("#followup-due-text")).to_contain_text("属高血压管理对象", timeout=15_000)
    p.click("#open-followup")
    expect(p.locator("#followup-title")).to_have_text("高血压、2型糖尿病患者随访")
    conditions = '#followup-items fieldset[data-link-id="conditions"]'
    expect(p.locator(f'{conditions} input[value="hypertension"]')).to_be_checked()
    expect(p.locator(f'{conditions} input[value="diabetes"]')).not_to_be_checked()
    expect(
        p.locator('#followup-items fieldset[data-link-id="visit_mode"] input[value="home"]')
    ).to_be_checked()
    expect(p.locator('#followup-items fieldset[data-link-id="hypoglycaemia_reaction"]')).to_be_hidden()

    answer(p, "symptoms", "headache_dizziness")
    answer(p, "smoker", "true")  # the daily cigarettes question appears
    cigarettes = p.locator('#followup-items fieldset[data-link-id="cigarettes_per_day"]')
    expect(cigarettes).to_be_visible()
    answer(p, "drinker", "false")
    p.fill('#followup-items fieldset[data-link-id="exercise_times_per_week"] input', "3")
    answer(p, "salt_intake", "heavy")
    answer(p, "psychological_adjustment", "good")
    answer(p, "compliance", "fair")
    answer(p, "medication_adherence", "intermittent")
    answer(p, "adverse_drug_reaction", "false")
    p.click("#followup-form button[type=submit]")
    expect(p.locator("#message")).to_have_text("请回答：日吸烟量")  # the missing answer, named
    expect(cigarettes).to_have_class("question invalid")
    cigarettes.locator("input").fill("10")
    shot(p, "07-followup-zh.png")
    p.click("#followup-form button[type=submit]")
    expect(p.locator("#message")).to_have_text("随访问卷已保存，将与测量结果一起上传")
    saved = p.locator("#live .reading[data-kind=questionnaire] .values")
    expect(saved).to_contain_text("服药依从性：间断", timeout=15_000)
    expect(saved).to_contain_text("日吸烟量：10 支/日")
    expect(p.locator("#followup-due-text")).to_have_text("本次已完成高血压随访")
    expect(p.locator("#followup-last")).to_contain_text("上次随访")
    # The reading and the follow-up both wait on the kiosk for the link.
    wait_for(lambda: chain.gateway_get("/api/status")["waiting"] == 2, timeout=10, what="two waiting")
    expect(p.locator("#waiting")).to_have_text("2", timeout=10_000)
    shot(p, "08-followup-saved-zh.png")

    # Checking out returns to the queue: 张三 checked, the progress moved; in English too.
    p.click("#checkout")
    expect(p.locator("section[data-view=queue]")).to_be_visible()
    expect(p.locator('#queue-table tbody tr:has-text("张三") td.state')).to_have_text("已查")
    expect(p.locator("#queue-progress")).to_have_text("已查 1 / 4 人 · 等待 2 · 跳过 1")
    p.select_option("#lang", "en")
    expect(p.locator("#queue-progress")).to_have_text("1 of 4 checked · 2 waiting · 1 skipped")
    expect(p.locator('#queue-table tbody tr:has-text("赵六") button[data-action=unskip]')).to_have_text(
        "Put back"
    )
    expect(p.locator("#queue-imported")).to_have_text("3 imported; 1 row(s) not imported")
    expect(p.locator('#queue-table tbody tr:has-text("张三") button[data-action=checkin]')).to_have_text(
        "Check in again"
    )
    shot(p, "09-queue-en.png")
    assert chain.gateway_get("/api/status")["link_up"] is False  # all of it offline

    # Back in coverage: the reading and the follow-up reach the record.
    stopped_mosquitto.start()
    expect(p.locator("#waiting")).to_have_text("0", timeout=60_000)
    subject = f"urn:kiosk:sid:resident-id-card|{ID_CARD}"
    bundle = chain.bridge_get("/fhir/QuestionnaireResponse", **{"subject:identifier": subject})
    [response] = [entry["resource"] for entry in bundle["entry"]]
    answers = {item["linkId"]: item["answer"] for item in response["item"]}
    assert answers["medication_adherence"][0]["valueCoding"]["code"] == "intermittent"
    assert answers["cigarettes_per_day"] == [{"valueInteger": 10}]
    assert answers["visit_mode"][0]["valueCoding"]["code"] == "home"
    assert response["author"]["identifier"]["value"] == f"{chain.gateway_id}/{CREW}"
