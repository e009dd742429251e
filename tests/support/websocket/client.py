"""A second, independent WebSocket client (the `websockets` package) for
tests/websocket.rs: through the gateway with the browser-style bearer
subprotocol, an echo, the upstream's close code, and a refused origin.

    python3 client.py ws://127.0.0.1:PORT/ws ORIGIN TOKEN

Prints one JSON line with what it saw.
"""

import asyncio
import json
import sys

import websockets


async def main(url: str, origin: str, token: str) -> dict:
    seen = {}
    async with websockets.connect(
        url,
        origin=origin,
        subprotocols=["bearer", token],
        open_timeout=10,
    ) as ws:
        seen["subprotocol"] = ws.subprotocol
        await ws.send("hello from python")
        seen["echo"] = await asyncio.wait_for(ws.recv(), 5)
        await ws.send("close:4003")
        try:
            await asyncio.wait_for(ws.recv(), 5)
        except websockets.ConnectionClosed as closed:
            seen["close_code"] = closed.rcvd.code if closed.rcvd else None
    try:
        async with websockets.connect(
            url, origin="https://evil.example", subprotocols=["bearer", token], open_timeout=10
        ):
            seen["refused_status"] = None
    except websockets.InvalidStatus as refused:
        seen["refused_status"] = refused.response.status_code
    return seen


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(*sys.argv[1:4]))))
