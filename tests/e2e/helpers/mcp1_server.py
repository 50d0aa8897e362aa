"""A real `mcp<2` FastMCP server (Streamable HTTP or legacy HTTP+SSE), for the
e2e tests. Run with the mcp1 venv's python.

Usage: mcp1_server.py --port P --transport streamable-http|sse [--json]
"""

import argparse

import anyio
from mcp.server.fastmcp import Context, FastMCP
from pydantic import BaseModel


class Name(BaseModel):
    name: str


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--transport", choices=["streamable-http", "sse"], required=True)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    mcp = FastMCP(
        "e2e-mcp1",
        host="127.0.0.1",
        port=args.port,
        json_response=args.json,
        log_level="WARNING",
    )

    @mcp.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @mcp.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @mcp.tool()
    async def countdown(n: int, ctx: Context) -> str:
        """Send n progress and log notifications, then answer."""
        for i in range(n):
            await ctx.report_progress(i + 1, n, f"step {i + 1}")
            await ctx.info(f"tick {i + 1}")
            await anyio.sleep(0.05)
        return f"counted {n}"

    @mcp.tool()
    async def ask_name(ctx: Context) -> str:
        """Ask the client for a name (elicitation: a server-to-client request)."""
        result = await ctx.elicit("What is your name?", Name)
        if result.action == "accept" and result.data is not None:
            return f"hello {result.data.name}"
        return f"no name ({result.action})"

    @mcp.resource("e2e://greeting")
    def greeting() -> str:
        """A static text resource."""
        return "hello from mcp1"

    @mcp.prompt()
    def greet(name: str) -> str:
        """A prompt with one argument."""
        return f"Please greet {name}."

    mcp.run(transport=args.transport)


if __name__ == "__main__":
    main()
