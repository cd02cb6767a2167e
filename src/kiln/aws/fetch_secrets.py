#!/usr/bin/env python3
"""kiln fetch-secrets: resolve an app's secrets on the instance, at every boot.

Installed on AMIs as /usr/local/lib/kiln/fetch-secrets and run by the app's
systemd unit before it starts (``ExecStartPre``). Secrets are never baked:
the AMI holds only their *names* (secrets.json); the values are read here
from SSM Parameter Store with the instance role's credentials (IMDSv2), or
from files, and written to a root-only environment file under /run (tmpfs).

Standard library only, and Python 3.8 or newer: it runs on the bare base
image's own python3 (Amazon Linux 2023 has 3.9, Ubuntu 22.04 3.10), not on
kiln's. A test checks the 3.8 floor with vermin and ``ast``. Metadata and SSM
calls are retried with backoff: right after boot the network, IMDS and SSM
may not answer yet, or SSM may throttle a fleet starting at once.

    fetch-secrets SPEC.json OUT.env
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

IMDS = os.environ.get("KILN_IMDS_ENDPOINT", "http://169.254.169.254")
ATTEMPTS = int(os.environ.get("KILN_FETCH_ATTEMPTS", "8"))  # 0.5 s doubling to 8 s: ~40 s
FIRST_DELAY = float(os.environ.get("KILN_FETCH_DELAY", "0.5"))
T = TypeVar("T")


def _transient(exc: BaseException) -> bool:
    """Worth another try: no answer yet, throttled, or the service's own error."""
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code in (408, 429) or exc.code >= 500 or _throttled(exc)
    return isinstance(exc, (OSError, ValueError))  # URLError, timeouts, resets


def _throttled(exc: urllib.error.HTTPError) -> bool:
    if exc.code != 400:
        return False
    try:
        body = exc.read().decode(errors="replace")
    except OSError:
        return False
    exc.fp = None  # type: ignore[assignment]  # already read: the caller must not re-read
    return "Throttling" in body or "ThrottlingException" in body


def retried(what: str, call: Callable[[], T]) -> T:
    """``call()``, retried with exponential backoff while the failure is transient."""
    delay = FIRST_DELAY
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return call()
        except (OSError, ValueError) as exc:
            if attempt == ATTEMPTS or not _transient(exc):
                raise
            print(f"fetch-secrets: {what}: {exc}; retrying in {delay:g}s", file=sys.stderr)
        time.sleep(delay)
        delay = min(delay * 2, 8.0)
    raise AssertionError("unreachable")


def _get(req: urllib.request.Request, timeout: float) -> str:
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return str(resp.read().decode())


def _imds(path: str, token: str) -> str:
    req = urllib.request.Request(f"{IMDS}{path}", headers={"X-aws-ec2-metadata-token": token})
    return retried(f"instance metadata {path}", lambda: _get(req, 2))


def _imds_token() -> str:
    req = urllib.request.Request(
        f"{IMDS}/latest/api/token",
        method="PUT",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"},
    )
    return retried("instance metadata token", lambda: _get(req, 2))


def credentials() -> tuple[str, str, str | None]:
    """The environment's keys, else the instance role's (IMDSv2)."""
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        return (
            os.environ["AWS_ACCESS_KEY_ID"],
            os.environ["AWS_SECRET_ACCESS_KEY"],
            os.environ.get("AWS_SESSION_TOKEN"),
        )
    token = _imds_token()
    role = _imds("/latest/meta-data/iam/security-credentials/", token).split()[0]
    doc = json.loads(_imds(f"/latest/meta-data/iam/security-credentials/{role}", token))
    return doc["AccessKeyId"], doc["SecretAccessKey"], doc.get("Token")


def region() -> str:
    found = os.environ.get("AWS_REGION")
    if found:
        return found
    return _imds("/latest/meta-data/placement/region", _imds_token())


def _sign(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def signed_request(url: str, target: str, body: bytes, where: str) -> urllib.request.Request:
    """An AWS JSON-protocol POST signed with Signature Version 4."""
    key_id, secret, token = credentials()
    host = urllib.parse.urlparse(url).netloc
    now = datetime.datetime.now(datetime.timezone.utc)  # noqa: UP017 (3.8: no datetime.UTC)
    stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    headers = {
        "content-type": "application/x-amz-json-1.1",
        "host": host,
        "x-amz-date": stamp,
        "x-amz-target": target,
    }
    if token:
        headers["x-amz-security-token"] = token
    names = ";".join(sorted(headers))
    canonical = "\n".join(
        [
            "POST",
            "/",
            "",
            "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)),
            names,
            hashlib.sha256(body).hexdigest(),
        ]
    )
    scope = f"{day}/{where}/ssm/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    k = _sign(_sign(_sign(_sign(f"AWS4{secret}".encode(), day), where), "ssm"), "aws4_request")
    signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={key_id}/{scope}, SignedHeaders={names}, "
        f"Signature={signature}"
    )
    return urllib.request.Request(url, data=body, method="POST", headers=headers)


def ssm_call(action: str, payload: dict[str, Any]) -> dict[str, Any]:
    """One SSM JSON call (``GetParameters``, ``PutParameter``), signed anew for every try.

    A refusal or an unreachable endpoint exits with one line naming the call.
    """
    where = region()
    url = os.environ.get("KILN_SSM_ENDPOINT") or f"https://ssm.{where}.amazonaws.com/"
    body = json.dumps(payload).encode()

    def call() -> dict[str, Any]:  # signed anew: the date is in it
        req = signed_request(url, f"AmazonSSM.{action}", body, where)
        with urllib.request.urlopen(req, timeout=10) as resp:
            answer: dict[str, Any] = json.loads(resp.read() or b"{}")
            return answer

    try:
        return retried(f"SSM {action}", call)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:300] if exc.fp else ""
        raise SystemExit(f"fetch-secrets: SSM refused {action} ({exc.code}): {detail}") from None
    except OSError as exc:
        raise SystemExit(f"fetch-secrets: cannot reach SSM at {url}: {exc}") from None


def ssm_parameters(names: list[str]) -> dict[str, str]:
    """GetParameters (10 names a call), decrypted; a missing one is an error."""
    found: dict[str, str] = {}
    for start in range(0, len(names), 10):
        batch = names[start : start + 10]
        doc = ssm_call("GetParameters", {"Names": batch, "WithDecryption": True})
        for param in doc.get("Parameters", []):
            found[param["Name"]] = param["Value"]
        missing = doc.get("InvalidParameters") or []
        if missing:
            raise SystemExit(f"fetch-secrets: SSM parameters not found: {', '.join(missing)}")
    return found


def resolve(spec: dict[str, str]) -> dict[str, str]:
    wanted = sorted({ref[4:] for ref in spec.values() if ref.startswith("ssm:")})
    params = ssm_parameters(wanted) if wanted else {}
    values: dict[str, str] = {}
    for name, ref in sorted(spec.items()):
        kind, _, where = ref.partition(":")
        if kind == "ssm":
            values[name] = params[where]
        elif kind == "file":
            values[name] = Path(where).read_text(encoding="utf-8").rstrip("\n")
        else:
            raise SystemExit(f"fetch-secrets: {name}: unsupported reference {ref!r}")
    return values


def env_line(name: str, value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'{name}="{escaped}"\n'


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: fetch-secrets SPEC.json OUT.env", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    values = resolve(spec)
    out = Path(argv[2])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.writelines(env_line(name, value) for name, value in values.items())
    tmp.replace(out)
    print(f"fetch-secrets: {len(values)} secrets resolved")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
