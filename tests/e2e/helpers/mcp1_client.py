"""A real `mcp<2` ClientSession run through portcullis. Run with the mcp1
venv's python. Prints one JSON object with what it saw, exits 0 on success.

Usage: mcp1_client.py --url URL --transport streamable-http|sse [--elicit]
"""

import argparse
import json
import sys

import anyio
from mcp import ClientSession, types
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamablehttp_client


async def on_elicit(context, params):
    return types.ElicitResult(action="accept", content={"name": "Ada"})


async def exercise(session: ClientSession, out: dict, elicit: bool) -> None:
    init = await session.initialize()
    out["server_name"] = init.serverInfo.name
    out["protocol_version"] = init.protocolVersion
    tools = await session.list_tools()
    out["tools"] = sorted(t.name for t in tools.tools)
    r = await session.call_tool("add", {"a": 2, "b": 40})
    out["add"] = [c.text for c in r.content if c.type == "text"]
    r = await session.call_tool("echo", {"text": "héllo through portcullis"})
    out["echo"] = [c.text for c in r.content if c.type == "text"]
    progress = []

    async def on_progress(p, total, message):
        progress.append([p, total, message])

    r = await session.call_tool("countdown", {"n": 3}, progress_callback=on_progress)
    out["countdown"] = [c.text for c in r.content if c.type == "text"]
    out["progress"] = progress
    res = await session.read_resource("e2e://greeting")
    out["resource"] = [c.text for c in res.contents]
    prompt = await session.get_prompt("greet", {"name": "Ada"})
    out["prompt"] = [m.content.text for m in prompt.messages]
    await session.send_ping()
    out["ping"] = True
    if elicit:
        # A server-to-client request in the middle of a call, answered by a POST.
        r = await session.call_tool("ask_name", {})
        out["ask_name"] = [c.text for c in r.content if c.type == "text"]


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--transport", choices=["streamable-http", "sse"], required=True)
    ap.add_argument("--elicit", action="store_true", help="also call ask_name (elicitation)")
    args = ap.parse_args()
    out: dict = {}
    logs: list = []

    async def logging_callback(params):
        logs.append(params.data)

    with anyio.fail_after(60):
        if args.transport == "sse":
            async with sse_client(args.url, on_session_created=lambda s: out.setdefault("session_id", s)) as (r, w):
                async with ClientSession(r, w, logging_callback=logging_callback, elicitation_callback=on_elicit) as session:
                    await exercise(session, out, args.elicit)
        else:
            async with streamablehttp_client(args.url) as (r, w, get_session_id):
                async with ClientSession(r, w, logging_callback=logging_callback, elicitation_callback=on_elicit) as session:
                    await exercise(session, out, args.elicit)
                    out["session_id"] = get_session_id()
    out["logs"] = logs
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    anyio.run(main)
