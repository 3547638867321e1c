"""An MCP server (stdio, official Python SDK 2.x) with one tool, `wait`, that
sleeps for the seconds asked. When the client cancels the call
(`notifications/cancelled`), the SDK cancels the handler and the server
appends `cancelled <request id>` to the file named by `CANCEL_LOG`, so the
cancel tests see that Cairn told the server to stop."""

import os

import anyio
from mcp.server.mcpserver import Context, MCPServer

mcp = MCPServer("slow")


@mcp.tool()
async def wait(seconds: float, ctx: Context) -> str:
    """Waits `seconds` seconds, then says so."""
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        with open(os.environ["CANCEL_LOG"], "a", encoding="utf-8") as log:
            log.write(f"cancelled {ctx.request_id}\n")
        raise
    return f"waited {seconds} s"


if __name__ == "__main__":
    mcp.run()
