"""Signed firmware bundles (gateway/firmware_bundle.py): pure build, verify, and every refusal.

The bundles here are made from a stand-in build manifest and small byte strings, not from
mpy-cross (the component test `test_firmware_flash.py` builds real ones): what is under test is
the container, the manifest and the signature. Each way of tampering must be refused with its
own exception and its own words, naming the file when a file is wrong.
"""

from __future__ import annotations

import hashlib
import io
import json
import stat
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.errors import GatewayError
from gateway.firmware_bundle import (
    BUNDLE_FORMAT,
    FIRMWARE_SRC,
    BadSignature,
    BundleError,
    FileHashMismatch,
    MissingFile,
    UnexpectedFile,
    UnknownFormat,
    WrongKey,
    bundle_manifest,
    create_release_keys,
    import_closure,
    key_id,
    load_private_key,
    load_public_key,
    pack_bundle,
    read_bundle,
    verify_bundle,
)

CREATED = datetime(2026, 3, 1, 8, 30, 0, tzinfo=UTC)
# What firmware/build.py writes, trimmed to what a bundle takes from it.
BUILD_MANIFEST = {
    "target": "esp32",
    "march": "xtensawin",
    "board": "Espressif ESP32-DevKitC V4 (ESP32-WROOM-32E)",
    "mpy_version": 6,
    "mpy_cross": "MicroPython v1.29.0; mpy-cross emitting mpy v6.3",
    "apps": [{"name": "bp_app", "main": "bp_app/main.py", "model": "KX-BP100", "firmware_version": "0.1.0"}],
    "files": [
        {"path": "bp_app.mpy", "module": "bp_app"},
        {"path": "hal.mpy", "module": "hal"},
        {"path": "kiosk_link.mpy", "module": "kiosk_link"},
        {"path": "bp_app/main.py", "app": "bp_app"},
    ],
}
FILES = {
    "bp_app.mpy": b"M\x06\x00\x1f bp app bytecode",
    "hal.mpy": b"M\x06\x00\x1f hal bytecode",
    "kiosk_link.mpy": b"M\x06\x00\x1f" + bytes(range(256)),
    "main.py": b"import bp_app\nbp_app.run()\n",
}


def make_bundle(
    key: Ed25519PrivateKey, files: dict[str, bytes] = FILES, manifest_key: str | None = None
) -> bytes:
    manifest = bundle_manifest(
        BUILD_MANIFEST,
        "bp_app",
        files,
        release_key_id=manifest_key or key_id(key.public_key()),
        created_at=CREATED,
    )
    return pack_bundle(manifest, key.sign(manifest), files)


def repack(
    data: bytes,
    *,
    replace: dict[str, bytes] | None = None,
    drop: tuple[str, ...] = (),
    add: dict[str, bytes] | None = None,
) -> bytes:
    """The bundle's zip rewritten with entries changed, dropped or added (nothing re-signed)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w") as target:
        for name in source.namelist():
            if name not in drop:
                target.writestr(name, (replace or {}).get(name, source.read(name)))
        for name, content in (add or {}).items():
            target.writestr(name, content)
    return out.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def flip_byte(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def zip_entry(data: bytes, name: str) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return archive.read(name)


@pytest.fixture(scope="module")
def release() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def good(release: Ed25519PrivateKey) -> bytes:
    return make_bundle(release)


# --- the good bundle ----------------------------------------------------------------------------


def test_a_signed_bundle_verifies_and_gives_back_every_file(release: Ed25519PrivateKey, good: bytes) -> None:
    bundle = verify_bundle(good, release.public_key())
    assert bundle.files == FILES
    assert (bundle.app, bundle.version, bundle.target) == ("bp_app", "0.1.0", "esp32")
    assert bundle.manifest_bytes == zip_entry(good, "manifest.json")
    with zipfile.ZipFile(io.BytesIO(good)) as archive:
        assert archive.namelist() == [
            "manifest.json",
            "manifest.sig",
            "files/bp_app.mpy",
            "files/hal.mpy",
            "files/kiosk_link.mpy",
            "files/main.py",
        ]


def test_the_manifest_lists_every_file_with_size_and_sha256(release: Ed25519PrivateKey, good: bytes) -> None:
    manifest = json.loads(zip_entry(good, "manifest.json"))
    assert manifest == {
        "format": BUNDLE_FORMAT,
        "app": "bp_app",
        "model": "KX-BP100",
        "version": "0.1.0",
        "target": "esp32",
        "march": "xtensawin",
        "board": "Espressif ESP32-DevKitC V4 (ESP32-WROOM-32E)",
        "mpy_version": 6,
        "mpy_cross": "MicroPython v1.29.0; mpy-cross emitting mpy v6.3",
        "created_at": "2026-03-01T08:30:00Z",
        "key_id": key_id(release.public_key()),
        "main": "main.py",
        "files": [
            {"path": "bp_app.mpy", "module": "bp_app", "size": 20, "sha256": sha256(FILES["bp_app.mpy"])},
            {"path": "hal.mpy", "module": "hal", "size": 17, "sha256": sha256(FILES["hal.mpy"])},
            {
                "path": "kiosk_link.mpy",
                "module": "kiosk_link",
                "size": 260,
                "sha256": sha256(FILES["kiosk_link.mpy"]),
            },
            {"path": "main.py", "size": 27, "sha256": sha256(FILES["main.py"])},
        ],
    }


def test_the_same_inputs_give_the_same_bundle_bytes(release: Ed25519PrivateKey, good: bytes) -> None:
    # Ed25519 signatures are deterministic and zip entries carry a fixed time.
    assert make_bundle(release) == good


def test_read_bundle_shows_an_untrusted_bundle_without_verifying(good: bytes) -> None:
    bundle = read_bundle(good)
    assert bundle.version == "0.1.0"
    assert len(bundle.signature) == 64


# --- refusals, each with its own words ----------------------------------------------------------


def test_a_changed_byte_in_a_file_is_refused_naming_the_file(release: Ed25519PrivateKey, good: bytes) -> None:
    tampered = repack(good, replace={"files/kiosk_link.mpy": flip_byte(FILES["kiosk_link.mpy"], 100)})
    with pytest.raises(FileHashMismatch) as refused:
        verify_bundle(tampered, release.public_key())
    assert refused.value.path == "kiosk_link.mpy"
    assert "file kiosk_link.mpy: its SHA-256" in str(refused.value)
    assert "does not match the signed manifest" in str(refused.value)


def test_a_changed_byte_in_the_manifest_is_refused_as_a_bad_signature(
    release: Ed25519PrivateKey, good: bytes
) -> None:
    manifest = zip_entry(good, "manifest.json")
    changed = manifest.replace(b'"version": "0.1.0"', b'"version": "0.1.1"')
    assert changed != manifest and len(changed) == len(manifest)
    with pytest.raises(BadSignature) as refused:
        verify_bundle(repack(good, replace={"manifest.json": changed}), release.public_key())
    assert "signature does not match manifest.json" in str(refused.value)


def test_a_bundle_signed_by_another_key_is_refused_naming_both_keys(release: Ed25519PrivateKey) -> None:
    other = Ed25519PrivateKey.generate()
    with pytest.raises(WrongKey) as refused:
        verify_bundle(make_bundle(other), release.public_key())
    assert refused.value.signed_by == key_id(other.public_key())
    assert str(refused.value) == (
        f"bundle is signed by key {key_id(other.public_key())}, "
        f"not by the release key {key_id(release.public_key())}: refused"
    )


def test_another_key_posing_as_the_release_key_fails_the_signature(release: Ed25519PrivateKey) -> None:
    forged = make_bundle(Ed25519PrivateKey.generate(), manifest_key=key_id(release.public_key()))
    with pytest.raises(BadSignature):
        verify_bundle(forged, release.public_key())


def test_a_missing_file_is_refused_naming_it(release: Ed25519PrivateKey, good: bytes) -> None:
    with pytest.raises(MissingFile) as refused:
        verify_bundle(repack(good, drop=("files/hal.mpy",)), release.public_key())
    assert refused.value.path == "hal.mpy"
    assert str(refused.value) == (
        "file hal.mpy is listed in the manifest but missing from the bundle: refused"
    )


def test_a_file_the_manifest_does_not_list_is_refused(release: Ed25519PrivateKey, good: bytes) -> None:
    with pytest.raises(UnexpectedFile) as refused:
        verify_bundle(repack(good, add={"files/boot.py": b"import evil\n"}), release.public_key())
    assert refused.value.path == "boot.py"


def test_an_unsigned_bundle_is_refused(release: Ed25519PrivateKey, good: bytes) -> None:
    with pytest.raises(BadSignature, match=r"not signed \(no manifest.sig\)"):
        verify_bundle(repack(good, drop=("manifest.sig",)), release.public_key())


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda good: b"\x7fELF not a bundle at all", "not a zip archive"),
        (lambda good: repack(good, drop=("manifest.json",)), "no manifest.json"),
        (lambda good: repack(good, replace={"manifest.json": b"\xff\xfe"}), "manifest.json is not JSON"),
        (
            lambda good: repack(
                good,
                replace={
                    "manifest.json": zip_entry(good, "manifest.json").replace(
                        BUNDLE_FORMAT.encode(), b"kiosk-edge-firmware-bundle/9"
                    )
                },
            ),
            "bundle format 'kiosk-edge-firmware-bundle/9' is not",
        ),
    ],
)
def test_what_is_not_a_bundle_of_this_format_is_refused_as_unknown(
    release: Ed25519PrivateKey, good: bytes, make: Callable[[bytes], bytes], words: str
) -> None:
    with pytest.raises(UnknownFormat) as refused:
        verify_bundle(make(good), release.public_key())
    assert words in str(refused.value)


@pytest.mark.parametrize(
    "name", ["../boot.py", "lib/x.mpy", ".hidden", "firmware.json", "firmware.trial", "boot.py", ""]
)
def test_a_file_name_that_is_not_flat_is_refused_even_when_signed(
    release: Ed25519PrivateKey, name: str
) -> None:
    files = {**FILES, name: b"x"}
    with pytest.raises(UnknownFormat, match="not a flat, unique file name"):
        read_bundle(make_bundle(release, files))


def test_every_refusal_is_a_gateway_error_with_its_own_words(release: Ed25519PrivateKey, good: bytes) -> None:
    tampered = [
        repack(good, replace={"files/hal.mpy": flip_byte(FILES["hal.mpy"], 5)}),
        repack(good, replace={"manifest.json": flip_byte(zip_entry(good, "manifest.json"), 40)}),
        make_bundle(Ed25519PrivateKey.generate()),
        repack(good, drop=("files/main.py",)),
        b"not a zip",
    ]
    errors = []
    for data in tampered:
        with pytest.raises(BundleError) as refused:
            verify_bundle(data, release.public_key())
        assert isinstance(refused.value, GatewayError)
        errors.append(refused.value)
    assert [type(error) for error in errors] == [
        FileHashMismatch,
        BadSignature,
        WrongKey,
        MissingFile,
        UnknownFormat,
    ]
    assert len({str(error) for error in errors}) == len(errors)


# --- keys and the app's modules -----------------------------------------------------------------


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(tmp_path: Path) -> None:
    private_path, public_path = create_release_keys(tmp_path / "keys")
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    private = load_private_key(private_path)
    assert key_id(load_public_key(public_path)) == key_id(private.public_key())
    before = private_path.read_bytes()
    with pytest.raises(FileExistsError):
        create_release_keys(tmp_path / "keys")
    assert private_path.read_bytes() == before


def test_a_public_key_file_that_is_not_ed25519_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bad.pem").write_text("-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")
    with pytest.raises(BundleError, match="cannot read the release public key"):
        load_public_key(tmp_path / "bad.pem")


def test_an_app_bundle_takes_exactly_the_board_modules_it_imports() -> None:
    sources = {
        path.stem: path.read_text()
        for path in FIRMWARE_SRC.glob("*.py")
        if path.stem not in {"__init__", "build", "manifest_esp32", "manifest_rp2"}
    }
    # link_journal and link_update are imported inside functions of link_client, updater inside
    # link_update's; hal_unix is host-only (not here).
    assert import_closure("bp_app", sources) == [
        "bp_app",
        "bp_cuff",
        "hal",
        "kiosk_link",
        "link_client",
        "link_journal",
        "link_update",
        "updater",
    ]
    assert "ecg_ads1292r" in import_closure("ecg_app", sources)
    assert "bp_cuff" not in import_closure("ecg_app", sources)
