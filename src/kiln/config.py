"""kiln.toml: typed, validated, documented in one place.

Field descriptions live on the models; ``docs/config.md`` and the JSON Schema
(``kiln config schema``) are generated from them, so they cannot drift.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import re
import shlex
import subprocess
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from kiln.configfile import CONFIG_NAME, find_config
from kiln.durations import parse_duration
from kiln.errors import ConfigError
from kiln.local.routes import valid_host

Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^(\d+(\.\d+)?(ms|s|m|h|d|w))+$"},
                {"type": "number", "minimum": 0},
            ],
            "description": "duration: '500ms', '2s', '5m', '1h', '7d' or seconds",
        }
    ),
]

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESERVED_ENV = {"HOST", "PORT", "KILN_INSTANCE_ID", "KILN_IMAGE"}


class Section(BaseModel):
    """Strict base: unknown keys are errors, values are frozen once loaded.

    Strict types: ``size = true`` or ``size = "3"`` is an error, not 1 or 3
    (an int field takes only an integer, a bool field only true or false).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        """A NUL cannot reach a path, a command line or the environment: refuse it here."""
        if "\0" in _strings(value):
            raise ValueError("contains a NUL character")
        return value


def _strings(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        return "".join(_strings(v) for v in value)
    if isinstance(value, dict):
        return "".join(_strings(k) + _strings(v) for k, v in value.items())
    return ""


class BuildStep(Section):
    """A build step whose result is reused while its inputs are unchanged."""

    run: str = Field(description="Shell command, run like a plain build step.")
    inputs: list[str] = Field(
        default_factory=list,
        description=(
            "Files, directories or glob patterns (relative to the app, as the step sees them) "
            "the step's result depends on, e.g. ['requirements.txt']."
        ),
    )
    outputs: list[str] = Field(
        default_factory=list,
        description=(
            "Files or directories the step makes, e.g. ['deps']: stored after it runs and "
            "restored instead of running it while the inputs, the command, [env] and the "
            "interpreter are unchanged."
        ),
    )

    @model_validator(mode="after")
    def _cacheable(self) -> BuildStep:
        if bool(self.inputs) != bool(self.outputs):
            raise ValueError(
                "a cached build step needs both inputs and outputs (or neither, to run every time)"
            )
        for path in self.outputs:
            if path.startswith("/") or ".." in path.split("/") or not path.strip("/."):
                raise ValueError(f"output {path!r} must be a path inside the app, e.g. 'deps'")
        return self


class AppSettings(Section):
    """The application: how to build it and how to run it."""

    name: str = Field(
        description="App name: lowercase letters, digits and dashes. Names images and fleets.",
        pattern=r"^[a-z0-9][a-z0-9-]{0,62}$",
    )
    run: str = Field(
        description=(
            "Shell command line that starts one instance, run through /bin/sh from the "
            "instance's directory ('&&', quoting and $VAR work; the last command is exec'd "
            "so the server gets signals itself). It must listen on $HOST:$PORT. Checked with "
            "'sh -n' whenever kiln.toml is read."
        ),
    )
    build: list[str | BuildStep] = Field(
        default_factory=list,
        description=(
            "Shell commands run in order in a scratch copy of the source at bake time, "
            "e.g. 'pip install -r requirements.txt --target deps'; a table "
            "{ run, inputs, outputs } reuses the step's outputs while its inputs are unchanged."
        ),
    )
    release: str | None = Field(
        default=None,
        description=(
            "Shell command run once per deployment (e.g. 'python3 manage.py migrate "
            "--noinput'), in a fresh directory of the new image with its env and secrets, "
            "before any new instance takes traffic. Exit 0 or nothing changes. Part of the "
            "image."
        ),
    )
    exclude: list[str] = Field(
        default_factory=list,
        description=(
            "gitignore patterns (git's anchoring and negation) for source files left out of "
            "the image, besides .kilnignore. They select the source only: what build steps "
            "make is always kept, so 'deps/' keeps a local install out and the built one in."
        ),
    )
    writable: list[str] = Field(
        default_factory=list,
        description=(
            "gitignore-style paths an instance may change at run time (caches, tmp); "
            "drift detection ignores them."
        ),
    )
    python: str | None = Field(
        default=None,
        description=(
            "Interpreter the image needs, e.g. 'python3.11', on the instances' PATH. "
            "Default: what 'python3' is on that PATH at bake time; recorded in the image, "
            "and a host without it refuses to start the image."
        ),
    )

    @field_validator("release")
    @classmethod
    def _release_is_a_command(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("the release command is empty: remove it or say what to run")
        return _shell_line(value) if value is not None else None

    @field_validator("run")
    @classmethod
    def _run_is_a_command(cls, value: str) -> str:
        try:
            argv = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot parse the command line: {exc}") from exc
        if not argv:
            raise ValueError("the run command is empty: say how to start the app")
        return _shell_line(value)


@functools.lru_cache(maxsize=64)
def _shell_line(line: str) -> str:
    """``line`` if /bin/sh can parse it (``sh -n``: read, never run). A syntax error
    was found only by the boot gate, after a whole bake. Cached: every environment's
    view of kiln.toml validates the same lines again."""
    if not Path("/bin/sh").exists():
        return line
    try:
        done = subprocess.run(
            ["/bin/sh", "-n", "-c", line], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return line
    if done.returncode != 0:
        said = done.stderr.strip().removeprefix("/bin/sh: ").removeprefix("1: ")
        raise ValueError(f"/bin/sh cannot parse it: {said or 'a syntax error'}")
    return line


# a Host header: a name or an IPv6 literal in brackets, with an optional port
HOST_PATTERN = r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$"


class HealthSettings(Section):
    """Load-balancer health checks, with ALB semantics."""

    path: str | None = Field(
        default=None,
        description="HTTP path probed with GET (2xx/3xx is healthy). Unset: a TCP connect check "
        "(local provider: and one GET / when it first passes, where a 5xx fails it).",
    )
    host: str | None = Field(
        default=None,
        pattern=HOST_PATTERN,
        description=(
            "Host header of each HTTP check, e.g. 'www.example.com', for an app that answers "
            "only its public names (Django's ALLOWED_HOSTS answers 400 to any other). "
            "Unset: the instance's address and port. Local provider only: refused with "
            "--provider aws (ALB checks cannot set it)."
        ),
    )
    interval: Duration = Field(default=1.0, gt=0, description="Time between two checks.")
    timeout: Duration = Field(default=2.0, gt=0, description="A check slower than this fails.")
    healthy_threshold: int = Field(
        default=2, ge=1, le=100, description="Consecutive passes before an instance takes traffic."
    )
    unhealthy_threshold: int = Field(
        default=3, ge=1, le=100, description="Consecutive failures before an instance is unhealthy."
    )
    grace: Duration = Field(
        default=30.0,
        ge=0,
        description=(
            "Time after start during which failed checks do not count: the app may still boot."
        ),
    )

    @field_validator("path")
    @classmethod
    def _path_is_absolute(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"must start with '/', e.g. '/{value}'")
        return value


class FleetSettings(Section):
    """How many instances serve the app and how deployments replace them."""

    size: int = Field(default=2, ge=1, le=1000, description="Desired number of instances.")
    strategy: Literal["rolling", "blue-green", "canary"] = Field(
        default="rolling", description="Default deployment strategy."
    )
    max_surge: int = Field(
        default=1, ge=0, le=1000, description="Rolling: instances launched above the desired size."
    )
    max_unavailable: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="Rolling: instances below the desired healthy capacity.",
    )
    drain: Duration = Field(
        default=10.0,
        ge=0,
        description="Longest wait for in-flight requests when an instance is deregistered.",
    )
    max_age: Duration | None = Field(
        default=None,
        gt=0,
        description="Instances older than this are recycled (replaced from the same image).",
    )
    max_image_age: Duration | None = Field(
        default=None,
        gt=0,
        description=(
            "Images (AMIs) older than this are due for 'kiln refresh': 'kiln status' warns, and "
            "on AWS with security_upgrades a refresh bakes a fresh AMI even on an unchanged base."
        ),
    )
    keep_images: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Images kept per app by 'kiln prune' (besides those in use).",
    )
    keep_warm: Duration = Field(
        default=300.0,
        ge=0,
        description="Blue-green: how long the old fleet stays warm for instant rollback.",
    )
    progress_deadline: Duration = Field(
        default=600.0, gt=0, description="A whole deployment must finish within this."
    )
    settle: Duration = Field(
        default=5.0,
        ge=0,
        description=(
            "Each batch of new instances must stay healthy this long before the instances "
            "they replace are discarded (blue-green: before the switch). Catches apps that "
            "crash soon after passing their checks; 0 trusts the first passing checks."
        ),
    )
    sticky: Literal["off", "cookie"] | None = Field(
        default=None,
        description=(
            "Session affinity: 'cookie' keeps each client on the instance that answered it "
            "first, by a cookie the load balancer sets, while that instance is in service "
            "(then it moves to another). Needed by apps keeping sessions in the process: "
            "Socket.IO, engine.io and SockJS long-polling, in-memory sessions. On AWS "
            "kiln sets the target groups' lb_cookie stickiness to match ('off' turns it "
            "off); unset, it is off locally and left as it is on AWS."
        ),
    )
    sticky_duration: Duration | None = Field(
        default=None,
        ge=1,
        le=7 * 86400,
        description=(
            "How long the sticky cookie lasts (1s to 7d). Unset: locally, until the browser "
            "closes; on AWS, one day (the ALB's default)."
        ),
    )

    @model_validator(mode="after")
    def _can_progress(self) -> FleetSettings:
        if self.sticky_duration is not None and self.sticky != "cookie":
            raise ValueError("sticky_duration needs sticky = 'cookie'")
        if self.max_surge == 0 and self.max_unavailable == 0:
            raise ValueError(
                "max_surge and max_unavailable cannot both be 0: a rolling deployment "
                "could never replace an instance"
            )
        return self


class CanarySettings(Section):
    """Canary deployments: a few new instances judged against the old fleet."""

    instances: int = Field(default=1, ge=1, le=1000, description="Canary instances launched.")
    percent: float | None = Field(
        default=None,
        gt=0,
        le=100,
        description="Canary size as a percentage of the fleet (overrides 'instances').",
    )
    duration: Duration = Field(default=30.0, gt=0, description="How long canaries take traffic.")
    max_error_rate: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Highest 5xx rate allowed above the old fleet's (0.01 = 1 point).",
    )
    max_p99_ratio: float = Field(
        default=1.5,
        gt=0,
        le=1000,
        description="Highest canary p99 latency as a multiple of the old fleet's.",
    )
    p99_slack: Duration = Field(
        default=0.02,
        ge=0,
        description=(
            "A canary p99 at most this much above the old fleet's never fails, whatever "
            "the ratio: a few milliseconds either way are noise, not a regression."
        ),
    )
    min_requests: int = Field(
        default=20,
        ge=0,
        le=1_000_000_000,
        description="Requests canaries must serve before they can be judged.",
    )


_LISTEN = re.compile(r"^(?P<host>[^:\s]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})$")


class AcmeSettings(Section):
    """Automatic certificates from an ACME CA (Let's Encrypt) for the fleet's hosts."""

    directory: str = Field(
        description=(
            "The CA's ACME directory URL, e.g. "
            "'https://acme-v02.api.letsencrypt.org/directory'. Setting it agrees to the "
            "CA's terms of service."
        ),
    )
    email: str | None = Field(
        default=None, description="Contact address for the ACME account (expiry notices)."
    )
    http: str = Field(
        default="0.0.0.0:80",
        description=(
            "Plain-HTTP address where the load balancer answers the CA's HTTP-01 challenges "
            "(/.well-known/acme-challenge/) for the fleet's hosts; every other request "
            "there is redirected to https. The CA connects to port 80 of each host name."
        ),
    )
    ca_bundle: str | None = Field(
        default=None,
        description=(
            "PEM file of the CAs that sign the directory's own HTTPS certificate, when it is "
            "not publicly trusted (a private CA, a test server). Relative to kiln.toml."
        ),
    )

    @field_validator("directory")
    @classmethod
    def _directory_is_https(cls, value: str) -> str:
        if not re.match(r"^https://[^/\s]+(/\S*)?$", value):
            raise ValueError(f"{value!r} is not an https:// URL of an ACME directory")
        return value

    @field_validator("email")
    @classmethod
    def _email_is_address(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[^@\s:]+@[^@\s:]+$", value):
            raise ValueError(f"{value!r} is not an email address")
        return value

    @field_validator("http")
    @classmethod
    def _http_is_host_port(cls, value: str) -> str:
        match = _LISTEN.match(value)
        if not match or not 0 < int(match.group("port")) < 65536:
            raise ValueError(f"{value!r} is not HOST:PORT, e.g. '0.0.0.0:80'")
        return value

    @property
    def http_address(self) -> tuple[str, int]:
        host, port = self.http.rsplit(":", 1)
        return host.strip("[]"), int(port)


class LocalSettings(Section):
    """The local provider: this host, the agent's load balancer and processes."""

    listen: str = Field(
        default="127.0.0.1:8080", description="Address the fleet's load balancer listens on."
    )
    balance: Literal["least-outstanding", "round-robin"] = Field(
        default="least-outstanding", description="How the load balancer picks an instance."
    )
    hosts: list[str] = Field(
        default=[],
        description=(
            "Host names this fleet answers on its listen address (the Host header), so "
            "several fleets can share one address, e.g. ['shop.example.com']; "
            "'*.example.com' matches every subdomain. A fleet without hosts answers every "
            "Host no other fleet there claims; with no such fleet, unknown Hosts get 404."
        ),
    )
    tls_cert: str | None = Field(
        default=None,
        description=(
            "Terminate TLS (HTTPS) on the listen address with this PEM file: the certificate, "
            "then its intermediates. Relative to kiln.toml's directory. Re-read when it "
            "changes, without dropping connections. Fleets sharing an address all use TLS "
            "or none; the server name a client asks for (SNI) picks the certificate of "
            "the fleet whose hosts match it."
        ),
    )
    tls_key: str | None = Field(
        default=None,
        description="The PEM file with tls_cert's private key (not encrypted).",
    )
    acme: AcmeSettings | None = Field(
        default=None,
        description=(
            "Get and renew the TLS certificate for the fleet's hosts automatically from an "
            "ACME CA (HTTP-01 challenge), instead of tls_cert and tls_key, e.g. "
            "{ directory = 'https://acme-v02.api.letsencrypt.org/directory', email = "
            "'ops@example.com' }. Needs hosts (names, no wildcards) and the CA able to reach "
            "port 80 of each."
        ),
    )
    log_max_bytes: int = Field(
        default=10 * 1024 * 1024,
        ge=4096,
        le=1 << 40,
        description="Per-instance log size cap, in bytes.",
    )
    log_retention: Duration = Field(
        default=900.0,
        ge=0,
        le=366 * 86400,
        description="How long an ended instance stays in `kiln status` and its log in "
        '`kiln logs`, e.g. "15m" or "7d".',
    )
    stop_timeout: Duration = Field(
        default=10.0, ge=0, description="Time between SIGTERM and SIGKILL when stopping."
    )
    isolate: bool = Field(
        default=False,
        description=(
            "Run each instance as its own unprivileged user (a fresh uid), its directory "
            "private to it, so it can alter neither the store nor another instance. Needs "
            "the agent to run as root and an interpreter any user can run (/usr/bin/python3)."
        ),
    )
    header_timeout: Duration = Field(
        default=10.0,
        gt=0,
        description="Time a client has to send a whole request head, from its first byte; "
        "then 408.",
    )
    body_timeout: Duration = Field(
        default=60.0,
        gt=0,
        description="Time a client has to send a whole request body; then 408, and an "
        "instance that was receiving it has its connection closed.",
    )
    body_idle_timeout: Duration = Field(
        default=10.0,
        gt=0,
        description="Longest silence while a request body arrives; then 408.",
    )
    client_idle_timeout: Duration = Field(
        default=60.0,
        gt=0,
        description="A kept-alive client connection idle for this long is closed; so is one "
        "that stops reading its response.",
    )
    connect_timeout: Duration = Field(
        default=2.0, gt=0, description="Time to connect to an instance; then another is tried."
    )
    tunnel_grace: Duration = Field(
        default=5.0,
        ge=0,
        description="How long WebSocket (and other upgraded) connections and event streams "
        "(text/event-stream) of an instance taken out of service may go on before the load "
        "balancer closes them (a stream ends with its last chunk). Draining waits for them, "
        "within [fleet] drain.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses or CIDR blocks (e.g. '10.0.0.0/8') of proxies in front of the "
        "load balancer whose X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host and "
        "Forwarded headers are believed. From anyone else they are replaced by what the "
        "connection shows.",
    )
    response_timeout: Duration = Field(
        default=60.0,
        gt=0,
        description="Time an instance has to start its response once the request is sent; "
        "then 504.",
    )
    ui_listen: str | None = Field(
        default=None,
        description="A loopback address (e.g. '127.0.0.1:8700') where the agent serves this "
        "fleet's `kiln ui` page for as long as it runs, behind a token only you can read; "
        "`kiln ui` opens it. Followed at the next deploy. Never on the fleet's listener.",
    )

    @field_validator("ui_listen")
    @classmethod
    def _ui_listen_is_loopback(cls, value: str | None) -> str | None:
        if value is not None:
            from kiln.ui.loopback import HINT, problem

            wrong = problem(value)
            if wrong is not None:
                raise ValueError(f"{wrong} ({HINT})")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_networks(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(
                    f"{cidr!r} is not an address or CIDR block, e.g. '10.0.0.0/8'"
                ) from None
        return value

    @model_validator(mode="after")
    def _tls_cert_and_key(self) -> LocalSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both, or neither")
        if self.acme is not None:
            if self.tls_cert is not None:
                raise ValueError("acme gets the certificate itself: drop tls_cert and tls_key")
            if not self.hosts:
                raise ValueError("acme needs hosts: the names to get a certificate for")
            if any(h.startswith("*.") for h in self.hosts):
                raise ValueError(
                    "acme cannot get a wildcard certificate (HTTP-01 validates one name at a "
                    "time): list each name in hosts, or use tls_cert and tls_key"
                )
            if self.acme.http_address == (self.host, self.port):
                raise ValueError("acme.http must differ from listen, which speaks TLS")
        return self

    @field_validator("hosts")
    @classmethod
    def _hosts_are_names(cls, value: list[str]) -> list[str]:
        names = [name.lower().rstrip(".") for name in value]
        for name in names:
            if not valid_host(name):
                raise ValueError(
                    f"{name!r} is not a host name such as 'shop.example.com' or "
                    "'*.example.com' (no scheme, no port)"
                )
        if len(set(names)) != len(names):
            raise ValueError("a host is listed twice")
        return names

    @field_validator("listen")
    @classmethod
    def _listen_is_host_port(cls, value: str) -> str:
        match = _LISTEN.match(value)
        if not match or not 0 < int(match.group("port")) < 65536:
            raise ValueError(f"{value!r} is not HOST:PORT, e.g. '127.0.0.1:8080'")
        return value

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


_REGION = r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$"
_ROLE_NAME = r"^(?:[\w+=,.@-]+/)*[\w+=,.@-]{1,64}$"  # an IAM role name, with its path
_ORG_ARN = r"^arn:aws[a-z-]*:organizations::\d{12}:organization/o-[a-z0-9]{10,32}$"
_OU_ARN = (
    r"^arn:aws[a-z-]*:organizations::\d{12}:ou/o-[a-z0-9]{10,32}/ou-[a-z0-9]{4,32}-[a-z0-9]{8,32}$"
)
_KEY_NAME = r"(alias/[A-Za-z0-9/_-]{1,250}|(key/)?(mrk-)?[0-9a-f-]{32,36})"
_KMS_KEY = rf"^(arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{{12}}:)?{_KEY_NAME}$"


def portable_key(key: str) -> bool:
    """A key name that means a key in every region: an alias, or a multi-Region key."""
    resource = key.split(":")[-1]
    return resource.startswith(("alias/", "mrk-", "key/mrk-"))


class WarmPoolSettings(Section):
    """An Auto Scaling warm pool: pre-initialised instances a scale-out takes first."""

    min_size: int = Field(default=0, ge=0, le=1000, description="Instances kept warm at least.")
    max_prepared_capacity: int | None = Field(
        default=None,
        ge=-1,
        description="Group size plus warm instances at most. Default: the group's max size.",
    )
    state: Literal["Stopped", "Running", "Hibernated"] = Field(
        default="Stopped", description="What a warm instance is while it waits."
    )
    reuse_on_scale_in: bool = Field(
        default=False, description="Scale-in returns instances to the pool instead of ending them."
    )


class AwsSettings(Section):
    """The AWS provider: AMIs, Auto Scaling groups, an ALB target group."""

    region: str | None = Field(
        default=None, description="AWS region. Default: $AWS_REGION, else the profile's region."
    )
    profile: str | None = Field(
        default=None,
        description=(
            "Named profile (~/.aws/config) whose credentials kiln uses, e.g. one per "
            "environment's account; a profile with role_arn assumes that role. A name, not a "
            "secret. Default: the standard chain ($AWS_PROFILE, $AWS_ACCESS_KEY_ID, ...)."
        ),
    )
    endpoint_url: str | None = Field(
        default=None,
        description="Endpoint override (moto, LocalStack). Default: $AWS_ENDPOINT_URL.",
    )
    base_image: str = Field(
        default="debian-12-amd64-*",
        description="Base AMI: an 'ami-' id, or a name pattern resolved to the newest match.",
    )
    base_image_owner: str = Field(
        default="136693071363", description="Owner account of base AMI name lookups (Debian)."
    )
    instance_type: str = Field(default="t3.micro", description="EC2 instance type.")
    builder_instance_type: str = Field(
        default="t3.small", description="Instance type of the temporary AMI builder."
    )
    bake_via: Literal["ssh", "ssm"] = Field(
        default="ssh",
        description=(
            "How a bake reaches its builder: 'ssh' (a temporary key and a security group "
            "admitting ssh_cidr) or 'ssm' (Systems Manager Run Command: no key, no inbound "
            "rule; needs builder_instance_profile and a route to SSM from the subnet)."
        ),
    )
    builder_instance_profile: str | None = Field(
        default=None,
        description=(
            "Instance profile of the builder when bake_via = 'ssm': a role with the SSM "
            "agent's permissions ('kiln aws policy --builder' prints them)."
        ),
    )
    builder_role: str | None = Field(
        default=None,
        description=(
            "IAM role inside builder_instance_profile; the bake policy may pass only this "
            "role (iam:PassRole). Default: the profile's name."
        ),
    )
    ssh_user: str = Field(default="admin", description="SSH user of the base image.")
    ssh_cidr: str | None = Field(
        default=None,
        description="CIDR allowed to SSH to the builder. Default: the caller's address /32.",
    )
    ssh_private_ip: bool = Field(
        default=False,
        description="SSH to the builder's private address (CI runners inside the VPC).",
    )
    ssh_timeout: Duration = Field(
        default=300.0,
        gt=0,
        description=(
            "Longest wait for the builder to accept SSH (bake_via = 'ssm': to answer a "
            "Run Command)."
        ),
    )
    image_timeout: Duration = Field(
        default=1800.0, gt=0, description="Longest wait for a new AMI to become available."
    )
    build_ttl: Duration = Field(
        default=7200.0,
        gt=0,
        description=(
            "Expiry tagged on a bake's temporary resources; 'kiln aws reap' removes "
            "them after it, and the builder powers itself off then."
        ),
    )
    security_upgrades: bool = Field(
        default=False,
        description=(
            "On the builder, before installing: the distribution's non-interactive upgrade "
            "(apt-get upgrade, or dnf/yum upgrade --security), so an AMI carries the fixes "
            "published since its base image. Part of the AMI's identity."
        ),
    )
    boot_test: bool = Field(
        default=False,
        description=(
            "After baking an AMI, boot one instance from it with the fleet's launch data and "
            "wait for its health check; tag the AMI kiln:verified or fail the bake. "
            "'kiln bake --boot-test' turns it on for one bake (the generated CI does)."
        ),
    )
    boot_test_timeout: Duration = Field(
        default=600.0, gt=0, description="Longest wait for the boot test's health check to pass."
    )
    boot_test_target_group_arn: str | None = Field(
        default=None,
        description=(
            "Target group (the fleet's port and health check, no listener) the boot test "
            "registers its instance in, so ELB checks it from inside the VPC. Unset: kiln "
            "probes the instance's private address itself (a runner inside the VPC)."
        ),
    )
    subnet_id: str | None = Field(default=None, description="Subnet for builders and instances.")
    subnet_ids: list[str] = Field(
        default_factory=list, description="Subnets of the Auto Scaling groups."
    )
    security_group_ids: list[str] = Field(
        default_factory=list, description="Security groups of fleet instances."
    )
    target_group_arn: str | None = Field(
        default=None, description="ALB target group the fleet serves behind."
    )
    canary_target_group_arn: str | None = Field(
        default=None,
        description=(
            "Second target group (same VPC, port and health check as target_group_arn, no "
            "members) the canary strategy's new instances serve from while the listener "
            "weights traffic between the two."
        ),
    )
    listener_arn: str | None = Field(
        default=None,
        description=(
            "ALB listener whose default action forwards to target_group_arn; the canary "
            "strategy weights it (and the deploy policy may modify only this listener)."
        ),
    )
    canary_traffic: list[Annotated[int, Field(ge=1, le=99)]] = Field(
        default_factory=lambda: [10, 50],
        min_length=1,
        max_length=10,
        description=(
            "Canary: the share of requests (percent) the canaries get at each step, each "
            "held for [canary] duration and judged against the fleet's."
        ),
    )
    metrics_lag: Duration = Field(
        default=120.0,
        ge=0,
        le=900,
        description=(
            "Canary: how long after each step kiln waits for CloudWatch to publish the ALB's "
            "counts (they arrive per minute, a minute or two late) before judging it."
        ),
    )
    instance_profile: str | None = Field(
        default=None, description="Instance profile (role) fleet instances run with."
    )
    instance_role: str | None = Field(
        default=None,
        description=(
            "IAM role inside the instance profile; kiln's policies may pass only this role "
            "(iam:PassRole). Default: the profile's name."
        ),
    )
    port: int = Field(default=3000, ge=1, le=65535, description="Port the app listens on.")
    keep_server_groups: int = Field(
        default=2, ge=1, le=100, description="Server groups kept (current + warm standbys)."
    )
    ssm_prefix: str | None = Field(
        default=None,
        description="SSM Parameter Store prefix secrets are read from at boot (/<app>/ default).",
    )
    copy_to_regions: list[Annotated[str, Field(pattern=_REGION)]] = Field(
        default_factory=list,
        description=(
            "Regions each new AMI is copied to (same kiln tags, shared and deprecated the same "
            "way). The bake starts the copies and does not wait for them; the next bake, "
            "'kiln images --provider aws' and deploys there see them once available."
        ),
    )
    share_with_accounts: list[Annotated[str, Field(pattern=r"^\d{12}$")]] = Field(
        default_factory=list, description="AWS account ids given launch permission on each AMI."
    )
    promote_to_accounts: list[Annotated[str, Field(pattern=r"^\d{12}$")]] = Field(
        default_factory=list,
        description=(
            "AWS account ids 'kiln promote' may copy this environment's AMIs into: the "
            "promoted AMI (only it) gets launch permission and snapshot createVolumePermission "
            "for the target's account, which then copies it (see docs/environments.md)."
        ),
    )
    share_with_organizations: list[Annotated[str, Field(pattern=_ORG_ARN)]] = Field(
        default_factory=list,
        description="AWS Organizations ARNs (arn:aws:organizations::ID:organization/o-...) "
        "given launch permission on each AMI.",
    )
    share_with_ous: list[Annotated[str, Field(pattern=_OU_ARN)]] = Field(
        default_factory=list,
        description="Organizational unit ARNs (...:ou/o-.../ou-...) given launch permission.",
    )
    share_snapshots: bool = Field(
        default=False,
        description=(
            "Also give share_with_accounts createVolumePermission on the AMI's snapshots, "
            "so they can copy it (launching needs only the launch permission)."
        ),
    )
    encrypted: bool = Field(
        default=False,
        description="Encrypt the AMI's root volume (with kms_key_id, else the account's "
        "default EBS key). Implied by kms_key_id.",
    )
    kms_key_id: str | None = Field(
        default=None,
        pattern=_KMS_KEY,
        description=(
            "KMS key the AMI is encrypted with: key id, key ARN, or 'alias/NAME'. Copies "
            "use the same alias, the same multi-Region key, or copy_kms_key_ids."
        ),
    )
    copy_kms_key_ids: dict[str, Annotated[str, Field(pattern=_KMS_KEY)]] = Field(
        default_factory=dict,
        description="KMS key per copy region (KMS keys are regional): { us-east-1 = '...' }.",
    )
    root_volume_size: int | None = Field(
        default=None, ge=1, le=16384, description="Root volume size of the AMI, in GiB."
    )
    root_volume_type: Literal["gp3", "gp2", "standard"] | None = Field(
        default=None, description="Root volume type of the AMI. Default: the base image's."
    )
    delete_on_termination: bool = Field(
        default=True,
        description="Delete an instance's root volume when it terminates (the AMI's mapping).",
    )
    deprecate_after: Duration | None = Field(
        default=None,
        gt=0,
        description=(
            "Mark each AMI deprecated this long after it was created (EC2 image deprecation; "
            "it still launches, but is hidden from default listings). Unset: never."
        ),
    )
    warm_pool: WarmPoolSettings | None = Field(
        default=None,
        description="A warm pool for each new server group. Unset: the current group's "
        "warm pool, if it has one, is carried to the next.",
    )
    hook_roles: list[Annotated[str, Field(pattern=_ROLE_NAME, max_length=128)]] = Field(
        default_factory=list,
        max_length=10,  # the scaling policy's size is tested with ten of 128 characters
        description=(
            "IAM roles (names, with their path if any) that the serving group's lifecycle "
            "hooks notify through (their RoleARN): the scaling policy may pass only these "
            "to Auto Scaling (iam:PassRole) when a new server group gets the hooks. A hook "
            "naming another role stops the deploy before anything is launched."
        ),
    )

    @model_validator(mode="after")
    def _regions_and_keys(self) -> AwsSettings:
        if len(set(self.copy_to_regions)) != len(self.copy_to_regions):
            raise ValueError("copy_to_regions lists a region twice")
        if self.region and self.region in self.copy_to_regions:
            raise ValueError(f"copy_to_regions includes the AMI's own region {self.region}")
        stray = sorted(set(self.copy_kms_key_ids) - set(self.copy_to_regions))
        if stray:
            raise ValueError(f"copy_kms_key_ids names {', '.join(stray)}, not in copy_to_regions")
        if self.kms_key_id and not portable_key(self.kms_key_id):
            missing = [r for r in self.copy_to_regions if r not in self.copy_kms_key_ids]
            if missing:
                raise ValueError(
                    f"kms_key_id {self.kms_key_id} is a key of one region: set "
                    f"copy_kms_key_ids for {', '.join(missing)} (or use an alias or a "
                    "multi-Region key, mrk-...)"
                )
        if self.encrypted and self.kms_key_id is None and self.shares:
            raise ValueError(
                "an AMI encrypted with the default EBS key (aws/ebs) cannot be shared: set "
                "kms_key_id to a customer managed key the accounts may use"
            )
        return self

    @property
    def encrypts(self) -> bool:
        return self.encrypted or self.kms_key_id is not None

    @property
    def shares(self) -> bool:
        return bool(
            self.share_with_accounts or self.share_with_organizations or self.share_with_ous
        )

    @model_validator(mode="after")
    def _ssm_needs_a_profile(self) -> AwsSettings:
        if self.bake_via == "ssm" and not self.builder_instance_profile:
            raise ValueError(
                "bake_via = 'ssm' needs builder_instance_profile: the builder's SSM agent "
                "registers with the permissions of that profile's role"
            )
        return self

    @model_validator(mode="after")
    def _two_target_groups(self) -> AwsSettings:
        if self.canary_target_group_arn and self.canary_target_group_arn == self.target_group_arn:
            raise ValueError(
                "canary_target_group_arn must be a second target group, not target_group_arn"
            )
        return self


class ProviderSettings(Section):
    local: LocalSettings = Field(default_factory=LocalSettings)
    aws: AwsSettings | None = Field(default=None, description="Set to enable the AWS provider.")


SecretRef = Annotated[
    str,
    Field(
        pattern=r"^(env|file|ssm):.+$",
        description="Where the value comes from at launch: 'env:VAR', 'file:/path' or 'ssm:/name'.",
    ),
]


_ENVIRONMENT_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
_OVERRIDABLE = ("fleet", "health", "canary")


def _object(description: str) -> Any:
    return WithJsonSchema({"type": "object", "description": description})


class EnvironmentSettings(Section):
    """One environment (e.g. staging): the same code, its own fleet, settings and [env].

    Every key it sets overrides the base file's for this environment only (tables
    merged key by key); [app] cannot be overridden: the code is the same everywhere.
    """

    require: str | None = Field(
        default=None,
        description=(
            "Another environment whose healthy code is the only code this one may deploy, "
            "e.g. require = 'staging' on production: a deploy of code never healthy there "
            "is refused (override with --override-require, recorded in the history)."
        ),
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "[env] values added or replaced in this environment: part of the image's env "
            "layer (a new image), never of its code digest."
        ),
    )
    secrets: dict[str, SecretRef] = Field(
        default_factory=dict,
        description="[secrets] references added or replaced in this environment.",
    )
    fleet: Annotated[dict[str, Any], _object("Keys of [fleet] to override.")] = Field(
        default_factory=dict, description="Keys of [fleet] to override, e.g. { size = 1 }."
    )
    health: Annotated[dict[str, Any], _object("Keys of [health] to override.")] = Field(
        default_factory=dict, description="Keys of [health] to override."
    )
    canary: Annotated[dict[str, Any], _object("Keys of [canary] to override.")] = Field(
        default_factory=dict, description="Keys of [canary] to override."
    )
    provider: Annotated[
        dict[str, dict[str, Any]], _object("Keys of [provider.local] / [provider.aws].")
    ] = Field(
        default_factory=dict,
        description=(
            "Keys of [provider.local] or [provider.aws] to override, e.g. a listen address, "
            "an AWS profile, region or target group."
        ),
    )

    @model_validator(mode="after")
    def _known_keys(self) -> EnvironmentSettings:
        sections: dict[str, type[BaseModel]] = {
            "fleet": FleetSettings,
            "health": HealthSettings,
            "canary": CanarySettings,
            "provider.local": LocalSettings,
            "provider.aws": AwsSettings,
        }
        tables = {name: getattr(self, name) for name in _OVERRIDABLE}
        for name, keys in self.provider.items():
            if name not in ("local", "aws"):
                raise ValueError(f"provider.{name}: unknown provider; use local or aws")
            tables[f"provider.{name}"] = keys
        for table, keys in tables.items():
            known = sections[table].model_fields
            for key in keys:
                if key not in known:
                    guess = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
                    hint = f" (did you mean '{guess[0]}'?)" if guess else ""
                    raise ValueError(f"{table}.{key}: unknown key{hint}")
        return self

    def overrides(self) -> dict[str, Any]:
        """The tables this environment changes, shaped like kiln.toml."""
        out: dict[str, Any] = {}
        for name in ("env", "secrets", *_OVERRIDABLE, "provider"):
            value = getattr(self, name)
            if value:
                out[name] = value
        return out


class Config(Section):
    """A whole kiln.toml."""

    app: AppSettings
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Environment baked into the image: part of its identity.",
    )
    secrets: dict[str, SecretRef] = Field(
        default_factory=dict,
        description=(
            "Environment resolved at launch, never stored: NAME = 'env:VAR' | 'file:/path'."
        ),
    )
    health: HealthSettings = Field(default_factory=HealthSettings)
    fleet: FleetSettings = Field(default_factory=FleetSettings)
    canary: CanarySettings = Field(default_factory=CanarySettings)
    provider: ProviderSettings = Field(default_factory=ProviderSettings)
    environments: dict[str, EnvironmentSettings] = Field(
        default_factory=dict,
        description=(
            "Named environments, e.g. [environments.staging]: each deploys its own fleet "
            "('<app>-<name>') with `--env NAME`, overriding the keys it sets. Without "
            "--env, kiln uses the file as if there were none."
        ),
    )
    _environment: str | None = PrivateAttr(default=None)

    @property
    def environment(self) -> str | None:
        """The environment this config was selected for (None: the base file)."""
        return self._environment

    @property
    def fleet_name(self) -> str:
        """The fleet this config deploys: the app's name, or '<app>-<environment>'."""
        if self._environment is None:
            return self.app.name
        return f"{self.app.name}-{self._environment}"

    def for_environment(self, name: str | None) -> Config:
        """This file as environment ``name`` sees it (None: the base file itself)."""
        if name is None:
            return self
        if name not in self.environments:
            known = ", ".join(sorted(self.environments)) or "none are defined"
            raise ConfigError(
                f"no environment {name!r} in kiln.toml (environments: {known})",
                hint=f"add [environments.{name}] to kiln.toml, or pick one of those",
            )
        merged = _merge(self.model_dump(exclude_unset=True), self.environments[name].overrides())
        selected = Config.model_validate(merged)
        selected._environment = name
        return selected

    @field_validator("environments")
    @classmethod
    def _environment_names(
        cls, value: dict[str, EnvironmentSettings]
    ) -> dict[str, EnvironmentSettings]:
        for name, settings in value.items():
            if not _ENVIRONMENT_NAME.match(name):
                raise ValueError(
                    f"{name!r} is not an environment name: lowercase letters, digits and "
                    "dashes, e.g. 'staging'"
                )
            if settings.require is not None and settings.require not in value:
                raise ValueError(
                    f"{name}.require = {settings.require!r}: no such environment "
                    f"(environments: {', '.join(sorted(value))})"
                )
            if settings.require == name:
                raise ValueError(f"{name}.require names {name} itself")
        return value

    @field_validator("env", "secrets")
    @classmethod
    def _names_are_env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid environment variable name")
            if name in _RESERVED_ENV:
                raise ValueError(f"{name} is set by kiln for every instance; choose another name")
        return value

    @model_validator(mode="after")
    def _no_overlap(self) -> Config:
        both = sorted(set(self.env) & set(self.secrets))
        if both:
            raise ValueError(f"{', '.join(both)} set in both [env] and [secrets]; keep one")
        return self


class LoadedConfig(BaseModel):
    """A validated config and where it came from."""

    model_config = ConfigDict(frozen=True)

    config: Config
    path: Path

    @property
    def root(self) -> Path:
        """The app's source directory: the config file's directory."""
        return self.path.parent


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, tables merged key by key (what an environment changes)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(
    explicit: str | Path | None = None,
    cwd: Path | None = None,
    *,
    environment: str | None = None,
) -> LoadedConfig:
    """The config to use; ``environment`` selects one of its [environments] (None: the base)."""
    path = find_config(explicit, cwd)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read: {exc.strerror or exc}",
            hint="make it readable by this user (kiln.toml holds no secrets: [secrets] are "
            "references)",
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})",
            hint="TOML files are UTF-8: save it as UTF-8",
        ) from exc
    config = parse_config(text, source=str(path)).for_environment(environment)
    return LoadedConfig(config=config, path=path)


def parse_config(text: str, source: str = CONFIG_NAME) -> Config:
    """Parse and validate; every failure is one ConfigError naming the key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: malformed TOML: {exc}") from exc
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from exc
    for name in config.environments:  # each one whole, so a typo in production fails staging too
        try:
            config.for_environment(name)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, f"{source} [environments.{name}]")) from exc
    return config


def _describe(exc: ValidationError, source: str) -> str:
    lines = [_describe_one(err) for err in exc.errors()]
    if len(lines) == 1:
        return f"{source}: {lines[0]}"
    return f"{source}: {len(lines)} problems:\n" + "\n".join(f"  - {line}" for line in lines)


def _describe_one(err: Any) -> str:
    loc = [str(part) for part in err["loc"]]
    where = _key_path(loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        known = _known_keys(loc[:-1])
        guess = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
        suggestion = f" (did you mean '{guess[0]}'?)" if guess else ""
        valid = f"; valid keys: {', '.join(sorted(known))}" if known and not guess else ""
        return f"{where}: unknown key{suggestion}{valid}"
    if kind == "missing":
        return f"{where}: required key is missing"
    message = str(err["msg"])
    message = message.removeprefix("Value error, ")
    if kind in _STRICT_TYPES:
        message = f"must be {_STRICT_TYPES[kind]}, not {_toml_value(err['input'])}"
    if kind in _BOUNDS:
        words, key = _BOUNDS[kind]
        message = f"must be {words} {err['ctx'][key]}, not {_toml_value(err['input'])}"
    if kind == "string_pattern_mismatch" and loc[-1] == "name":
        message = "must be lowercase letters, digits and dashes, e.g. 'my-app'"
    return f"{where}: {message}"


_STRICT_TYPES = {
    "int_type": "an integer",
    "bool_type": "true or false",
    "float_type": "a number",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a table",
}


def _toml_value(value: Any) -> str:
    """How the offending value reads in kiln.toml."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float | str):
        return repr(value)
    return f"a {type(value).__name__}"


_BOUNDS = {
    "less_than_equal": ("at most", "le"),
    "less_than": ("less than", "lt"),
    "greater_than_equal": ("at least", "ge"),
    "greater_than": ("more than", "gt"),
}


def _key_path(loc: list[str]) -> str:
    """('health', 'interval') -> '[health] interval'; the TOML a user would edit."""
    if not loc:
        return "(top level)"
    tables = {"app", "health", "fleet", "canary"}
    if loc[0] == "environments" and len(loc) >= 2:
        rest = ".".join(loc[2:])
        return f"[environments.{loc[1]}]" + (f" {rest}" if rest else "")
    if loc[0] == "provider" and len(loc) >= 3:
        return f"[provider.{loc[1]}] {'.'.join(loc[2:])}"
    if loc[0] in tables | {"env", "secrets"} and len(loc) >= 2:
        return f"[{loc[0]}] {'.'.join(loc[1:])}"
    return ".".join(loc)


def _known_keys(loc: list[str]) -> list[str]:
    model: type[BaseModel] | None = Config
    for part in loc:
        if model is None:
            return []
        field = model.model_fields.get(part)
        if field is None:
            return []
        model = _model_of(field.annotation)
    return list(model.model_fields) if model else []


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found:
            return found
    return None


def json_schema() -> dict[str, Any]:
    """JSON Schema for editors (taplo, Even Better TOML)."""
    schema = Config.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "kiln.toml"
    return schema
