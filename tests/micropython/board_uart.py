"""A board's UART in the MicroPython tests: the frames the board wrote, decoded, and bytes
queued for it to read (what a gateway sends)."""

import kiosk_link as link


class BoardUart:
    def __init__(self):
        self.sent = []
        self.inbox = bytearray()
        self.splitter = link.FrameSplitter()

    def write(self, data):
        for frame in self.splitter.feed(data):
            self.sent.append(link.decode_frame(frame))
        return len(data)

    def readinto(self, buf):
        count = min(len(buf), len(self.inbox))
        if not count:
            return None
        buf[:count] = self.inbox[:count]
        self.inbox = self.inbox[count:]
        return count

    def reply(self, msg_type, seq, payload=b""):
        """Queue a frame for the board, as the gateway would send it."""
        self.inbox += link.encode_frame(msg_type, seq, payload)

    def take(self):
        """The frames written since the last take."""
        sent, self.sent = self.sent, []
        return sent
