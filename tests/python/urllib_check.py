"""Python's own urllib (no third-party package), as an application calls
it: on Python 3.13+ the default context verifies X.509 strictly. Prints the
status and exits 0 on 200, else exits 1."""

import json
import sys
import urllib.request

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
req = urllib.request.Request(
    "https://api.openai.com/v1/chat/completions",
    data=json.dumps(BODY).encode(),
    headers={"content-type": "application/json", "authorization": "Bearer sk-test"},
)
try:
    with urllib.request.urlopen(req, timeout=15) as r:
        print(r.status)
        sys.exit(0 if r.status == 200 else 1)
except Exception as e:  # noqa: BLE001 - the test reads what failed
    print(f"error {type(e).__name__}: {e}")
    sys.exit(1)
