"""The official OpenAI SDK, unchanged but for its base URL, against Leash's
unified API with another provider's models.

Usage: unified_check.py CASE BASE_URL API_KEY MODEL

Prints one JSON line with what was observed and exits non-zero when a check
fails. Extra request headers for the mock come from LEASH_TEST_HEADERS.
"""

import json
import os
import sys
import time

import openai

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
# A 1x1 PNG.
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def fail(msg):
    print(json.dumps({"ok": False, "error": msg}))
    sys.exit(1)


def client(base, key):
    headers = json.loads(os.environ.get("LEASH_TEST_HEADERS", "{}"))
    return openai.OpenAI(base_url=base, api_key=key, max_retries=0, default_headers=headers)


def ask(text):
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]


def case_chat(c, model):
    r = c.chat.completions.create(model=model, messages=ask("Say hello"), max_tokens=64)
    return {"text": r.choices[0].message.content, "finish": r.choices[0].finish_reason,
            "prompt_tokens": r.usage.prompt_tokens, "completion_tokens": r.usage.completion_tokens}


def case_stream(c, model):
    started = time.monotonic()
    pieces, usage, finish = [], None, None
    for chunk in c.chat.completions.create(model=model, messages=ask("Say hello"), stream=True,
                                           stream_options={"include_usage": True}):
        if chunk.usage:
            usage = chunk.usage.completion_tokens
        if chunk.choices:
            if chunk.choices[0].delta.content:
                pieces.append((time.monotonic(), chunk.choices[0].delta.content))
            finish = chunk.choices[0].finish_reason or finish
    if not pieces:
        fail("no content chunks")
    return {"text": "".join(t for _, t in pieces), "chunks": len(pieces), "finish": finish,
            "completion_tokens": usage, "first_chunk_s": pieces[0][0] - started,
            "last_chunk_s": pieces[-1][0] - started}


def tool_call(c, model, messages, stream):
    """One turn; returns (text, tool_calls as [{id, name, arguments}], finish)."""
    if not stream:
        r = c.chat.completions.create(model=model, messages=messages, tools=TOOLS)
        m = r.choices[0].message
        calls = [{"id": t.id, "name": t.function.name, "arguments": t.function.arguments}
                 for t in (m.tool_calls or [])]
        return m.content or "", calls, r.choices[0].finish_reason
    text, calls, finish = "", {}, None
    for chunk in c.chat.completions.create(model=model, messages=messages, tools=TOOLS, stream=True):
        if not chunk.choices:
            continue
        d = chunk.choices[0].delta
        text += d.content or ""
        for t in d.tool_calls or []:
            call = calls.setdefault(t.index, {"id": None, "name": "", "arguments": ""})
            call["id"] = t.id or call["id"]
            if t.function:
                call["name"] += t.function.name or ""
                call["arguments"] += t.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    return text, [calls[i] for i in sorted(calls)], finish


def round_trip(c, model, stream):
    messages = ask("What is the weather in Paris?")
    _, calls, finish = tool_call(c, model, messages, stream)
    if finish != "tool_calls" or len(calls) != 1 or calls[0]["name"] != "weather":
        fail(f"expected one weather call, got {calls} ({finish})")
    if json.loads(calls[0]["arguments"]) != {"city": "Paris"}:
        fail(f"arguments {calls[0]['arguments']}")
    messages.append({"role": "assistant", "content": None, "tool_calls": [
        {"id": calls[0]["id"], "type": "function",
         "function": {"name": "weather", "arguments": calls[0]["arguments"]}}]})
    messages.append({"role": "tool", "tool_call_id": calls[0]["id"], "content": json.dumps({"celsius": 21})})
    text, calls, finish = tool_call(c, model, messages, stream)
    if calls or not text:
        fail(f"expected a text answer after the tool result, got {calls!r} {text!r}")
    return {"text": text, "finish": finish}


def case_tools(c, model):
    return round_trip(c, model, False)


def case_tools_stream(c, model):
    return round_trip(c, model, True)


def case_image(c, model):
    r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in these images?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.test/cat.jpg"}},
    ]}])
    return {"text": r.choices[0].message.content}


def case_embed(c, model):
    r = c.embeddings.create(model=model, input=["first", "second"])
    vectors = [[round(x, 3) for x in d.embedding] for d in r.data]
    return {"text": "embeddings", "vectors": vectors}


def case_error(c, model):
    try:
        c.chat.completions.create(model=model, messages=ask("hi"))
    except openai.APIStatusError as e:
        return {"text": "error", "status": e.status_code, "message": str(e)}
    fail("no error raised")


def case_refused(c, model):
    try:
        c.chat.completions.create(model=model, messages=ask("hi"), logprobs=True)
    except openai.BadRequestError as e:
        return {"text": "refused", "status": e.status_code, "param": getattr(e, "param", None)}
    fail("no error raised")


CASES = {name[len("case_"):].replace("_", "-"): fn for name, fn in globals().items() if name.startswith("case_")}


def main():
    if len(sys.argv) != 5 or sys.argv[1] not in CASES:
        fail(f"usage: unified_check.py CASE BASE_URL API_KEY MODEL; cases: {sorted(CASES)}")
    case, base, key, model = sys.argv[1:5]
    result = CASES[case](client(base, key), model)
    result["ok"] = True
    print(json.dumps(result))


if __name__ == "__main__":
    main()
