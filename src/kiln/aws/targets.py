"""The ALB target group, and kiln's own HTTP probe of each instance.

Target health comes from ELB. kiln also probes each instance itself where it
can reach it (a CI runner inside the VPC, or a test mapping instances to local
processes): ELB only judges instances registered with it, a blue-green
standby is not, and moto reports every registered target healthy.
"""

from __future__ import annotations

import errno
import http.client
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from kiln.aws.session import Aws, aws_errors

DELAY_ATTRIBUTE = "deregistration_delay.timeout_seconds"


@dataclass(frozen=True)
class Target:
    """What a resolver gets to find an instance's address."""

    id: str
    image: str
    private_ip: str | None
    port: int


# instance -> "host:port" to probe, or None when it cannot be reached from here
Resolver = Callable[[Target], str | None]


def private_address(target: Target) -> str | None:
    """The default resolver: the instance's private address and the app's port."""
    return f"{target.private_ip}:{target.port}" if target.private_ip else None


def target_health(aws: Aws, target_group: str) -> dict[str, str]:
    """instance id -> ELB target state (initial, healthy, unhealthy, draining, ...)."""
    with aws_errors("reading target health"):
        found = aws.client("elbv2").describe_target_health(TargetGroupArn=target_group)
    return {
        d["Target"]["Id"]: d["TargetHealth"]["State"] for d in found["TargetHealthDescriptions"]
    }


def deregistration_delay(aws: Aws, target_group: str) -> float:
    """How long ELB keeps draining a deregistered target (the target group's attribute)."""
    with aws_errors("reading the target group's attributes"):
        found = aws.client("elbv2").describe_target_group_attributes(TargetGroupArn=target_group)
    for attribute in found["Attributes"]:
        if attribute["Key"] == DELAY_ATTRIBUTE:
            return float(attribute["Value"])
    return 300.0  # the ELB default


def endpoint(aws: Aws, target_group: str) -> str | None:
    """The load balancer's DNS name in front of the target group, when there is one."""
    client = aws.client("elbv2")
    with aws_errors("reading the target group"):
        groups = client.describe_target_groups(TargetGroupArns=[target_group])["TargetGroups"]
        balancers = groups[0].get("LoadBalancerArns", []) if groups else []
        if not balancers:
            return None
        found = client.describe_load_balancers(LoadBalancerArns=balancers[:1])["LoadBalancers"]
    return f"http://{found[0]['DNSName']}" if found else None


def register(aws: Aws, target_group: str, ids: Sequence[str], port: int, add: bool) -> None:
    if not ids:
        return
    client = aws.client("elbv2")
    targets = [{"Id": i, "Port": port} for i in ids]
    with aws_errors("changing the target group's members"):
        for start in range(0, len(targets), 100):
            chunk = targets[start : start + 100]
            if add:
                client.register_targets(TargetGroupArn=target_group, Targets=chunk)
            else:
                client.deregister_targets(TargetGroupArn=target_group, Targets=chunk)


_NO_ROUTE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL}


def probe(address: str, path: str | None, timeout: float) -> bool | None:
    """One ALB-like check: GET path answers 2xx/3xx, or (no path) a TCP connect.

    None when the address cannot be reached from here at all (no route, or
    the connection attempt times out: a runner outside the VPC); a refused
    connection or a bad answer is a failed check.
    """
    host, _, port = address.rpartition(":")
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    except TimeoutError:
        return None
    except OSError as exc:
        return None if exc.errno in _NO_ROUTE else False
    except ValueError:
        return None
    if path is None:
        sock.close()
        return True
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    conn.sock = sock
    try:
        conn.request("GET", path, headers={"User-Agent": "kiln-health"})
        return 200 <= conn.getresponse().status < 400
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def probe_all(
    addresses: Mapping[str, str], path: str | None, timeout: float, workers: int = 32
) -> dict[str, bool | None]:
    """Probe many instances at once: a 200-instance fleet is one timeout, not 200."""
    if not addresses:
        return {}
    ids: Iterable[str] = list(addresses)
    with ThreadPoolExecutor(max_workers=min(workers, len(addresses))) as pool:
        results = pool.map(lambda i: probe(addresses[i], path, timeout), ids)
        return dict(zip(addresses, results, strict=True))
