"""GETs one path over HTTP/3 with aioquic, a client independent of Sluice's own QUIC stack, and
prints the answer as JSON: {"status": ..., "headers": {...}, "body": "..."}.

Usage: python h3_get.py HOST PORT CA_FILE PATH
"""

import asyncio
import json
import sys

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.answers = {}
        self.waiters = {}

    def quic_event_received(self, event):
        for received in self.h3.handle_event(event):
            if not isinstance(received, (HeadersReceived, DataReceived)):
                continue
            answer = self.answers.setdefault(received.stream_id, {"headers": [], "body": b""})
            if isinstance(received, HeadersReceived):
                answer["headers"].extend(received.headers)
            else:
                answer["body"] += received.data
            if received.stream_ended and received.stream_id in self.waiters:
                self.waiters.pop(received.stream_id).set_result(answer)

    async def get(self, authority, path):
        stream_id = self._quic.get_next_available_stream_id()
        headers = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", authority.encode()),
                   (b":path", path.encode())]
        self.h3.send_headers(stream_id, headers, end_stream=True)
        waiter = self._loop.create_future()
        self.waiters[stream_id] = waiter
        self.transmit()
        return await asyncio.wait_for(waiter, 60)


async def main(host, port, ca_file, path):
    configuration = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name="localhost")
    configuration.load_verify_locations(ca_file)
    async with connect(host, port, configuration=configuration, create_protocol=Client) as client:
        answer = await client.get(f"localhost:{port}", path)
    headers = {name.decode(): value.decode() for name, value in answer["headers"]}
    print(json.dumps({"status": int(headers.pop(":status")), "headers": headers,
                      "body": answer["body"].decode(errors="replace")}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]))
