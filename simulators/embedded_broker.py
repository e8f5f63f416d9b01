"""An embedded MQTT broker (amqtt, pure Python) so the demo needs no system service.

Tests use a real Mosquitto instead; amqtt speaks MQTT 3.1.1 only, which is all the demo needs.

    python -m simulators.embedded_broker --port 1883
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from amqtt.broker import Broker


async def serve(host: str, port: int) -> None:
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
    )
    await broker.start()
    print(f"embedded MQTT broker listening on {host}:{port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await broker.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
