"""The board's end of a firmware update over the link, on the MicroPython unix port.

micropython tests/micropython/link_update_board.py REPO_ROOT WORK_DIR

Run by tests/component/test_firmware_link_update.py. Each test gets an empty "flash" folder
under WORK_DIR as its working directory (a board's flash root), a version 1.0 installed in it,
and drives `link_update.LinkUpdater` with the frames a gateway sends, reading its replies off
a stand-in UART: staging and the switch, the board's own hash check, resuming after a reboot,
boot-time trial counting and rollback, the hello bits and the confirmation, and the heap.
"""

import sys

ROOT = sys.argv[1]
WORK = sys.argv[2]
sys.path.insert(0, ROOT + "/firmware")
sys.path.insert(0, ROOT + "/firmware/host")
sys.path.insert(0, ROOT + "/tests/micropython")

import binascii  # noqa: E402
import gc  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402

import kiosk_link as link  # noqa: E402
import link_update as lu  # noqa: E402
import updater  # noqa: E402
from board_uart import BoardUart  # noqa: E402
from link_client import LinkClient  # noqa: E402
from mp_runner import run_tests  # noqa: E402


def sha(data):
    return binascii.hexlify(hashlib.sha256(data).digest()).decode()


def manifest_for(version, files):
    entries = [{"path": name, "size": len(data), "sha256": sha(data)} for name, data in sorted(files.items())]
    return json.dumps({"version": version, "app": "bp_app", "files": entries}).encode()


class Version:
    def __init__(self, version, files):
        self.version = version
        self.files = files
        self.manifest = manifest_for(version, files)
        self.digest = hashlib.sha256(self.manifest).digest()
        self.id = lu.update_id(self.digest)
        self.plan = [("firmware.json", self.manifest), ("firmware.sig", b"S" * 64)] + sorted(files.items())
        self.total = sum(len(data) for _, data in self.plan)


V1 = Version("1.0", {"app.mpy": b"version one " * 40, "main.py": b"import app\n"})
V2 = Version(
    "2.0", {"app.mpy": bytes(range(256)) * 9, "main.py": b"import app  # 2\n", "extra.mpy": b"x" * 700}
)

_counter = [0]


def fresh_flash():
    """A new flash root as the working directory, holding V1 as a USB flash leaves it."""
    _counter[0] += 1
    path = WORK + "/flash%d" % _counter[0]
    os.mkdir(path)
    os.chdir(path)
    for name, data in V1.plan:
        with open(name, "wb") as f:
            f.write(data)
    return path


def ask(board, uart, msg_type, payload, seq=7):
    """One request; the board's one reply, decoded."""
    before = len(uart.sent)
    board.handle(msg_type, seq, payload)
    assert len(uart.sent) == before + 1, "one reply per request"
    reply_type, reply_seq, reply = uart.sent[-1]
    assert (reply_type, reply_seq) == (link.MSG_UPDATE_REPLY, seq)
    return lu.decode_reply(reply)


def stage(board, uart, version, corrupt=None, chunk=192):
    status, _, staged, _ = ask(
        board,
        uart,
        link.MSG_UPDATE_OFFER,
        lu.encode_offer(version.digest, version.total, len(version.plan), version.version),
    )
    assert status == lu.UPDATE_OK
    for index, (name, data) in enumerate(version.plan):
        status, _, offset, _ = ask(
            board, uart, link.MSG_UPDATE_FILE, lu.encode_file(version.id, index, len(data), name)
        )
        assert status == lu.UPDATE_OK
        while offset < len(data):
            piece = data[offset : offset + chunk]
            if name == corrupt and offset == 0:
                piece = b"?" + piece[1:]
            status, _, offset, _ = ask(
                board, uart, link.MSG_UPDATE_CHUNK, lu.encode_chunk(version.id, index, offset, piece)
            )
            assert status == lu.UPDATE_OK
    return staged


def commit(board, uart, version):
    """COMMIT: the reply, and whether the board reset (hal_unix.reset ends the process)."""
    try:
        board.handle(link.MSG_UPDATE_COMMIT, 9, lu.encode_commit(version.id))
    except SystemExit as exc:
        assert exc.args[0] == 75
        return lu.decode_reply(uart.sent[-1][2]), True
    return lu.decode_reply(uart.sent[-1][2]), False


def read(path):
    with open(path, "rb") as f:
        return f.read()


def test_staged_files_are_switched_in_on_trial_and_the_board_resets():
    fresh_flash()
    uart = BoardUart()
    board = lu.LinkUpdater(uart, log=lambda line: None)
    stage(board, uart, V2)
    assert read("app.mpy") == V1.files["app.mpy"]  # nothing switched before the commit
    (status, _, _, _), reset = commit(board, uart, V2)
    assert status == lu.UPDATE_OK and reset
    for name, data in V2.plan:
        assert read(name) == data, name
    for name, data in V1.plan:
        assert read("prev/" + name) == data, name
    assert not updater.exists("new")
    trial = updater.read_json(updater.TRIAL)
    assert trial == {"version": "2.0", "previous": "1.0", "boots": 0}, trial


def test_a_file_that_does_not_hash_to_the_manifest_is_refused_at_commit():
    fresh_flash()
    uart = BoardUart()
    board = lu.LinkUpdater(uart, log=lambda line: None)
    stage(board, uart, V2, corrupt="extra.mpy")
    (status, _, _, detail), reset = commit(board, uart, V2)
    assert (status, detail, reset) == (lu.UPDATE_CHECK_FAILED, "extra.mpy", False)
    assert read("app.mpy") == V1.files["app.mpy"] and not updater.exists(updater.TRIAL)
    assert os.listdir("new") == []  # cleared: the next try starts over
    assert (
        ask(board, uart, link.MSG_UPDATE_FILE, lu.encode_file(V2.id, 0, 10, "firmware.json"))[0]
        == lu.UPDATE_UNKNOWN
    )


def test_after_a_reboot_the_staged_bytes_are_kept_and_each_file_resumes_where_it_stopped():
    fresh_flash()
    uart = BoardUart()
    board = lu.LinkUpdater(uart, log=lambda line: None)
    ask(board, uart, link.MSG_UPDATE_OFFER, lu.encode_offer(V2.digest, V2.total, len(V2.plan), "2.0"))
    name, data = V2.plan[2]
    ask(board, uart, link.MSG_UPDATE_FILE, lu.encode_file(V2.id, 2, len(data), name))
    ask(board, uart, link.MSG_UPDATE_CHUNK, lu.encode_chunk(V2.id, 2, 0, data[:200]))
    # A resend of a chunk already written (its reply was lost) writes nothing twice.
    assert ask(board, uart, link.MSG_UPDATE_CHUNK, lu.encode_chunk(V2.id, 2, 0, data[:200]))[2] == 200
    board._close()  # the power goes: a new updater, nothing in RAM

    board = lu.LinkUpdater(uart, log=lambda line: None)
    assert (
        ask(board, uart, link.MSG_UPDATE_CHUNK, lu.encode_chunk(V2.id, 2, 200, data[200:300]))[0]
        == lu.UPDATE_NO_FILE
    )
    assert ask(board, uart, link.MSG_UPDATE_FILE, lu.encode_file(V2.id, 2, len(data), name))[2] == 200
    status, _, staged, _ = ask(
        board, uart, link.MSG_UPDATE_OFFER, lu.encode_offer(V2.digest, V2.total, len(V2.plan), "2.0")
    )
    assert (status, staged) == (lu.UPDATE_OK, 200)
    assert stage(board, uart, V2) == 200
    assert commit(board, uart, V2)[0][0] == lu.UPDATE_OK
    assert read(name) == data
    # Another update's offer starts from nothing.
    other = Version("3.0", {"app.mpy": b"three"})
    assert ask(board, uart, link.MSG_UPDATE_OFFER, lu.encode_offer(other.digest, 5, 3, "3.0"))[2] == 0


def test_bad_requests_are_answered_not_obeyed():
    fresh_flash()
    uart = BoardUart()
    board = lu.LinkUpdater(uart, log=lambda line: None)
    assert ask(board, uart, link.MSG_UPDATE_FILE, lu.encode_file(V2.id, 0, 10, "x"))[0] == lu.UPDATE_UNKNOWN
    ask(board, uart, link.MSG_UPDATE_OFFER, lu.encode_offer(V2.digest, V2.total, len(V2.plan), "2.0"))
    for name in ("../boot.py", ".offer", "sub/file", "boot.py"):
        assert (
            ask(board, uart, link.MSG_UPDATE_FILE, lu.encode_file(V2.id, 0, 10, name))[0]
            == lu.UPDATE_BAD_REQUEST
        )
    ask(board, uart, link.MSG_UPDATE_FILE, lu.encode_file(V2.id, 0, 10, "small.mpy"))
    assert (
        ask(board, uart, link.MSG_UPDATE_CHUNK, lu.encode_chunk(V2.id, 0, 0, b"eleven byte"))[0]
        == lu.UPDATE_BAD_REQUEST
    )
    assert (
        ask(board, uart, link.MSG_UPDATE_CHUNK, lu.encode_chunk(V2.id ^ 1, 0, 0, b"a"))[0]
        == lu.UPDATE_UNKNOWN
    )
    assert ask(board, uart, link.MSG_UPDATE_OFFER, b"short")[0] == lu.UPDATE_BAD_REQUEST


def test_boot_counts_trial_boots_then_rolls_back_and_the_hello_says_so():
    fresh_flash()
    uart = BoardUart()
    stage(lu.LinkUpdater(uart, log=lambda line: None), uart, V2)
    commit(lu.LinkUpdater(uart, log=lambda line: None), uart, V2)
    log = []
    assert updater.boot(2, log=log.append) == updater.ON_TRIAL
    assert updater.boot(2, log=log.append) == updater.ON_TRIAL
    assert read("app.mpy") == V2.files["app.mpy"]
    assert updater.boot(2, log=log.append) == updater.ROLLED_BACK_NOW  # two boots, no hello acked
    for name, data in V1.plan:
        assert read(name) == data, name
    assert not updater.exists("extra.mpy") and read("prev/extra.mpy") == V2.files["extra.mpy"]
    assert updater.read_json(updater.ROLLED_BACK) == {"failed": "2.0", "version": "1.0"}
    assert "rolled back to 1.0" in log[-1]

    # The next hello carries the news; the gateway's ack clears it, and the next hello is plain.
    wire = BoardUart()
    client = LinkClient(wire)
    client.hello(link.encode_hello(1, "bp-1", "KX-BP100", "1.0", link.CAP_STATUS))
    caps = link.decode_hello_capabilities(wire.sent[-1][2])
    assert caps == link.CAP_STATUS | link.CAP_UPDATE | link.CAP_ROLLED_BACK, hex(caps)
    wire.inbox += link.encode_frame(link.MSG_ACK, wire.sent[-1][1])
    client.poll()
    assert not updater.exists(updater.ROLLED_BACK)
    assert link.decode_hello_capabilities(client._hello_payload) == link.CAP_STATUS | link.CAP_UPDATE
    assert updater.boot(2) == updater.NORMAL


def test_the_ack_of_a_trial_hello_confirms_the_version():
    fresh_flash()
    uart = BoardUart()
    stage(lu.LinkUpdater(uart, log=lambda line: None), uart, V2)
    commit(lu.LinkUpdater(uart, log=lambda line: None), uart, V2)
    assert updater.boot(2, log=lambda line: None) == updater.ON_TRIAL
    wire = BoardUart()
    client = LinkClient(wire)
    client.hello(link.encode_hello(1, "bp-1", "KX-BP100", "2.0"))
    assert link.decode_hello_capabilities(wire.sent[-1][2]) == link.CAP_UPDATE | link.CAP_TRIAL
    wire.inbox += link.encode_frame(link.MSG_ACK, wire.sent[-1][1])
    client.poll()
    assert not updater.exists(updater.TRIAL)
    assert updater.boot(2) == updater.NORMAL and read("app.mpy") == V2.files["app.mpy"]


def test_update_requests_reach_the_updater_through_the_link_client():
    fresh_flash()
    assert updater.boot(2) == updater.NORMAL  # boot.py ran: updates are guarded, so taken
    wire = BoardUart()
    client = LinkClient(wire)
    client.hello(link.encode_hello(1, "bp-1", "KX-BP100", "1.0"))
    offer = lu.encode_offer(V2.digest, V2.total, len(V2.plan), "2.0")
    wire.inbox += link.encode_frame(link.MSG_UPDATE_OFFER, 44, offer)
    client.poll()
    assert wire.sent[-1][:2] == (link.MSG_UPDATE_REPLY, 44)
    assert lu.decode_reply(wire.sent[-1][2])[0] == lu.UPDATE_OK


def test_chunks_go_to_flash_as_they_come_the_heap_does_not_grow_with_the_file():
    """64 KB through the updater: after it, the live heap is what it was (nothing kept per chunk),
    and what one chunk allocates while it is handled is a few hundred bytes of temporaries."""
    fresh_flash()
    board = lu.LinkUpdater(_NullUart(), log=lambda line: None)  # replies are checked elsewhere
    size = 64 * 1024
    ask_quiet(board, link.MSG_UPDATE_OFFER, lu.encode_offer(V2.digest, size, 1, "2.0"))
    ask_quiet(board, link.MSG_UPDATE_FILE, lu.encode_file(V2.id, 0, size, "big.mpy"))
    template = lu.encode_chunk(V2.id, 0, 0, bytes(241))
    gc.collect()
    before = gc.mem_alloc()
    offset = 0
    gc.disable()
    try:
        allocated_by_one = None
        while offset < size:
            piece = min(241, size - offset)
            payload = (
                lu.encode_chunk(V2.id, 0, offset, bytes(piece))
                if piece != 241
                else _retarget(template, offset)
            )
            start = gc.mem_alloc()
            board.handle(link.MSG_UPDATE_CHUNK, 8, payload)
            if allocated_by_one is None:
                allocated_by_one = gc.mem_alloc() - start
            offset += piece
            gc.collect()
    finally:
        gc.enable()
    gc.collect()
    grown = gc.mem_alloc() - before
    assert os.stat("new/big.mpy")[6] == size
    assert grown < 1024, grown
    assert allocated_by_one < 1024, allocated_by_one
    print(
        "heap grown %d B over %d KB; one chunk allocates %d B while handled"
        % (grown, size // 1024, allocated_by_one)
    )


class _NullUart:
    def write(self, data):
        return len(data)


def ask_quiet(board, msg_type, payload):
    board.handle(msg_type, 1, payload)


def _retarget(chunk, offset):
    out = bytearray(chunk)
    out[5:9] = offset.to_bytes(4, "little")
    return out


run_tests(globals())
