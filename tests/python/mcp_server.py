"""An MCP server (the official SDK, Streamable HTTP) for the tests.

Usage: mcp_server.py PORT CALLS_FILE [ADDRESS CERT_PEM KEY_PEM]

Serves three tools, `read_file`, `shell` and `read_secret` (its answer
carries a fake AWS key), at http://127.0.0.1:PORT/mcp — or, given an
address and a certificate, at https://ADDRESS:PORT/mcp —
and appends one JSON line per tool call it runs to CALLS_FILE (so a test
can show that a refused call never reached it).
"""

import asyncio
import json
import sys

from mcp.server.mcpserver import Context, MCPServer

PORT, CALLS = int(sys.argv[1]), sys.argv[2]
app = MCPServer("ops")


def ran(tool, arg):
    with open(CALLS, "a") as f:
        f.write(json.dumps({"tool": tool, "arg": arg}) + "\n")


@app.tool()
def read_file(path: str) -> str:
    """Read a file."""
    ran("read_file", path)
    return f"contents of {path}"


@app.tool()
def shell(cmd: str) -> str:
    """Run a shell command."""
    ran("shell", cmd)
    return f"ran {cmd}"


@app.tool()
def read_secret() -> str:
    """Read the deploy key."""
    ran("read_secret", "")
    return "deploy key AKIAZ7QX3PLM9V2KD4RT"


@app.tool()
async def slow_steps(steps: int, ctx: Context) -> str:
    """Work in steps, reporting progress after each (0.3 s apart)."""
    ran("slow_steps", str(steps))
    for i in range(steps):
        await asyncio.sleep(0.3)
        await ctx.report_progress(i + 1, steps)
    return f"{steps} steps done"


if len(sys.argv) > 3:
    import uvicorn

    host, cert, key = sys.argv[3:6]
    uvicorn.run(
        app.streamable_http_app(host=host),
        host=host,
        port=PORT,
        ssl_certfile=cert,
        ssl_keyfile=key,
        log_level="warning",
    )
else:
    app.run(transport="streamable-http", host="127.0.0.1", port=PORT)
