"""Driving the real `mcp` 2.x client through portcullis, with an httpx2 client
whose event hooks record every HTTP exchange (method, status, session ids,
content types), so tests can check what crossed the proxy."""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client


@dataclass
class Exchange:
    method: str
    path: str
    rpc_method: str | None
    req_session: str | None
    req_protocol_version: str | None
    status: int | None = None
    content_type: str | None = None
    resp_session: str | None = None
    request_id: str | None = None


@dataclass
class Recorder:
    exchanges: list[Exchange] = field(default_factory=list)

    async def on_request(self, request: httpx2.Request) -> None:
        rpc = None
        if request.method == "POST":
            try:
                body = json.loads(request.content)
                rpc = body.get("method") if isinstance(body, dict) else "batch"
            except Exception:
                rpc = "?"
        ex = Exchange(
            request.method,
            request.url.raw_path.decode(),
            rpc,
            request.headers.get("mcp-session-id"),
            request.headers.get("mcp-protocol-version"),
        )
        request.extensions["e2e_exchange"] = ex
        self.exchanges.append(ex)

    async def on_response(self, response: httpx2.Response) -> None:
        ex = response.request.extensions.get("e2e_exchange")
        if ex is None:
            return
        ex.status = response.status_code
        ex.content_type = response.headers.get("content-type")
        ex.resp_session = response.headers.get("mcp-session-id")
        ex.request_id = response.headers.get("x-request-id")

    def by_rpc(self, rpc: str) -> list[Exchange]:
        return [e for e in self.exchanges if e.rpc_method == rpc]

    def by_method(self, method: str) -> list[Exchange]:
        return [e for e in self.exchanges if e.method == method]


def http_client(recorder: Recorder, verify: ssl.SSLContext | bool = True) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(
        timeout=httpx2.Timeout(30, read=60),
        verify=verify,
        event_hooks={"request": [recorder.on_request], "response": [recorder.on_response]},
    )


def text_of(result: Any) -> list[str]:
    return [c.text for c in result.content if getattr(c, "type", None) == "text"]


async def exercise(
    url: str,
    mode: str = "legacy",
    verify: ssl.SSLContext | bool = True,
    full: bool = True,
    legacy_sse: bool = False,
    elicit: bool = False,
) -> tuple[dict, Recorder]:
    """Connect the mcp 2.x Client to `url` and run a small scripted session.
    Returns what it saw and the HTTP exchanges (Streamable HTTP), or, with
    `legacy_sse`, speaks the 2024-11-05 HTTP+SSE transport (GET stream +
    POSTs to the URL named by its `endpoint` event). With `elicit`, also
    calls `ask_name`, whose elicitation request the client answers mid-call."""
    rec = Recorder()
    out: dict[str, Any] = {}
    logs: list[Any] = []
    progress: list[list[Any]] = []

    async def on_log(params) -> None:
        logs.append(params.data)

    async def on_progress(p, total, message) -> None:
        progress.append([p, total, message])

    async def on_elicit(context, params) -> types.ElicitResult:
        out["elicited"] = params.message
        return types.ElicitResult(action="accept", content={"name": "Ada"})

    with anyio.fail_after(60):
        async with http_client(rec, verify) as hc:
            if legacy_sse:
                def factory(headers=None, timeout=None, auth=None):
                    return httpx2.AsyncClient(
                        headers=headers,
                        timeout=timeout,
                        auth=auth,
                        verify=verify,
                        event_hooks={"request": [rec.on_request], "response": [rec.on_response]},
                    )

                transport = sse_client(url, httpx_client_factory=factory)
            else:
                transport = streamable_http_client(url, http_client=hc)
            async with Client(
                transport, mode=mode, logging_callback=on_log, log_level="info", elicitation_callback=on_elicit
            ) as client:
                out["protocol_version"] = client.protocol_version
                out["server_name"] = client.server_info.name if client.server_info else None
                tools = await client.list_tools()
                out["tools"] = sorted(t.name for t in tools.tools)
                out["add"] = text_of(await client.call_tool("add", {"a": 2, "b": 40}))
                out["echo"] = text_of(await client.call_tool("echo", {"text": "héllo through portcullis"}))
                if full:
                    r = await client.call_tool("countdown", {"n": 3}, progress_callback=on_progress)
                    out["countdown"] = text_of(r)
                    res = await client.read_resource("e2e://greeting")
                    out["resource"] = [c.text for c in res.contents]
                    prompt = await client.get_prompt("greet", {"name": "Ada"})
                    out["prompt"] = [m.content.text for m in prompt.messages]
                    if not client.protocol_version.startswith("2026"):
                        await client.send_ping()  # removed in the 2026-07-28 era
                        out["ping"] = True
                if elicit:
                    out["ask_name"] = text_of(await client.call_tool("ask_name", {}))
    out["logs"] = logs
    out["progress"] = progress
    return out, rec
