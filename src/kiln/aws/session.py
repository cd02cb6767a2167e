"""One place that turns settings and the environment into AWS clients.

Credentials come from boto3's standard chain (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``, profiles, instance roles), or from the named profile
``[provider.aws] profile`` (an environment's account), never from kiln.toml,
and never appear in kiln's output, errors or state. The region comes from
``[provider.aws] region`` or ``AWS_REGION``; an endpoint override
(``[provider.aws] endpoint_url`` or ``AWS_ENDPOINT_URL``) points kiln at moto
or LocalStack.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

import boto3
import botocore.exceptions
import botocore.parsers
from botocore.config import Config as BotoConfig

from kiln.config import AwsSettings
from kiln.errors import AwsError

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_iam import IAMClient
    from mypy_boto3_sts import STSClient

T = TypeVar("T")
_KEY_ID = re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{12,}\b")
_DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "AuthFailure"}
_BAD_KEYS = {"InvalidClientTokenId", "SignatureDoesNotMatch", "InvalidAccessKeyId"}


@dataclass
class Aws:
    """A boto3 session bound to one region and endpoint, with cached clients."""

    session: boto3.Session
    region: str
    endpoint_url: str | None = None
    _clients: dict[str, Any] = field(default_factory=dict, repr=False)

    def client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = self.session.client(
                service,  # type: ignore[call-overload]
                region_name=self.region,
                endpoint_url=self.endpoint_url,
                config=BotoConfig(
                    retries={"mode": "standard", "max_attempts": 5},
                    connect_timeout=10,
                    read_timeout=60,
                    user_agent_extra="kiln",
                ),
            )
        return self._clients[service]

    @property
    def ec2(self) -> EC2Client:
        return self.client("ec2")  # type: ignore[no-any-return]

    @property
    def iam(self) -> IAMClient:
        return self.client("iam")  # type: ignore[no-any-return]

    @property
    def sts(self) -> STSClient:
        return self.client("sts")  # type: ignore[no-any-return]

    def in_region(self, region: str) -> Aws:
        """The same credentials and endpoint in another region (copies of an AMI)."""
        return Aws(session=self.session, region=region, endpoint_url=self.endpoint_url)

    @property
    def is_local(self) -> bool:
        """True against an endpoint on this machine (moto, LocalStack)."""
        host = urlparse(self.endpoint_url).hostname if self.endpoint_url else None
        return host in {"127.0.0.1", "localhost", "::1"}


def connect(
    settings: AwsSettings | None = None,
    *,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
) -> Aws:
    """Resolve region and endpoint; explicit keys are for tests and admin tools only."""
    settings = settings or AwsSettings()
    profile = None if access_key_id else settings.profile
    try:
        session = boto3.Session(
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            profile_name=profile,
        )
    except botocore.exceptions.ProfileNotFound:
        raise AwsError(
            f"no AWS profile {profile!r} ([provider.aws] profile)",
            hint="add it to ~/.aws/config (or $AWS_CONFIG_FILE), or fix the name",
        ) from None
    region = settings.region or (
        session.region_name  # a named profile's own region comes before the environment's
        if profile
        else os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or session.region_name
    )
    if not region:
        raise AwsError(
            "no AWS region configured",
            hint="set [provider.aws] region in kiln.toml or export AWS_REGION",
        )
    endpoint = settings.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
    if endpoint is not None and urlparse(endpoint).scheme not in ("http", "https"):
        raise AwsError(
            f"endpoint {endpoint!r} is not an http(s) URL",
            hint="set AWS_ENDPOINT_URL (or [provider.aws] endpoint_url) to e.g. "
            "http://127.0.0.1:5000, or unset it to talk to AWS",
        )
    return Aws(session=session, region=region, endpoint_url=endpoint)


# Codes EC2 answers for a resource created a moment ago (it is eventually consistent).
NOT_YET = frozenset(
    {
        "InvalidInstanceID.NotFound",
        "InvalidGroup.NotFound",
        "InvalidAMIID.NotFound",
        "InvalidKeyPair.NotFound",
    }
)


def eventually(call: Callable[[], T], *, timeout: float = 60.0) -> T:
    """Retry ``call`` while EC2 does not yet know a resource it just created."""
    deadline = time.monotonic() + timeout
    delay = 0.25
    while True:
        try:
            return call()
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code not in NOT_YET or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 4.0)


def redact(text: str) -> str:
    """Strip anything shaped like an access key id from a message."""
    return _KEY_ID.sub("<access key>", text)


@contextmanager
def aws_errors(doing: str) -> Iterator[None]:
    """Turn boto's exceptions into one AwsError that says what to do."""
    try:
        yield
    except botocore.exceptions.ClientError as exc:
        raise _client_error(exc, doing) from None
    except botocore.exceptions.NoCredentialsError:
        raise AwsError(
            f"{doing}: no AWS credentials found",
            hint="export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (the deploy user's keys)",
        ) from None
    except botocore.exceptions.EndpointConnectionError as exc:
        raise AwsError(
            f"{doing}: cannot reach AWS at {exc.kwargs.get('endpoint_url', '?')}",
            hint="check the network, the region and AWS_ENDPOINT_URL",
        ) from None
    except botocore.exceptions.BotoCoreError as exc:
        raise AwsError(f"{doing}: {redact(str(exc))}") from None
    except botocore.parsers.ResponseParserError:
        raise AwsError(
            f"{doing}: the AWS endpoint answered something that is not an AWS API response",
            hint="is AWS_ENDPOINT_URL (or [provider.aws] endpoint_url) really an AWS API?",
        ) from None
    except KeyError as exc:  # an answer without the fields every AWS answer has
        raise AwsError(
            f"{doing}: unexpected answer from the AWS endpoint (no {exc})",
            hint="is AWS_ENDPOINT_URL (or [provider.aws] endpoint_url) really an AWS API?",
        ) from None


def _client_error(exc: botocore.exceptions.ClientError, doing: str) -> AwsError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", "Unknown"))
    message = redact(str(error.get("Message", "")).strip())
    operation = exc.operation_name
    if code in _DENIED:
        return AwsError(
            f"{doing}: AWS denied {operation} ({code}): {message}",
            hint="the credentials' policy does not allow this call; compare it with "
            "'kiln aws policy' or re-run 'kiln aws create-deploy-user'",
        )
    if code in _BAD_KEYS:
        return AwsError(
            f"{doing}: AWS rejected the credentials ({code})",
            hint="check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; rotate with "
            "'kiln aws create-deploy-user --team NAME --rotate-key'",
        )
    return AwsError(f"{doing}: {operation} failed ({code}): {message}")


def tags(mapping: dict[str, str]) -> list[dict[str, str]]:
    """{'k': 'v'} -> the [{'Key': 'k', 'Value': 'v'}] shape every EC2 call wants."""
    return [{"Key": k, "Value": v} for k, v in mapping.items()]


def tag_map(items: list[Any] | None) -> dict[str, str]:
    return {str(t["Key"]): str(t["Value"]) for t in items or []}
