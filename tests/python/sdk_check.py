"""Drive one official provider SDK through Leash and check what it returns.

Usage: sdk_check.py CASE BASE_URL API_KEY [EXPECTED_TEXT]

Prints one JSON line with what was observed (text, chunk count, chunk
arrival times) and exits non-zero when the SDK call or a check fails.
Extra request headers for the mock come from LEASH_TEST_HEADERS (JSON).
"""

import json
import os
import sys
import time
import warnings

# SDKs warn about model deprecation dates; the mock does not care.
warnings.simplefilter("ignore", DeprecationWarning)


def headers():
    return json.loads(os.environ.get("LEASH_TEST_HEADERS", "{}"))


def prompt():
    """The user's text; tests put secrets or PII here."""
    return os.environ.get("LEASH_TEST_PROMPT", "Say hello")


def fail(msg):
    print(json.dumps({"ok": False, "error": msg}))
    sys.exit(1)


def stream_result(pieces, started):
    """pieces: list of (arrival_time, text)."""
    if not pieces:
        fail("stream delivered no chunks")
    return {
        "text": "".join(t for _, t in pieces),
        "chunks": len(pieces),
        "first_chunk_s": pieces[0][0] - started,
        "last_chunk_s": pieces[-1][0] - started,
    }


def openai_client(base, key):
    import openai

    return openai.OpenAI(base_url=base, api_key=key, max_retries=0, default_headers=headers())


def anthropic_client(base, key):
    import anthropic

    return anthropic.Anthropic(base_url=base, api_key=key, max_retries=0, default_headers=headers())


def google_client(base, key):
    from google import genai
    from google.genai import types

    return genai.Client(
        api_key=key,
        http_options=types.HttpOptions(base_url=base, headers=headers(), retry_options=types.HttpRetryOptions(attempts=1)),
    )


def case_openai_chat(base, key):
    r = openai_client(base, key).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": prompt()}]
    )
    return {"text": r.choices[0].message.content, "prompt_tokens": r.usage.prompt_tokens}


def case_openai_chat_stream(base, key):
    client = openai_client(base, key)
    started = time.monotonic()
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": prompt()}], stream=True
    )
    pieces = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append((time.monotonic(), chunk.choices[0].delta.content))
    return stream_result(pieces, started)


def case_openai_responses(base, key):
    r = openai_client(base, key).responses.create(model="gpt-4.1-mini", input=prompt())
    return {"text": r.output_text}


def case_openai_responses_stream(base, key):
    client = openai_client(base, key)
    started = time.monotonic()
    pieces = []
    completed = False
    for event in client.responses.create(model="gpt-4.1-mini", input=prompt(), stream=True):
        if event.type == "response.output_text.delta":
            pieces.append((time.monotonic(), event.delta))
        elif event.type == "response.completed":
            completed = True
    if not completed:
        fail("no response.completed event")
    return stream_result(pieces, started)


def case_openai_embeddings(base, key):
    r = openai_client(base, key).embeddings.create(model="text-embedding-3-small", input=prompt())
    vec = r.data[0].embedding
    if [round(x, 3) for x in vec] != [0.125, -0.5, 0.25]:
        fail(f"unexpected embedding {vec}")
    return {"text": "embedding ok", "dimensions": len(vec)}


def case_anthropic(base, key):
    r = anthropic_client(base, key).messages.create(
        model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": prompt()}]
    )
    return {"text": "".join(b.text for b in r.content if b.type == "text"), "input_tokens": r.usage.input_tokens}


def case_anthropic_stream(base, key):
    client = anthropic_client(base, key)
    started = time.monotonic()
    pieces = []
    with client.messages.stream(
        model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": prompt()}]
    ) as stream:
        for text in stream.text_stream:
            pieces.append((time.monotonic(), text))
        final = stream.get_final_message()
    result = stream_result(pieces, started)
    result["output_tokens"] = final.usage.output_tokens
    return result


def case_google(base, key):
    client = google_client(base, key)
    r = client.models.generate_content(model="gemini-2.5-flash", contents=prompt())
    return {"text": r.text, "prompt_tokens": r.usage_metadata.prompt_token_count}


def case_google_stream(base, key):
    client = google_client(base, key)
    started = time.monotonic()
    pieces = []
    for chunk in client.models.generate_content_stream(model="gemini-2.5-flash", contents=prompt()):
        if chunk.text:
            pieces.append((time.monotonic(), chunk.text))
    return stream_result(pieces, started)


def expect_error(call, status):
    """Runs call() expecting the SDK's ordinary error for `status`."""
    try:
        call()
    except Exception as e:  # noqa: BLE001 - we report any SDK error class
        code = getattr(e, "status_code", None) or getattr(e, "code", None)
        if code is None and hasattr(e, "response") and e.response is not None:
            code = getattr(e.response, "status_code", None)
        return {"error_class": type(e).__name__, "status": code, "message": str(e)}
    fail(f"expected an error with status {status}, got success")


def case_openai_error(base, key):
    return expect_error(lambda: case_openai_chat(base, key), None)


def case_anthropic_error(base, key):
    return expect_error(lambda: case_anthropic(base, key), None)


def case_google_error(base, key):
    return expect_error(lambda: case_google(base, key), None)


def case_openai_chat_stream_error(base, key):
    return expect_error(lambda: case_openai_chat_stream(base, key), None)


def case_anthropic_stream_error(base, key):
    return expect_error(lambda: case_anthropic_stream(base, key), None)


def case_google_stream_error(base, key):
    return expect_error(lambda: case_google_stream(base, key), None)


CASES = {name[len("case_"):].replace("_", "-"): fn for name, fn in globals().items() if name.startswith("case_")}


def main():
    if len(sys.argv) < 4 or sys.argv[1] not in CASES:
        fail(f"usage: sdk_check.py CASE BASE_URL API_KEY [EXPECTED_TEXT]; cases: {sorted(CASES)}")
    case, base, key = sys.argv[1:4]
    expected = sys.argv[4] if len(sys.argv) > 4 else None
    result = CASES[case](base, key)
    if expected is not None and result.get("text") != expected:
        fail(f"expected text {expected!r}, got {result.get('text')!r}")
    result["ok"] = True
    print(json.dumps(result))


if __name__ == "__main__":
    main()
