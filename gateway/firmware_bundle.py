"""Signed firmware bundles: what a technician flashes onto a kiosk's peripheral board.

A bundle holds ONE board application for ONE target: the mpy-cross output of the app's module
and of every board module it imports (found from the sources, so a blood-pressure board does
not carry the ECG driver), its `main.py` launcher from `firmware/build.py`, and a manifest.
It is one zip file (stdlib `zipfile`, readable with `unzip -l`):

    manifest.json      the signed bytes: JSON, see `MANIFEST_FIELDS`
    manifest.sig       64 bytes, Ed25519 signature of manifest.json by the release key
    files/<name>       every file the manifest lists, flat names as they go on the board

The manifest names the bundle format, the app, its model and firmware version, the target and
compiler, when it was made, the release key's id, and every file with its size and SHA-256.
The signature covers the manifest's exact bytes, and through the hashes every file.
`verify_bundle` refuses, each with its own exception and message: something that is not a
bundle (`UnknownFormat`), a bundle signed by another key (`WrongKey`), a signature that does not
match the manifest (`BadSignature`), a listed file that is absent (`MissingFile`), a file whose
bytes are not the manifest's (`FileHashMismatch`) and a file the manifest does not list
(`UnexpectedFile`).

The release key is an Ed25519 key made once by `create_release_keys` (private key 0600, kept
off the gateways); gateways and technicians' laptops hold only the public key.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import re
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from firmware.build import TARGETS, board_modules, build_target, find_mpy_cross
from gateway.errors import GatewayError
from gateway.keys import write_secret

__all__ = [
    "BUNDLE_FORMAT",
    "MANIFEST_FIELDS",
    "RELEASE_PRIVATE_KEY_FILE",
    "RELEASE_PUBLIC_KEY_FILE",
    "BadSignature",
    "Bundle",
    "BundleError",
    "FileHashMismatch",
    "MissingFile",
    "UnexpectedFile",
    "UnknownFormat",
    "WrongKey",
    "build_bundle",
    "bundle_manifest",
    "create_release_keys",
    "import_closure",
    "key_id",
    "load_private_key",
    "load_public_key",
    "pack_bundle",
    "read_bundle",
    "verify_bundle",
]

BUNDLE_FORMAT = "kiosk-edge-firmware-bundle/1"
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
FILES_PREFIX = "files/"
RELEASE_PRIVATE_KEY_FILE = "release-signing.pem"
RELEASE_PUBLIC_KEY_FILE = "release-signing.pub.pem"
MAX_BUNDLE_BYTES = 16 * 1024 * 1024  # boards have 2-16 MB of flash: anything larger is not ours
FIRMWARE_SRC = Path(__file__).resolve().parents[1] / "firmware"

# Manifest fields and their JSON types. `files` entries: path, size, sha256 (+ module).
MANIFEST_FIELDS: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "app": str,
    "model": (str, type(None)),
    "version": str,
    "target": str,
    "march": str,
    "board": str,
    "mpy_version": int,
    "mpy_cross": str,
    "created_at": str,
    "key_id": str,
    "main": str,
    "files": list,
}
# A name on the board's flash: flat, no path separators, no dot files, not our own bookkeeping.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
# The board's bookkeeping (firmware/updater.py), and its boot.py, which guards an update over the
# kiosk link and so is never replaced by one.
_RESERVED = frozenset({"firmware.json", "firmware.sig", "firmware.trial", "firmware.rolled_back", "boot.py"})
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # zip entries carry no build time: created_at is in the manifest


# --- errors -------------------------------------------------------------------------------------


class BundleError(GatewayError):
    """A firmware bundle cannot be built, read or trusted; the message says what and where."""


class UnknownFormat(BundleError):
    """Not a firmware bundle, or one of a format this gateway does not know."""


class WrongKey(BundleError):
    """Signed, but by a key other than the release key given."""

    def __init__(self, signed_by: str, expected: str) -> None:
        super().__init__(f"bundle is signed by key {signed_by}, not by the release key {expected}: refused")
        self.signed_by = signed_by
        self.expected = expected


class BadSignature(BundleError):
    """The manifest's bytes do not match its signature: the manifest was changed after signing."""


class MissingFile(BundleError):
    def __init__(self, path: str) -> None:
        super().__init__(f"file {path} is listed in the manifest but missing from the bundle: refused")
        self.path = path


class UnexpectedFile(BundleError):
    def __init__(self, path: str) -> None:
        super().__init__(f"file {path} is in the bundle but not in the signed manifest: refused")
        self.path = path


class FileHashMismatch(BundleError):
    def __init__(self, path: str, expected: str, actual: str) -> None:
        super().__init__(
            f"file {path}: its SHA-256 {actual[:16]}… does not match the signed manifest's "
            f"{expected[:16]}…: refused"
        )
        self.path = path
        self.expected = expected
        self.actual = actual


# --- keys ---------------------------------------------------------------------------------------


def create_release_keys(directory: Path) -> tuple[Path, Path]:
    """Make the release key pair (private 0600; refuses to overwrite). Returns (private, public)."""
    directory.mkdir(parents=True, exist_ok=True)
    private_path = directory / RELEASE_PRIVATE_KEY_FILE
    public_path = directory / RELEASE_PUBLIC_KEY_FILE
    if public_path.exists():
        raise FileExistsError(17, "release key exists", str(public_path))
    key = Ed25519PrivateKey.generate()
    write_secret(
        private_path,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private_path, public_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise BundleError(f"{path}: cannot read the release private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"{path}: not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: cannot read the release public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"{path}: not an Ed25519 public key")
    return key


def key_id(public_key: Ed25519PublicKey) -> str:
    """Short name of a key for messages: the first 16 hex digits of SHA-256 of its raw bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


# --- the bundle ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bundle:
    """A bundle as read: the manifest (parsed and its exact bytes), the signature, the files."""

    manifest: dict[str, Any]
    manifest_bytes: bytes
    signature: bytes
    files: dict[str, bytes]

    @property
    def app(self) -> str:
        return str(self.manifest["app"])

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def target(self) -> str:
        return str(self.manifest["target"])

    @property
    def file_entries(self) -> list[dict[str, Any]]:
        return list(self.manifest["files"])


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def import_closure(app: str, sources: Mapping[str, str]) -> list[str]:
    """The board modules `app` needs: itself and every board module it imports, transitively.

    Imports inside functions count (link_client imports link_journal only when a journal is
    used), guarded imports of modules that are not board modules (`machine`, `hal_unix`) do not.
    """
    needed: set[str] = set()
    pending = [app]
    while pending:
        name = pending.pop()
        if name in needed:
            continue
        needed.add(name)
        for node in ast.walk(ast.parse(sources[name], filename=name + ".py")):
            if isinstance(node, ast.Import):
                imported = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported = [node.module.split(".")[0]]
            else:
                continue
            pending.extend(module for module in imported if module in sources)
    return sorted(needed)


def bundle_manifest(
    build_manifest: Mapping[str, Any],
    app: str,
    files: Mapping[str, bytes],
    *,
    release_key_id: str,
    created_at: datetime,
) -> bytes:
    """The manifest's exact bytes for `files` (name -> bytes) of `app`, from the build's manifest."""
    app_entry = next((entry for entry in build_manifest["apps"] if entry["name"] == app), None)
    if app_entry is None:
        raise BundleError(f"the build has no app {app}")
    modules = {entry["path"]: entry.get("module") for entry in build_manifest["files"]}
    entries = []
    for name in sorted(files):
        entry: dict[str, Any] = {"path": name, "size": len(files[name]), "sha256": _sha256(files[name])}
        if modules.get(name):
            entry["module"] = modules[name]
        entries.append(entry)
    manifest = {
        "format": BUNDLE_FORMAT,
        "app": app,
        "model": app_entry.get("model"),
        "version": app_entry.get("firmware_version") or "unversioned",
        "target": build_manifest["target"],
        "march": build_manifest["march"],
        "board": build_manifest["board"],
        "mpy_version": build_manifest["mpy_version"],
        "mpy_cross": build_manifest["mpy_cross"],
        "created_at": created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "key_id": release_key_id,
        "main": "main.py",
        "files": entries,
    }
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def pack_bundle(manifest_bytes: bytes, signature: bytes, files: Mapping[str, bytes]) -> bytes:
    """The bundle file's bytes. Entries carry a fixed time: the same inputs give the same file."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        items = [(MANIFEST_NAME, manifest_bytes), (SIGNATURE_NAME, signature)]
        items += [(FILES_PREFIX + name, files[name]) for name in sorted(files)]
        for name, data in items:
            info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def write_signed_bundle(
    path: Path, manifest_bytes: bytes, private_key: Ed25519PrivateKey, files: Mapping[str, bytes]
) -> Path:
    """Sign `manifest_bytes` and write the bundle (an app bundle or a full image) to `path`
    whole: it appears under its name only once every byte is written."""
    data = pack_bundle(manifest_bytes, private_key.sign(manifest_bytes), files)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".partial")
    temporary.write_bytes(data)
    temporary.replace(path)  # a technician never finds half a bundle
    return path


def check_manifest_fields(
    manifest: Any, *, expected_format: str, fields: Mapping[str, type | tuple[type, ...]], other_kind: str
) -> None:
    """The checks every signed zip's manifest starts with: a JSON object of `expected_format`
    (`other_kind` says what it is not) with each of `fields` of its JSON type (a boolean is no
    number here, though Python counts it as an int)."""
    if not isinstance(manifest, dict):
        raise UnknownFormat("manifest.json is not a JSON object: not a firmware bundle")
    if manifest.get("format") != expected_format:
        raise UnknownFormat(
            f"bundle format {manifest.get('format')!r} is not {expected_format!r}: {other_kind}"
        )
    for field, kind in fields.items():
        if (
            field not in manifest
            or not isinstance(manifest[field], kind)
            or isinstance(manifest[field], bool)
        ):
            raise UnknownFormat(f"manifest.json: field {field!r} is missing or of the wrong type")


def build_bundle(
    app: str,
    *,
    target: str,
    private_key: Ed25519PrivateKey,
    out_dir: Path,
    src: Path = FIRMWARE_SRC,
    mpy_cross: str | None = None,
    created_at: datetime | None = None,
) -> Path:
    """Compile the firmware with `firmware/build.py`, take `app`'s files, sign, write the bundle.

    Returns `<out_dir>/<app>-<version>-<target>.zip`. A firmware build error (BuildError) is
    passed on as it is: it names the module and carries the compiler's message.
    """
    if target not in TARGETS:
        raise BundleError(f"unknown target {target!r}; known: {', '.join(TARGETS)}")
    modules = board_modules(src)
    if app not in modules or not app.endswith("_app"):
        apps = [name for name in modules if name.endswith("_app")]
        raise BundleError(f"no board app {app!r} in {src}; known: {', '.join(apps)}")
    sources = {name: (src / (name + ".py")).read_text(encoding="utf-8") for name in modules}
    with tempfile.TemporaryDirectory(prefix="firmware-bundle-") as work:
        manifest_path = build_target(
            src, Path(work), TARGETS[target], find_mpy_cross(mpy_cross), log=lambda _line: None
        )
        build_manifest = json.loads(manifest_path.read_text())
        built = manifest_path.parent
        needed = import_closure(app, sources)
        files = {name + ".mpy": (built / (name + ".mpy")).read_bytes() for name in needed}
        files["main.py"] = (built / app / "main.py").read_bytes()
    manifest_bytes = bundle_manifest(
        build_manifest,
        app,
        files,
        release_key_id=key_id(private_key.public_key()),
        created_at=created_at or datetime.now(UTC),
    )
    version = json.loads(manifest_bytes)["version"]
    return write_signed_bundle(out_dir / f"{app}-{version}-{target}.zip", manifest_bytes, private_key, files)


# --- reading and verifying ----------------------------------------------------------------------


def _check_manifest(manifest: Any) -> None:
    check_manifest_fields(
        manifest,
        expected_format=BUNDLE_FORMAT,
        fields=MANIFEST_FIELDS,
        other_kind="not a bundle this tool knows",
    )
    seen: set[str] = set()
    for entry in manifest["files"]:
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("path"), str)
            and isinstance(entry.get("size"), int)
            and isinstance(entry.get("sha256"), str)
        ):
            raise UnknownFormat("manifest.json: a files entry lacks path, size or sha256")
        name = entry["path"]
        if not _SAFE_NAME.match(name) or name in _RESERVED or name in seen:
            raise UnknownFormat(f"manifest.json: {name!r} is not a flat, unique file name for a board")
        seen.add(name)
    if manifest["main"] not in seen:
        raise UnknownFormat(f"manifest.json: main {manifest['main']!r} is not among the files")


def read_signed_zip(
    data: bytes,
    *,
    max_bytes: int,
    check_manifest: Callable[[Any], None],
    expected_sha256: Callable[[Any, str], str | None],
) -> tuple[Any, bytes, bytes, dict[str, bytes]]:
    """A signed zip (an app bundle or a full image) WITHOUT trusting it -> (manifest, its exact
    bytes, the signature, the files by path). `expected_sha256(manifest, path)` is the hash the
    manifest lists for a file, None for a file it does not list (refused)."""
    if len(data) > max_bytes:
        raise UnknownFormat(f"{len(data)} bytes is larger than any firmware bundle ({max_bytes})")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise UnknownFormat("not a firmware bundle: not a zip archive") from exc
    with archive:
        names = set(archive.namelist())
        if MANIFEST_NAME not in names:
            raise UnknownFormat("not a firmware bundle: no manifest.json")
        manifest_bytes = archive.read(MANIFEST_NAME)
        try:
            manifest = json.loads(manifest_bytes)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UnknownFormat(f"manifest.json is not JSON: {exc}") from exc
        check_manifest(manifest)
        if SIGNATURE_NAME not in names:
            raise BadSignature("bundle is not signed (no manifest.sig): refused")
        signature = archive.read(SIGNATURE_NAME)
        files: dict[str, bytes] = {}
        for name in sorted(names - {MANIFEST_NAME, SIGNATURE_NAME}):
            path = name.removeprefix(FILES_PREFIX)
            sha256 = expected_sha256(manifest, path) if name.startswith(FILES_PREFIX) else None
            if sha256 is None:
                raise UnexpectedFile(path)
            if archive.getinfo(name).file_size > max_bytes:
                raise FileHashMismatch(path, sha256, "(larger than any bundle)")
            files[path] = archive.read(name)
    return manifest, manifest_bytes, signature, files


def check_release_signature(
    manifest: Any, manifest_bytes: bytes, signature: bytes, public_key: Ed25519PublicKey
) -> None:
    """Refuse unless `public_key` is the manifest's release key and signed exactly these bytes."""
    expected = key_id(public_key)
    if manifest["key_id"] != expected:
        raise WrongKey(manifest["key_id"], expected)
    try:
        public_key.verify(signature, manifest_bytes)
    except InvalidSignature as exc:
        raise BadSignature(
            f"the signature does not match manifest.json (release key {expected}): "
            "the manifest was changed after signing, or signed by another key: refused"
        ) from exc


def read_bundle(data: bytes) -> Bundle:
    """Parse a bundle WITHOUT trusting it (to show what it claims); flash only `verify_bundle`'s."""
    manifest, manifest_bytes, signature, files = read_signed_zip(
        data,
        max_bytes=MAX_BUNDLE_BYTES,
        check_manifest=_check_manifest,
        expected_sha256=lambda manifest, path: next(
            (entry["sha256"] for entry in manifest["files"] if entry["path"] == path), None
        ),
    )
    return Bundle(manifest=manifest, manifest_bytes=manifest_bytes, signature=signature, files=files)


def verify_bundle(data: bytes, public_key: Ed25519PublicKey) -> Bundle:
    """The bundle, if `public_key` signed exactly this manifest and every file matches it.

    Order: format, key, signature, then files, so the message names the first thing wrong.
    """
    bundle = read_bundle(data)
    check_release_signature(bundle.manifest, bundle.manifest_bytes, bundle.signature, public_key)
    for entry in bundle.file_entries:
        path = entry["path"]
        if path not in bundle.files:
            raise MissingFile(path)
        actual = _sha256(bundle.files[path])
        if actual != entry["sha256"] or len(bundle.files[path]) != entry["size"]:
            raise FileHashMismatch(path, entry["sha256"], actual)
    return bundle
