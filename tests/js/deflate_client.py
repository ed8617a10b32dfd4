"""Python `websockets` with its default permessage-deflate offer against street.

Usage: python deflate_client.py PORT. Sends a large JSON echo, prints one JSON line."""
import asyncio, json, sys

from websockets.asyncio.client import connect


async def main(port):
    out = {}
    async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
        out["extensions"] = [e.name for e in ws.protocol.extensions]
        big = {"rows": [{"id": i, "text": "hello from the street"} for i in range(500)]}
        await ws.send(json.dumps({"type": "echo", "payload": big, "ts": 1}))
        echo = json.loads(await asyncio.wait_for(ws.recv(), 10))
        out["echoOk"] = echo["payload"] == big
    print(json.dumps(out))


asyncio.run(main(sys.argv[1]))
