"""Drive one official SDK through Leash with a tool-calling request.

Usage: tools_check.py PROVIDER BASE_URL API_KEY

PROVIDER is openai, anthropic or google. The request offers two tools,
`shell` first, then `get_weather` (the mock calls the first one offered).
Prints one JSON line: {"ok": true, "called": [tool names the answer calls]}
or, when the SDK raised the provider's error, {"ok": false, "status": N,
"error": message}. Extra request headers come from LEASH_TEST_HEADERS.
"""

import json
import sys
import warnings

from sdk_check import anthropic_client, google_client, openai_client

warnings.simplefilter("ignore", DeprecationWarning)

PARAMS = {"type": "object", "properties": {"arg": {"type": "string"}}, "required": ["arg"]}
TOOLS = [("shell", "Run a shell command"), ("get_weather", "The weather in a city")]


def openai_case(base, key):
    tools = [{"type": "function", "function": {"name": n, "description": d, "parameters": PARAMS}} for n, d in TOOLS]
    r = openai_client(base, key).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "What is the weather in Paris?"}], tools=tools
    )
    return [c.function.name for c in r.choices[0].message.tool_calls or []]


def anthropic_case(base, key):
    tools = [{"name": n, "description": d, "input_schema": PARAMS} for n, d in TOOLS]
    r = anthropic_client(base, key).messages.create(
        model="claude-sonnet-4-5",
        max_tokens=64,
        tools=tools,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
    )
    return [b.name for b in r.content if b.type == "tool_use"]


def google_case(base, key):
    from google.genai import types

    decls = [types.FunctionDeclaration(name=n, description=d, parameters=PARAMS) for n, d in TOOLS]
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=decls)],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    client = google_client(base, key)  # kept: the SDK closes a collected client
    r = client.models.generate_content(
        model="gemini-2.5-flash", contents="What is the weather in Paris?", config=config
    )
    return [p.function_call.name for p in r.candidates[0].content.parts if p.function_call]


def main():
    provider, base, key = sys.argv[1:4]
    case = {"openai": openai_case, "anthropic": anthropic_case, "google": google_case}[provider]
    try:
        called = case(base, key)
    except Exception as e:  # the SDK's own error type for a provider error
        status = getattr(e, "status_code", None) or getattr(e, "code", None)
        if not isinstance(status, int):
            print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))
            sys.exit(1)
        print(json.dumps({"ok": False, "status": status, "error": str(e)}))
        return
    print(json.dumps({"ok": True, "called": called}))


if __name__ == "__main__":
    main()
