"""The board's firmware files: the installed version, `new/` (staged), `prev/` (set aside), a trial.

One layout for both ways a version reaches a board (docs/wire-format.md 1.10):

    firmware.json, firmware.sig   the installed version's signed manifest and its signature
    <files the manifest lists>    the installed version (flat names: bp_app.mpy, main.py, ...)
    new/                          a version being staged, file by file
    prev/                         the version before the installed one
    firmware.trial                the installed version is on trial (JSON: version, previous, boots)
    firmware.rolled_back          the last update was rolled back (JSON: failed, version)

`gateway/flash.py` runs this file's source over the raw REPL (the USB cable) and
`link_update.py` imports it (the kiosk link): both stage into new/, switch only when every
staged file hashes right, and keep the installed version in prev/. Only the link path puts a
version on trial: `boot()` (the board's boot.py, or the unix-port runner) counts trial boots and
rolls back to prev/ after `boots` of them; `confirm()` (the link client, when the gateway acks
the hello of the version on trial) ends the trial.

Paths are relative: a board's working directory is its flash's root; on the unix port it is the
simulated board's flash directory. No f-strings, no imports beyond the interpreter's own, so the
same source runs from the REPL on any MicroPython 1.19 or later.
"""

import binascii
import hashlib
import json
import os

MANIFEST = "firmware.json"
SIGNATURE = "firmware.sig"
STAGING = "new"
PREVIOUS = "prev"
TRIAL = "firmware.trial"
ROLLED_BACK = "firmware.rolled_back"
MAX_TRIAL_BOOTS = 2  # a version on trial gets this many boots to say hello, then prev/ comes back

NORMAL = 0  # what boot() found: no update pending
ON_TRIAL = 1  # the installed version is on trial: it has until the deadline to be confirmed
ROLLED_BACK_NOW = 2  # the version on trial used up its boots: prev/ was put back

booted = False  # True once boot() ran in this interpreter: the board's updates are guarded


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def clear(folder):
    """Make `folder` exist and be empty (flat: staging folders hold no sub-folders)."""
    if not exists(folder):
        os.mkdir(folder)
    for name in os.listdir(folder):
        os.remove(folder + "/" + name)


def sha256_hex(path):
    digest = hashlib.sha256()
    buf = bytearray(512)
    with open(path, "rb") as f:
        while True:
            count = f.readinto(buf)
            if not count:
                break
            digest.update(memoryview(buf)[:count])
    return binascii.hexlify(digest.digest()).decode()


def file_size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return -1


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f)


def installed(folder=""):
    """(manifest or None, the names that make up that version) of the version in `folder`."""
    prefix = folder + "/" if folder else ""
    manifest = read_json(prefix + MANIFEST)
    if manifest is None:
        return None, []
    return manifest, [entry["path"] for entry in manifest["files"]] + [MANIFEST, SIGNATURE]


def set_aside(incoming, folder):
    """Move the installed version (its manifest's files, and any of `incoming` lying about) into an
    emptied `folder`; returns the installed manifest (None: a board set up by hand)."""
    manifest, names = installed()
    for name in incoming:
        if name not in names and exists(name):
            names.append(name)
    clear(folder)
    for name in names:
        if exists(name):
            os.rename(name, folder + "/" + name)
    return manifest


def check(expected):
    """Staged files that are missing or do not hash to `expected` ({name: sha256 hex}):
    {name: actual hash, or None when missing}. Empty when new/ holds exactly what is expected."""
    bad = {}
    for name in expected:
        path = STAGING + "/" + name
        if not exists(path):
            bad[name] = None
        else:
            actual = sha256_hex(path)
            if actual != expected[name]:
                bad[name] = actual
    return bad


def check_staged_manifest(manifest_sha256):
    """The staged version against its own manifest: new/firmware.json must hash to
    `manifest_sha256` (hex; the gateway took it from the signed manifest), every file it lists
    must hash to its entry, and firmware.sig must be there. Returns (manifest, names) or raises
    ValueError naming the first file that is wrong."""
    path = STAGING + "/" + MANIFEST
    if not exists(path) or sha256_hex(path) != manifest_sha256:
        raise ValueError(MANIFEST)
    manifest, names = installed(STAGING)
    if manifest is None:
        raise ValueError(MANIFEST)
    if not exists(STAGING + "/" + SIGNATURE):
        raise ValueError(SIGNATURE)
    for entry in manifest["files"]:
        name = entry["path"]
        path = STAGING + "/" + name
        if file_size(path) != entry["size"] or sha256_hex(path) != entry["sha256"]:
            raise ValueError(name)
    return manifest, names


def switch(names):
    """Staged `names` into place, the installed version into prev/ (emptied first), new/ removed.
    Returns the manifest of the version that was installed."""
    manifest = set_aside(names, PREVIOUS)
    for name in names:
        os.rename(STAGING + "/" + name, name)
    clear(STAGING)  # anything staged but not listed (the link's offer record)
    os.rmdir(STAGING)
    return manifest


def swap_prev():
    """Put prev/ back and the installed version into prev/ (a second swap goes forward again).
    None when prev/ is empty; else (manifest of the version swapped out, files restored)."""
    old = os.listdir(PREVIOUS) if exists(PREVIOUS) else []
    if not old:
        return None
    manifest = set_aside(old, "swap")
    for name in old:
        os.rename(PREVIOUS + "/" + name, name)
    for name in os.listdir("swap"):
        os.rename("swap/" + name, PREVIOUS + "/" + name)
    os.rmdir("swap")
    return manifest, len(old)


# --- a version on trial -------------------------------------------------------------------


def start_trial(version, previous):
    """Written before the switch: from now on a boot that is not confirmed counts against it."""
    write_json(TRIAL, {"version": version, "previous": previous, "boots": 0})


def boot(max_boots=MAX_TRIAL_BOOTS, log=print):
    """Run once at boot, before the application: NORMAL, ON_TRIAL or ROLLED_BACK_NOW."""
    global booted
    booted = True
    trial = read_json(TRIAL)
    if trial is None:
        if exists(TRIAL):  # unreadable (a power cut while it was written): count it as used up
            trial = {"version": None, "previous": None, "boots": max_boots}
        else:
            return NORMAL
    boots = trial.get("boots", 0)
    if boots < max_boots:
        trial["boots"] = boots + 1
        write_json(TRIAL, trial)
        log("firmware %s on trial: boot %d of %d" % (trial.get("version"), boots + 1, max_boots))
        return ON_TRIAL
    swapped = swap_prev()
    os.remove(TRIAL)
    if swapped is None:
        log("firmware %s was never confirmed, and prev/ is empty: kept" % trial.get("version"))
        return NORMAL
    write_json(ROLLED_BACK, {"failed": trial.get("version"), "version": trial.get("previous")})
    log("firmware %s was never confirmed: rolled back to %s" % (trial.get("version"), trial.get("previous")))
    return ROLLED_BACK_NOW


def arm_deadline(ms):
    """On a board: reset in `ms` unless the trial was confirmed by then (a hardware timer, so it
    fires even when the new main.py died on import and left the board at the REPL)."""
    import machine

    def expire(_timer):
        if exists(TRIAL):
            machine.reset()

    global _deadline
    try:
        _deadline = machine.Timer(-1)  # a virtual timer (rp2, esp8266)
    except ValueError:
        _deadline = machine.Timer(0)  # esp32: hardware timer 0
    _deadline.init(mode=machine.Timer.ONE_SHOT, period=ms, callback=expire)


_deadline = None


def state():
    """(on trial, rolled back): what the board's hello says about the last update."""
    return exists(TRIAL), exists(ROLLED_BACK)


def confirm():
    """The gateway acked the hello: the version on trial stays; a rollback has been reported."""
    for path in (TRIAL, ROLLED_BACK):
        if exists(path):
            os.remove(path)
