"""Decides an approval through Cairn's /mcp with the official MCP Python SDK
(streamable HTTP), as an approver's MCP client would.

Usage: mcp_decide.py URL TOKEN CONVERSATION_ID APPROVAL_ID DECISION.
Prints the tool's answer; exits non-zero when the call failed.
"""

import asyncio
import sys

from mcp import ClientSession
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client


async def main(url: str, token: str, conversation: str, approval: str, decision: str) -> None:
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with http, streamable_http_client(url, http_client=http) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            result = await session.call_tool(
                "decide_approval",
                {"conversation_id": conversation, "approval_id": approval, "decision": decision},
            )
            text = " ".join(getattr(c, "text", "") for c in result.content)
            if result.is_error:
                raise SystemExit(f"decide_approval failed: {text}")
            print(f"decided {text}")


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
