"""Drive one official SDK through Leash with a tool-calling request.

Usage: tools_check.py PROVIDER BASE_URL API_KEY [stream]

PROVIDER is openai (chat completions), responses (OpenAI's Responses
API), unified (OpenAI's shape through Leash's unified API, served by
Anthropic), anthropic or google. The request offers two tools,
`shell` first, then `get_weather` (the mock calls the first one offered).
Prints one JSON line:
- {"ok": true, "called": [names], "calls": [{"name", "arguments"}],
   "texts": [[t, text]...], "arg_times": [t...]} — times in seconds since
   the call started, as each piece arrived (streams);
- {"ok": false, "status": N, "error": message} when the SDK raised the
  provider's error before the answer, or {"ok": false, "error": message,
  "error_at": t, ...what had arrived} when a stream ended with an error.
Extra request headers come from LEASH_TEST_HEADERS.
"""

import json
import sys
import time
import warnings

from sdk_check import anthropic_client, google_client, openai_client

warnings.simplefilter("ignore", DeprecationWarning)

PARAMS = {"type": "object", "properties": {"arg": {"type": "string"}}, "required": ["arg"]}
TOOLS = [("shell", "Run a shell command"), ("get_weather", "The weather in a city")]
ASK = "What is the weather in Paris?"


class Seen:
    def __init__(self):
        self.started = time.monotonic()
        self.texts = []
        self.arg_times = []
        self.calls = []

    def now(self):
        return time.monotonic() - self.started

    def text(self, t):
        if t:
            self.texts.append([self.now(), t])

    def call(self, name):
        self.calls.append({"name": name, "arguments": ""})

    def args(self, piece):
        if piece:
            self.arg_times.append(self.now())
            self.calls[-1]["arguments"] += piece

    def result(self):
        return {"called": [c["name"] for c in self.calls], "calls": self.calls, "texts": self.texts, "arg_times": self.arg_times}


def openai_case(base, key, stream, seen, model="gpt-4o-mini"):
    tools = [{"type": "function", "function": {"name": n, "description": d, "parameters": PARAMS}} for n, d in TOOLS]
    client = openai_client(base, key)
    msgs = [{"role": "user", "content": ASK}]
    if not stream:
        r = client.chat.completions.create(model=model, messages=msgs, tools=tools)
        for c in r.choices[0].message.tool_calls or []:
            seen.call(c.function.name)
            seen.args(c.function.arguments)
        return
    for chunk in client.chat.completions.create(model=model, messages=msgs, tools=tools, stream=True):
        for choice in chunk.choices:
            seen.text(choice.delta.content)
            for c in choice.delta.tool_calls or []:
                if c.function and c.function.name:
                    seen.call(c.function.name)
                if c.function and c.function.arguments:
                    seen.args(c.function.arguments)


def responses_case(base, key, stream, seen):
    tools = [{"type": "function", "name": n, "description": d, "parameters": PARAMS} for n, d in TOOLS]
    kw = dict(model="gpt-4o-mini", input=ASK, tools=tools)
    client = openai_client(base, key)
    if not stream:
        for item in client.responses.create(**kw).output:
            if item.type == "function_call":
                seen.call(item.name)
                seen.args(item.arguments)
        return
    # The SDK builds its stream event types on first use (~0.7 s, measured):
    # built before the clock starts, so the times measure Leash, not that.
    from openai._models import construct_type
    from openai.types.responses import ResponseStreamEvent

    for kind in ("response.output_text.delta", "response.function_call_arguments.delta"):
        construct_type(type_=ResponseStreamEvent, value={"type": kind, "delta": "", "item_id": "x", "output_index": 0})
    seen.started = time.monotonic()
    for ev in client.responses.create(stream=True, **kw):
        if ev.type == "response.output_text.delta":
            seen.text(ev.delta)
        elif ev.type == "response.output_item.added" and ev.item.type == "function_call":
            seen.call(ev.item.name)
        elif ev.type == "response.function_call_arguments.delta":
            seen.args(ev.delta)
        elif ev.type == "error":
            raise RuntimeError(f"error event: {ev.message}")


def anthropic_case(base, key, stream, seen):
    tools = [{"name": n, "description": d, "input_schema": PARAMS} for n, d in TOOLS]
    client = anthropic_client(base, key)
    kw = dict(model="claude-sonnet-4-5", max_tokens=64, tools=tools, messages=[{"role": "user", "content": ASK}])
    if not stream:
        r = client.messages.create(**kw)
        for b in r.content:
            if b.type == "tool_use":
                seen.call(b.name)
                seen.args(json.dumps(b.input, separators=(",", ":")))
        return
    for ev in client.messages.create(stream=True, **kw):
        if ev.type == "content_block_start" and ev.content_block.type == "tool_use":
            seen.call(ev.content_block.name)
        elif ev.type == "content_block_delta" and ev.delta.type == "text_delta":
            seen.text(ev.delta.text)
        elif ev.type == "content_block_delta" and ev.delta.type == "input_json_delta":
            seen.args(ev.delta.partial_json)


def google_case(base, key, stream, seen):
    from google.genai import types

    decls = [types.FunctionDeclaration(name=n, description=d, parameters=PARAMS) for n, d in TOOLS]
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=decls)],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    client = google_client(base, key)  # kept: the SDK closes a collected client
    kw = dict(model="gemini-2.5-flash", contents=ASK, config=config)
    chunks = client.models.generate_content_stream(**kw) if stream else [client.models.generate_content(**kw)]
    for r in chunks:
        for p in (r.candidates[0].content.parts or []) if r.candidates else []:
            if p.function_call:
                seen.call(p.function_call.name)
                seen.args(json.dumps(p.function_call.args, separators=(",", ":")))
            elif p.text:
                seen.text(p.text)


def main():
    provider, base, key = sys.argv[1:4]
    stream = len(sys.argv) > 4 and sys.argv[4] == "stream"
    case = {
        "openai": openai_case,
        "responses": responses_case,
        # The unified API: OpenAI's shape, served by Anthropic.
        "unified": lambda *a: openai_case(*a, model="anthropic/claude-sonnet-4-5"),
        "anthropic": anthropic_case,
        "google": google_case,
    }[provider]
    seen = Seen()
    try:
        case(base, key, stream, seen)
    except Exception as e:  # the SDK's own error type for a provider error
        status = getattr(e, "status_code", None) or getattr(e, "code", None)
        out = {"ok": False, "error": f"{type(e).__name__}: {e}", "error_at": seen.now(), **seen.result()}
        if isinstance(status, int) and status != 200:
            out["status"] = status
        print(json.dumps(out))
        return
    print(json.dumps({"ok": True, **seen.result()}))


if __name__ == "__main__":
    main()
