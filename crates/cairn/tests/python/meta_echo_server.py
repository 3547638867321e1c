"""An MCP server (stdio, official Python SDK 2.x) with one tool, `whoami`, that
answers with the `_meta` its call carried: the OpenTelemetry test checks that
Cairn sends the tool span's W3C `traceparent` there (the key the SDK's own
tracing reads)."""

import json

from mcp.server.mcpserver import Context, MCPServer

mcp = MCPServer("trace")


@mcp.tool()
def whoami(ctx: Context) -> str:
    """Returns the request's _meta."""
    meta = ctx.request_context.meta
    if meta is None:
        return "{}"
    if hasattr(meta, "model_dump"):
        meta = meta.model_dump()
    return json.dumps(dict(meta), default=str)


if __name__ == "__main__":
    mcp.run()
