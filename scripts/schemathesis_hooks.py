"""Schemathesis hooks for scripts/schemathesis.sh: sign every generated partner request, and
most generated Stripe webhook deliveries.

The intake refuses an unsigned request before it looks at the payId, so without a sign the
generated cases would never get past `401 SIGN_INVALID`. This hook gives each request body a
fresh `tradeTime` and a valid `sign` (docs/partners.md#the-sign) for the configured partner, where the
generated body has well-formed values for them; a case that breaks those fields on purpose
(missing, empty, wrong type or format) is sent as generated.
"""

import atexit
import collections
import hashlib
import hmac
import itertools
import json
import os
import re
import threading
import time

import schemathesis

PARTNER = os.environ.get("AUTORENEW_SIGN_PARTNER", "P000818")
SECRET = os.environ.get("AUTORENEW_SIGN_SECRET", "s3cr3t-P000818")
# The intake's `stripe.webhook_secrets` in scripts/schemathesis.sh.
WEBHOOK_SECRET = os.environ.get("AUTORENEW_WEBHOOK_SECRET", "whsec_schemathesis")
WEBHOOK_PATH = "/stripe/webhook"
SIGNED_PATHS = (
    "/stripeSubDirectly",
    "/resultQuery",
    "/cancelAutoRenewalRecord",
    "/queryAutoRenewalRecord",
    "/stripeSubAuthorization",
)
# The calls about an existing payId: half of their cases ask about one the intake accepted.
ASKING_PATHS = SIGNED_PATHS[1:4]

CODE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DIGITS = re.compile(r"^[0-9]{1,16}$")
RUN = f"{os.getpid():x}{int(time.time()) % 100000:x}"
COUNTER = itertools.count()
# payIds the intake accepted, so that the queries and cancels ask about real ones too.
ACCEPTED = []
STATUSES = collections.Counter()
LOCK = threading.Lock()


def sign_content(params):
    """Every field but `sign`, without empty or null values, compact, keys in byte order."""
    kept = {k: v for k, v in params.items() if k != "sign" and v not in (None, "")}
    # Code-point order is byte order for UTF-8; ensure_ascii=False keeps non-ASCII raw and
    # json leaves `/` unescaped, as serde_json does.
    return json.dumps(dict(sorted(kept.items())), ensure_ascii=False, separators=(",", ":"))


def sign(params, secret):
    return hashlib.md5((sign_content(params) + secret).encode("utf-8")).hexdigest()


def is_string(value):
    return isinstance(value, str) and value != ""


def sign_webhook(case, kwargs):
    """Three deliveries in four get Stripe's signature (docs/partners.md#stripes-webhooks) over the exact bytes sent,
    so the generated events reach the intake's event parsing and enqueueing; the fourth goes
    unsigned, for the 400."""
    if next(COUNTER) % 4 == 0:
        return
    try:
        raw = json.dumps(case.body).encode("utf-8")
    except (TypeError, ValueError):
        return
    t = str(int(time.time()))
    v1 = hmac.new(WEBHOOK_SECRET.encode(), t.encode() + b"." + raw, hashlib.sha256).hexdigest()
    # A body given here replaces the generated one as sent, so the signature covers these bytes.
    kwargs["data"] = raw
    if case.headers is None:
        case.headers = {}
    case.headers["Stripe-Signature"] = f"t={t},v1={v1}"


@schemathesis.hook
def before_call(ctx, case, kwargs):
    if case.operation.path == WEBHOOK_PATH:
        sign_webhook(case, kwargs)
        return
    if case.operation.path not in SIGNED_PATHS:
        return
    body = case.body
    if not isinstance(body, dict):
        return
    if not all(isinstance(v, str) or v is None for v in body.values()):
        return  # refused at the fields check, before any sign is looked at
    if is_string(body.get("partnerCode")) and CODE.match(body["partnerCode"]):
        body["partnerCode"] = PARTNER
    if is_string(body.get("tradeTime")) and DIGITS.match(body["tradeTime"]):
        body["tradeTime"] = str(int(time.time() * 1000))
    if is_string(body.get("payId")) and CODE.match(body["payId"]):
        n = next(COUNTER)
        if case.operation.path in ASKING_PATHS and ACCEPTED and n % 2 == 0:
            # Every other query asks about a payId the intake accepted earlier in this run.
            body["payId"] = ACCEPTED[n % len(ACCEPTED)]
        else:
            # A fresh payId per case, so generated cases are new requests rather than
            # conflicts with an earlier case that happened to draw the same short payId.
            suffix = f"-{RUN}-{n}"
            body["payId"] = body["payId"][: 64 - len(suffix)] + suffix
    if is_string(body.get("sign")):
        try:
            body["sign"] = sign(body, SECRET)
        except UnicodeEncodeError:
            pass  # a lone surrogate cannot be sent as UTF-8 anyway


@schemathesis.hook
def after_call(ctx, case, response):
    with LOCK:
        STATUSES[(case.operation.method.upper(), case.operation.path, response.status_code)] += 1
    if case.operation.path == "/stripeSubDirectly" and response.status_code == 200:
        try:
            pay_id = response.json().get("payId")
        except ValueError:
            return
        if pay_id:
            ACCEPTED.append(pay_id)


@atexit.register
def report():
    print("\nanswers by operation and status:")
    for (method, path, status), count in sorted(STATUSES.items()):
        print(f"  {method:5} {path:24} {status}  {count}")
