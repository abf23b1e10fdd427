"""One call as an application makes it, with no CA or proxy setting.

Usage: trust_check.py requests|openai|anthropic
Prints "ok <text>" and exits 0, or "error <what>" and exits 1.
"""

import sys

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}


def main(which):
    if which == "requests":
        import requests

        r = requests.post(
            "https://api.openai.com/v1/chat/completions",
            json=BODY,
            headers={"authorization": "Bearer sk-test"},
            timeout=15,
        )
        return r.json()["choices"][0]["message"]["content"]
    if which == "openai":
        import openai

        client = openai.OpenAI(api_key="sk-test", max_retries=0, timeout=15)
        r = client.chat.completions.create(**BODY)
        return r.choices[0].message.content
    if which == "anthropic":
        import anthropic

        client = anthropic.Anthropic(api_key="sk-ant-test", max_retries=0, timeout=15)
        r = client.messages.create(
            model="claude-3-5-haiku-latest", max_tokens=64, messages=BODY["messages"]
        )
        return r.content[0].text
    raise SystemExit(f"unknown client {which}")


try:
    print(f"ok {main(sys.argv[1])}")
except Exception as e:  # noqa: BLE001 - the test reads what failed
    print(f"error {type(e).__name__}: {e}")
    sys.exit(1)
