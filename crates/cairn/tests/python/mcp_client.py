"""Cairn's /mcp through the official MCP Python SDK (streamable HTTP).

Usage: mcp_client.py URL TOKEN. Prints what it saw; exits non-zero on failure.
"""

import asyncio
import sys

from mcp import ClientSession
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client


async def main(url: str, token: str) -> None:
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with http, streamable_http_client(url, http_client=http) as (read, write):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            print(f"server {init.server_info.name} {init.server_info.version}")
            tools = await session.list_tools()
            print("tools " + ",".join(sorted(t.name for t in tools.tools)))
            result = await session.call_tool("ask", {"question": "Hello, who are you?"})
            if result.is_error:
                raise SystemExit(f"ask failed: {result.content}")
            print("ask ok")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
