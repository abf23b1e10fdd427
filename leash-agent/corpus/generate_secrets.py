"""Generates the labelled secrets corpus (secrets.jsonl) with a fixed seed.

Written from each vendor's documented token format (prefix, length,
alphabet, checksum), independently of the detectors in
leash-agent/src/policy/detect/: the corpus is the oracle they are measured
against. For every kind: positives in the sentences people paste
credentials in, and hard negatives that look like it — truncated tokens,
documented placeholders, a changed prefix, a random string of the same
length — plus look-alikes of no kind (hashes, UUIDs, digests, SRI hashes,
template references, the vendors' own documentation examples).

Each line: {"text", "labels": [kind] or [], "kind", "role"}.
Run: python3 generate_secrets.py > secrets.jsonl
"""

import base64
import hashlib
import json
import random
import re
import string
import urllib.parse
import uuid
import zlib

R = random.Random(20261130)
LOWER = string.ascii_lowercase
UPPER = string.ascii_uppercase
DIGITS = string.digits
ALNUM = string.ascii_letters + DIGITS
TOKEN = ALNUM + "-_"
HEX = "0123456789abcdef"
BASE62 = DIGITS + UPPER + LOWER
BECH32 = "QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L"
out = []


def rand(chars, n):
    return "".join(R.choice(chars) for _ in range(n))


def b64(n):
    return base64.b64encode(R.randbytes(n)).decode()


def b64url(data):
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def base62_crc32(prefix):
    """GitHub / npm: 30 random base62 characters, then CRC32 of those in
    base62, zero-padded to 6 (github.blog, 2021-04-05 and 2021-09-23)."""
    body = rand(ALNUM, 30)
    n = zlib.crc32(body.encode())
    check = ""
    for _ in range(6):
        check = BASE62[n % 62] + check
        n //= 62
    return prefix + body + check


def jwt(alg="HS256"):
    head = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    payload = b64url(json.dumps({"sub": str(R.randint(1, 10**9)), "iat": R.randint(1_600_000_000, 1_900_000_000)}).encode())
    return f"{head}.{payload}.{b64url(R.randbytes(32 if alg == 'HS256' else 64))}"


def pem(kind, escaped=False):
    body = base64.b64encode(R.randbytes(R.randint(120, 400))).decode()
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    nl = "\\n" if escaped else "\n"
    return f"-----BEGIN {kind}PRIVATE KEY-----{nl}{nl.join(lines)}{nl}-----END {kind}PRIVATE KEY-----"


# Each kind: a function making (fragment, token) — the text that carries
# the secret and the secret itself — and, optionally, what differs for its
# negatives: "context" (found by the words around it: the fragment is used
# whole), "variable" (a variable-length format: a truncated token is still
# a token), or a function of its own making hard negatives.
KINDS = {}


def kind(name, context=False, variable=False, negatives=None):
    def wrap(make):
        KINDS[name] = dict(make=make, context=context, variable=variable, negatives=negatives)
        return make
    return wrap


def token(name, make, **kw):
    kind(name, **kw)(lambda: (lambda t: (t, t))(make()))


# --- cloud -------------------------------------------------------------------
token("aws_access_key", lambda: R.choice(["AKIA", "ASIA"]) + rand(UPPER + "234567", 16))
kind("aws_secret_key", context=True)(lambda: (lambda v: (R.choice(["aws_secret_access_key = ", "AWS_SECRET_ACCESS_KEY=", "aws secret key: "]) + v, v))(rand(ALNUM + "/+", 40)))
kind("gcp_service_account", negatives=lambda: [
    '{"type": "service_account", "project_id": "acme-prod", "private_key_id": "<key id>"}',
    '{"type": "service_account", "private_key_id": "' + rand(HEX, 20) + '"}',
    '"private_key_id" is the field that names the key',
    '{"type": "service_account", "private_key_id": "' + "0" * 40 + '"}',
    '{"type": "authorized_user", "client_id": "' + rand(DIGITS, 21) + '.apps.googleusercontent.com"}',
])(lambda: (lambda k: ('{"type": "service_account", "project_id": "acme-prod", "private_key_id": "' + k + '", "client_id": "' + rand(DIGITS, 21) + '"}', k))(rand(HEX, 40)))
token("google_api_key", lambda: "AIza" + rand(TOKEN, 35))
token("google_oauth_client_secret", lambda: "GOCSPX-" + rand(TOKEN, 28))
token("google_oauth_token", lambda: "ya29." + rand(TOKEN, 60), variable=True)
kind("azure_storage_key", negatives=lambda: [
    "DefaultEndpointsProtocol=https;AccountName=acmeprod;AccountKey=<your-account-key>;EndpointSuffix=core.windows.net",
    "DefaultEndpointsProtocol=https;AccountName=acmeprod;AccountKey=" + b64(48) + ";EndpointSuffix=core.windows.net",
    "Set AccountKey= to the key from the portal",
    "UseDevelopmentStorage=true",
    "AccountName=acmeprod;AccountKey=" + "A" * 86 + "==",
])(lambda: (lambda k: (f"DefaultEndpointsProtocol=https;AccountName=acme{rand(LOWER, 4)};AccountKey={k};EndpointSuffix=core.windows.net", k))(b64(64)))


def sas(sig_bytes=32, sig=None):
    s = sig or urllib.parse.quote(base64.b64encode(R.randbytes(sig_bytes)).decode(), safe="")
    return f"https://acme.blob.core.windows.net/exports/report.csv?sv=2022-11-02&ss=b&srt=o&sp=r&se=2026-12-31T00:00:00Z&spr=https&sig={s}"


kind("azure_sas_token", negatives=lambda: [sas(16), sas(sig="<signature>"), "https://acme.blob.core.windows.net/exports/report.csv", "the sig= parameter carries the signature"])(
    lambda: (lambda u: (u, u.split("sig=")[1]))(sas()))
def azure_ad_negatives():
    t = rand(ALNUM, 3) + R.choice(DIGITS) + "Q~" + rand(ALNUM, 34)
    return [t.replace("Q~", "QQ"), t[:20], "xxx1Q~" + "x" * 34, "the secret value has Q~ after four characters"]


token("azure_ad_client_secret", lambda: rand(ALNUM, 3) + R.choice(DIGITS) + "Q~" + rand(ALNUM + "_~.-", 34), negatives=azure_ad_negatives)
token("digitalocean_token", lambda: R.choice(["dop", "doo", "dor"]) + "_v1_" + rand(HEX, 64))
token("cloudflare_origin_ca_key", lambda: "v1.0-" + rand(HEX, 24) + "-" + rand(HEX, 146))
kind("cloudflare_api_token", context=True)(lambda: (lambda v: (R.choice(["CLOUDFLARE_API_TOKEN=", "cloudflare token: ", "CLOUDFLARE_API_KEY="]) + v, v))(rand(TOKEN, 40)))
token("alibaba_access_key", lambda: "LTAI" + rand(ALNUM, R.choice([16, 20])), variable=True)
token("heroku_api_key", lambda: "HRKU-" + rand(TOKEN, 60))
token("terraform_cloud_token", lambda: rand(ALNUM, 14) + ".atlasv1." + rand(TOKEN, 67), variable=True, negatives=lambda: [
    rand(ALNUM, 14) + ".atlasv2." + rand(TOKEN, 67), rand(ALNUM, 14) + ".atlasv1.", "x" * 14 + ".atlasv1." + "x" * 67, "team tokens end in .atlasv1. and more"])
token("vault_token", lambda: R.choice(["hvs.", "hvb."]) + rand(TOKEN, 90), variable=True)
token("doppler_token", lambda: "dp." + R.choice(["pt", "st", "sa"]) + "." + rand(ALNUM, 43), variable=True)
token("pulumi_token", lambda: "pul-" + rand(HEX, 40))
token("supabase_token", lambda: "sbp_" + rand(HEX, 40))
token("planetscale_token", lambda: "pscale_" + R.choice(["tkn", "pw"]) + "_" + rand(ALNUM, 43), variable=True)
# --- code and packages -------------------------------------------------------


def github_negatives():
    good = base62_crc32("ghp_")
    wrong = good[:-1] + ("A" if good[-1] != "A" else "B")
    return [f"this token fails: {wrong}", "tokens start with ghp_ or github_pat_", "ghp_" + "x" * 36, "ghp_" + good[4:20]]


token("github_token", lambda: base62_crc32(R.choice(["ghp_", "gho_", "ghu_", "ghs_", "ghr_"])), negatives=github_negatives)
token("github_fine_grained_pat", lambda: "github_pat_" + rand(ALNUM, 22) + "_" + rand(ALNUM, 59))
token("gitlab_token", lambda: R.choice(["glpat-", "gldt-", "glptt-", "glrt-", "gloas-"]) + rand(TOKEN, 20), variable=True)
token("bitbucket_app_password", lambda: "ATBB" + rand(ALNUM, 32))
token("atlassian_api_token", lambda: "ATATT3xFfGF0" + rand(TOKEN, 170) + "=" + rand(HEX.upper(), 8), variable=True)


def npm_negatives():
    good = base62_crc32("npm_")
    wrong = good[:-1] + ("A" if good[-1] != "A" else "B")
    return [f"npm ERR! token {wrong} rejected", "npm_" + "x" * 36, "run npm_config_registry=https://registry.npmjs.org", "npm_" + good[4:22]]


token("npm_token", lambda: base62_crc32("npm_"), negatives=npm_negatives)
token("pypi_token", lambda: R.choice(["pypi-AgEIcHlwaS5vcmc", "pypi-AgENdGVzdC5weXBpLm9yZw"]) + rand(TOKEN, 110), variable=True, negatives=lambda: [
    "pypi-AgEIcHlwaS5vcmc" + rand(TOKEN, 20), "pypi-" + rand(TOKEN, 120), "pip install pypi-simple", "pypi-AgEIcHlwaS5vcmc<rest of token>"])
token("rubygems_token", lambda: "rubygems_" + rand(HEX, 48))
token("dockerhub_token", lambda: "dckr_pat_" + rand(TOKEN, 27))
token("huggingface_token", lambda: R.choice(["hf_", "api_org_"]) + rand(string.ascii_letters, 34))
token("nuget_key", lambda: "oy2" + rand(LOWER + DIGITS, 43))
token("clojars_token", lambda: "CLOJARS_" + rand(LOWER + DIGITS, 60))
token("crates_io_token", lambda: "cio" + rand(ALNUM, 32))
token("sonarqube_token", lambda: R.choice(["sqp_", "sqa_", "squ_"]) + rand(HEX, 40))
token("postman_api_key", lambda: "PMAK-" + rand(HEX, 24) + "-" + rand(HEX, 34))
token("grafana_token", lambda: R.choice(["glsa_" + rand(ALNUM, 32) + "_" + rand(HEX, 8), "glc_" + rand(ALNUM + "+/", 80) + "="]), variable=True)
token("sentry_token", lambda: R.choice(["sntryu_" + rand(HEX, 64), "sntrys_" + rand(ALNUM + "+/", 100) + "=="]), variable=True)
# --- SaaS and payments -------------------------------------------------------
token("slack_token", lambda: R.choice([
    f"xoxb-{rand(DIGITS, 12)}-{rand(DIGITS, 13)}-{rand(ALNUM, 24)}",
    f"xoxp-{rand(DIGITS, 12)}-{rand(DIGITS, 12)}-{rand(DIGITS, 13)}-{rand(HEX, 32)}",
    f"xapp-1-A{rand(UPPER + DIGITS, 10)}-{rand(DIGITS, 13)}-{rand(HEX, 64)}",
]), variable=True)
token("slack_webhook", lambda: f"https://hooks.slack.com/services/T{rand(UPPER + DIGITS, 10)}/B{rand(UPPER + DIGITS, 10)}/{rand(ALNUM, 24)}", negatives=lambda: [
    "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
    "https://hooks.slack.com/services/...", "post to hooks.slack.com with your webhook URL",
    f"https://hooks.slack.com/services/T{rand(UPPER + DIGITS, 10)}/B{rand(UPPER + DIGITS, 10)}/{rand(ALNUM, 12)}"])
token("discord_webhook", lambda: f"https://discord.com/api/webhooks/{rand('123456789', 1)}{rand(DIGITS, 18)}/{rand(TOKEN, 68)}", negatives=lambda: [
    "https://discord.com/api/webhooks/{id}/{token}", f"https://discord.com/api/webhooks/{rand(DIGITS, 19)}",
    "see https://discord.com/developers/docs/resources/webhook", f"https://discord.com/api/webhooks/{rand(DIGITS, 19)}/{rand(TOKEN, 20)}"])
token("discord_bot_token", lambda: b64url((rand("123456789", 1) + rand(DIGITS, 17)).encode()) + "." + rand(TOKEN, 6) + "." + rand(TOKEN, 38), negatives=lambda: [
    b64url(rand(ALNUM, 18).encode()) + "." + rand(TOKEN, 6) + "." + rand(TOKEN, 38),
    "Bot MTk4NjIyNDgzNDcxOTI1MjQ4.Cl2FMQ.<token>", "file.name.with.dots.in.it", rand(ALNUM, 24) + "." + rand(ALNUM, 6)])
token("telegram_bot_token", lambda: rand("123456789", 1) + rand(DIGITS, 9) + ":AA" + rand(TOKEN, 33), negatives=lambda: [
    rand("123456789", 1) + rand(DIGITS, 8) + ":BB" + rand(TOKEN, 33), rand("123456789", 1) + rand(DIGITS, 9) + ":AA" + rand(TOKEN, 10),
    "123456789:AA" + "x" * 33, "bot tokens look like 123456:ABC-DEF"])
token("stripe_key", lambda: R.choice(["sk_live_", "rk_live_", "sk_test_"]) + rand(ALNUM, R.choice([24, 99])), variable=True, negatives=lambda: [
    "pk_live_" + rand(ALNUM, 24), "sk_live_" + "x" * 24, "use sk_live_ keys only on the server", "sk_live_" + rand(ALNUM, 12)])
token("stripe_webhook_secret", lambda: "whsec_" + rand(ALNUM, 32), variable=True)
token("twilio_api_key", lambda: "SK" + rand(HEX, 32))
token("sendgrid_key", lambda: "SG." + rand(TOKEN, 22) + "." + rand(TOKEN, 43))
token("mailgun_key", lambda: "key-" + rand(HEX, 32))
token("mailchimp_key", lambda: rand(HEX, 32) + "-us" + str(R.randint(1, 21)), negatives=lambda: [
    rand(HEX, 32) + "-uk1", rand(HEX, 20) + "-us5", "0" * 32 + "-us6", "the key ends in -us21 for the data centre"])
token("shopify_token", lambda: R.choice(["shpat_", "shpca_", "shppa_", "shpss_"]) + rand(HEX, 32))
kind("datadog_key", context=True)(lambda: (lambda v: (R.choice(["DD_API_KEY=", "datadog api key: ", "DD_APP_KEY="]) + v, v))(rand(HEX, R.choice([32, 40]))))
token("new_relic_key", lambda: R.choice(["NRAK-" + rand(UPPER + DIGITS, 27), "NRJS-" + rand(HEX, 19), rand(HEX, 36) + "NRAL"]), negatives=lambda: [
    "NRAK-" + "X" * 27, "NRAK-" + rand(UPPER + DIGITS, 12), rand(HEX, 36) + "NRAX", "NRJS-" + rand(HEX, 10)])
kind("pagerduty_key", context=True)(lambda: (lambda v: (R.choice(["PAGERDUTY_API_TOKEN=", "pagerduty key: ", "PAGERDUTY_TOKEN="]) + v, v))(rand(ALNUM, 2) + rand(TOKEN + "+", 17) + rand(ALNUM, 1)))
token("linear_key", lambda: "lin_api_" + rand(ALNUM, 40))
token("notion_token", lambda: R.choice(["ntn_" + rand(DIGITS, 11) + rand(ALNUM, 35), "secret_" + rand(ALNUM, 43)]))
token("airtable_token", lambda: "pat" + rand(ALNUM, 14) + "." + rand(HEX, 64))
token("square_token", lambda: R.choice(["EAAA" + rand(TOKEN, 60), "sq0csp-" + rand(TOKEN, 43)]))
token("braintree_token", lambda: "access_token$production$" + rand(LOWER + DIGITS, 16) + "$" + rand(HEX, 32))
token("dropbox_token", lambda: "sl." + rand(TOKEN, 140), variable=True)
# --- AI providers ------------------------------------------------------------
token("openrouter_key", lambda: "sk-or-v1-" + rand(HEX, 64))
token("anthropic_key", lambda: "sk-ant-api03-" + rand(TOKEN, 93) + "AA", variable=True)
token("openai_key", lambda: R.choice([
    "sk-proj-" + rand(TOKEN, 156), "sk-svcacct-" + rand(TOKEN, 120), "sk-" + rand(ALNUM, 20) + "T3BlbkFJ" + rand(ALNUM, 20)]), variable=True)
token("groq_key", lambda: "gsk_" + rand(ALNUM, 52))
token("xai_key", lambda: "xai-" + rand(ALNUM, 80))
token("replicate_token", lambda: "r8_" + rand(ALNUM, 37))
token("perplexity_key", lambda: "pplx-" + rand(ALNUM, 48))
token("langsmith_key", lambda: R.choice(["lsv2_pt_", "lsv2_sk_"]) + rand(HEX, 32) + "_" + rand(HEX, 10))
token("pinecone_key", lambda: "pcsk_" + rand(ALNUM, 5) + "_" + rand(ALNUM, 64), variable=True)
token("nvidia_key", lambda: "nvapi-" + rand(TOKEN, 64))
kind("mistral_key", context=True)(lambda: (lambda v: (R.choice(["MISTRAL_API_KEY=", "mistral key: ", "Mistral API key = "]) + v, v))(rand(ALNUM, 32)))
kind("cohere_key", context=True)(lambda: (lambda v: (R.choice(["COHERE_API_KEY=", "cohere key: ", "Cohere API key = "]) + v, v))(rand(ALNUM, 40)))
# --- databases ---------------------------------------------------------------
PASSWORD = ALNUM + "!#%^*-_~"


def db_url():
    pw = rand(ALNUM, 2) + rand(PASSWORD, R.randint(8, 18))
    scheme, host = R.choice([
        ("postgres", "db-primary:5432/app"), ("postgresql", "10.0.3.7:5432/orders"), ("mysql", "mysql-01:3306/shop"),
        ("mongodb+srv", "cluster0.ab12c.mongodb.net/prod"), ("redis", "cache-01:6379/0"), ("amqp", "rabbit:5672/vhost"),
        ("mariadb", "db-02:3306/app"), ("rediss", "cache.internal:6380"),
    ])
    user = "" if scheme.startswith("redis") and R.random() < 0.5 else R.choice(["admin", "app", "root", "svc_api"])
    return f"{scheme}://{user}:{pw}@{host}", pw


kind("database_url", negatives=lambda: [
    "postgres://user:password@localhost/db", "postgres://app:${DB_PASSWORD}@db-primary/app", "mysql://root:<password>@mysql-01:3306/shop",
    "postgres://app:****@db-primary/app", "postgres://localhost:5432/app", "redis://cache-01:6379/0",
    "mongodb://admin:pass@mongo/admin", "amqp://guest@rabbit:5672",
])(db_url)


def conn_string(pw=None):
    pw = pw or rand(ALNUM, 2) + rand(ALNUM + "!#%^*-_~", R.randint(8, 16))
    return R.choice([
        f"Server=tcp:acme.database.windows.net,1433;Initial Catalog=prod;User ID=svc_app;Password={pw};Encrypt=True;",
        f"Data Source=sql01;Initial Catalog=Orders;User Id=app;Password={pw};",
        f"Driver={{ODBC Driver 18 for SQL Server}};Server=sql02;Uid=report;Pwd={pw};",
    ]), pw


kind("connection_string_password", negatives=lambda: [
    conn_string("<your_password>")[0], conn_string("{password}")[0], "Server=sql01;Database=x;Trusted_Connection=True;",
    conn_string("$(DB_PASSWORD)")[0], "Password= is read from the key vault",
])(conn_string)
# --- keys and signed tokens ----------------------------------------------------
kind("private_key", variable=True, negatives=lambda: [
    "-----BEGIN PRIVATE KEY-----", "-----BEGIN RSA PRIVATE KEY-----\n...\n-----END RSA PRIVATE KEY-----",
    "-----BEGIN PUBLIC KEY-----\n" + b64(200) + "\n-----END PUBLIC KEY-----",
    "-----BEGIN CERTIFICATE-----\n" + b64(300) + "\n-----END CERTIFICATE-----",
    "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n-----END OPENSSH PRIVATE KEY-----",
])(lambda: (lambda k: (k, k))(pem(R.choice(["", "RSA ", "EC ", "OPENSSH ", "ENCRYPTED "]), escaped=R.random() < 0.3)))
token("age_secret_key", lambda: "AGE-SECRET-KEY-1" + rand(BECH32, 58), negatives=lambda: [
    "age1" + rand(BECH32.lower(), 58), "AGE-SECRET-KEY-1" + rand(BECH32, 30), "AGE-SECRET-KEY-1...", "age-keygen writes AGE-SECRET-KEY-1 lines"])
kind("putty_private_key", variable=True, negatives=lambda: ["PuTTY-User-Key-File-3 is the format of .ppk files", "convert it with puttygen key.ppk -O private-openssh", "PuTTY-User-Key-File-2: <algorithm>"])(
    lambda: (lambda k: (k, k))(f"PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\nComment: eddsa-key-2026{rand(DIGITS, 4)}\nPublic-Lines: 2\n{b64(40)}\nPrivate-Lines: 1\n{b64(40)}"))
token("jwt", lambda: jwt(R.choice(["HS256", "RS256", "ES256"])), variable=True, negatives=lambda: [
    b64url(b'{"alg":"none","typ":"JWT"}') + "." + b64url(b'{"sub":"123"}') + ".",
    "eyJ" + rand(TOKEN, 20) + ".eyJ" + rand(TOKEN, 30) + "." + rand(TOKEN, 43),
    b64url(b'{"alg":"HS256","typ":"JWT"}') + "." + b64url(b'{"sub":"123"}'),
    "a JWT starts with eyJ because it is base64 of {\""])
# --- generic -------------------------------------------------------------------
kind("generic_secret", context=True, negatives=lambda: [
    "password = os.environ['DB_PASSWORD']", "password: ********", "token = get_token(user)", "secret: ${{ secrets.DEPLOY_KEY }}",
    "api_key = settings.API_KEY", "password = 'password'", "token: <paste your token here>",
])(lambda: (lambda v: (R.choice(["password = ", "passwd: ", "secret=", "api_key: ", "token = "]) + v, v))(rand(ALNUM, 3) + rand(ALNUM + "!#%&", 13)))

POSITIVE = [
    "{f}",
    "Here is my config, why does it fail? {env}={f}",
    "Can you check this: `{f}`",
    'export {env}="{f}"',
    "The key I got is {f} - is it valid?",
    'settings = {json}',
    "Error 401 with {f}, please help",
    "```\n{f}\n```",
]
CONTEXT = ["{f}", "my settings: {f}", "Why does this fail?\n{f}\n", "```\n{f}\n```", "config:\n  {f}", "{f} (from the .env file)", "Here: {f}", "{f}\nthanks"]
NEUTRAL = ["the value {f} looks odd", "In the docs: {f}", "{f}", "see `{f}` above"]


def change_first(s):
    c = s[0]
    if c in DIGITS:
        return str((int(c) + 1) % 10) + s[1:]
    if c.isalpha():
        nxt = chr(ord(c) + 1) if c not in "zZ" else chr(ord(c) - 1)
        return nxt + s[1:]
    return "q" + s[1:]


def default_negatives(name, spec):
    fragment, tok = spec["make"]()
    if spec["negatives"]:
        # Kinds with negatives of their own (structured formats, checksums,
        # a prefix that is not at the start): those, plus a random string
        # of the same length.
        return spec["negatives"]() + [rand(HEX, len(tok))]
    negs = []
    if not spec["variable"] and not spec["context"]:
        negs.append(fragment.replace(tok, tok[: len(tok) // 2]))
        negs.append(fragment.replace(tok, tok + R.choice(ALNUM)))
    keep = max(3, min(8, len(tok) // 5))
    negs.append(fragment.replace(tok, tok[:keep] + "x" * (len(tok) - keep)))
    if not spec["context"]:
        negs.append(fragment.replace(tok, change_first(tok)))
    elif not re.search(r"(?i)\b(token|secret|password|passwd|pwd|api[_-]?key|access[_-]?key)\s*[:=]", fragment):
        # The vendor's name changed; a value after `token:` stays a
        # generic secret, so that form is not a negative.
        negs.append(change_first(fragment))
    negs.append(rand(HEX, len(tok)))
    if spec["context"]:
        negs.append(fragment.replace(tok, "<" + name + ">"))
    return negs


def add(text, labels, name, role):
    out.append({"text": text, "labels": labels, "kind": name, "role": role})


for name, spec in KINDS.items():
    env = name.upper()
    for i in range(8):
        fragment, tok = spec["make"]()
        if spec["context"]:
            text = CONTEXT[i].format(f=fragment)
        else:
            text = POSITIVE[i].format(f=fragment, env=env, json=json.dumps({name: fragment}))
        add(text, [name], name, "positive")
    negs = default_negatives(name, spec)
    for i, n in enumerate(negs):
        add(NEUTRAL[i % len(NEUTRAL)].format(f=n), [], name, "negative")

# Look-alikes of no kind: hashes, identifiers, digests, templates, the
# vendors' documentation examples.
for _ in range(4):
    add(f"commit {hashlib.sha1(R.randbytes(8)).hexdigest()} fixed it", [], "none", "negative")
    add(f"sha256:{hashlib.sha256(R.randbytes(8)).hexdigest()}", [], "none", "negative")
    add(f"image: ghcr.io/acme/api@sha256:{hashlib.sha256(R.randbytes(8)).hexdigest()}", [], "none", "negative")
    add(f'<script src="app.js" integrity="sha384-{base64.b64encode(hashlib.sha384(R.randbytes(8)).digest()).decode()}"></script>', [], "none", "negative")
    add(f'"integrity": "sha512-{base64.b64encode(hashlib.sha512(R.randbytes(8)).digest()).decode()}"', [], "none", "negative")
    add(f"request id {uuid.UUID(int=R.getrandbits(128))}", [], "none", "negative")
    add(f"tree {hashlib.sha1(R.randbytes(8)).hexdigest()} parent {hashlib.sha1(R.randbytes(8)).hexdigest()}", [], "none", "negative")
    add(f"ObjectId('{rand(HEX, 24)}')", [], "none", "negative")
    add(f"wallet 0x{rand(HEX, 40)}", [], "none", "negative")
    add(f"md5 {hashlib.md5(R.randbytes(8)).hexdigest()}", [], "none", "negative")
for text in [
    "AWS documents AKIAIOSFODNN7EXAMPLE as its example access key id",
    "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "OPENAI_API_KEY=sk-your-key-here", "Set OPENAI_API_KEY=sk-... in your shell", "password: <password>",
    "token: ${{ secrets.GITHUB_TOKEN }}", "api_key = ${OPENAI_API_KEY}", "const key = process.env.STRIPE_SECRET_KEY;",
    "secretKeyRef: { name: db, key: password }", "Tokens look like ghp_ followed by 36 characters.",
    "Anthropic keys start with sk-ant-", "use Authorization: Bearer $TOKEN", "version 1.2.3-beta.4+build.567",
    "ULID 01ARZ3NDEKTSV4RRFFQ69G5FAV", "the cache key is user:42:profile", "password reset link expired",
    "Generate a token with `gh auth token`.", "JWT_SECRET is read from the environment",
    "postgres://localhost/test", "mysql://db/app?charset=utf8",
]:
    add(text, [], "none", "negative")

for row in out:
    print(json.dumps(row))
