"""Drive an MCP server through Leash with the official MCP client SDK.

Usage: mcp_check.py URL TEAM CALLS

CALLS is a JSON list of [tool, arguments]. Each call is made on a session
of its own, before any listing (the client would otherwise refuse, on its
own, a tool the listing left out); then the tools are listed. Prints one
JSON line: {"tools": [names], "results": [{"tool", "ok", "text" | "error",
"progress_at", "done_at"}]} — the times (seconds since the call was sent)
at which each progress notification and the result arrived.
The request header `x-leash-team: TEAM` names the caller's team.
"""

import asyncio
import json
import sys
import time

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def describe(e):
    """The error, with what an exception group holds (the SDK's task groups)."""
    if isinstance(e, BaseExceptionGroup):
        return "; ".join(describe(x) for x in e.exceptions)
    return f"{type(e).__name__}: {e}"


def client(url, team):
    http = create_mcp_http_client(headers={"x-leash-team": team})
    return Client(streamable_http_client(url, http_client=http))


async def main(url, team, calls):
    results = []
    for tool, args in calls:
        progress = []
        try:
            async with client(url, team) as c:
                start = time.monotonic()

                async def seen(done, total, message):
                    progress.append(time.monotonic() - start)

                r = await c.call_tool(tool, args, progress_callback=seen)
                done_at = time.monotonic() - start
            text = "".join(getattr(p, "text", "") for p in r.content)
            results.append({"tool": tool, "ok": not r.is_error, "text": text, "progress_at": progress, "done_at": done_at})
        except Exception as e:  # the SDK raises the JSON-RPC error
            results.append({"tool": tool, "ok": False, "error": describe(e)})
    async with client(url, team) as c:
        tools = [t.name for t in (await c.list_tools()).tools]
    print(json.dumps({"tools": tools, "results": results}))


asyncio.run(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])))
