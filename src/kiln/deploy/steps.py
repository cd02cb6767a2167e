"""Applying one plan step to the fleet, idempotently.

Each step looks at the observed fleet before acting, so running it twice
(the second time after a kill) does the remaining work and nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kiln.deploy.gates import Gates, Trip
from kiln.deploy.plan import Plan, Step, unreplaced_failures
from kiln.errors import StoreError
from kiln.providers.protocol import FleetState, InstanceState, Provider

GONE = (InstanceState.TERMINATED, InstanceState.DRAINING)


@dataclass
class StepRunner:
    provider: Provider
    fleet: str
    gates: Gates

    def apply(self, step: Step, plan: Plan) -> dict[str, Any]:
        handler = getattr(self, f"_{step.kind}")
        result: dict[str, Any] = handler(step, plan)
        return result

    def _launch(self, step: Step, plan: Plan) -> dict[str, Any]:
        assert step.image is not None
        self.gates.image = step.image
        state = self.gates.observe()
        # the group's count is the provider's promise: instances it is about to
        # replace (say, after an agent died mid-launch) are not launched twice
        have = max(len(state.live(step.image)), state.groups.get(step.image, 0))
        missing = step.expect - have
        launched: list[str] = []
        if missing > 0:
            try:
                launched = self.provider.launch(
                    self.fleet, step.image, missing, in_service=step.in_service
                )
            except StoreError as exc:  # a verdict on the image, not on the provider
                raise Trip("boot", f"boot gate: {step.image} cannot start: {exc.message}") from exc
        self.gates.boot(step.image, step.expect)
        if step.seconds > 0:
            self.gates.hold(step.image, step.seconds)
        return {"launched": launched}

    def _terminate(self, step: Step, plan: Plan) -> dict[str, Any]:
        state = self.gates.observe()
        present = {i.id: i for i in state.instances}
        ids = [i for i in step.instances if i in present and present[i].state not in GONE]
        return {"terminated": self._stop(ids)}

    def _stop(self, ids: list[str]) -> list[str]:
        if ids:
            self.gates.forget(ids)
            self.provider.terminate(self.fleet, ids)
        return ids

    def _switch(self, step: Step, plan: Plan) -> dict[str, Any]:
        assert step.image is not None
        if plan.strategy == "blue-green":
            state = self.gates.boot(step.image, plan.size)
        else:
            self.gates.image = step.image
            state = self.gates.observe()
        add = [i.id for i in state.live(step.image) if not i.in_service and i.healthy]
        if step.instances:
            serving = {i.id for i in state.live() if i.in_service}
            remove = [i for i in step.instances if i in serving]
        else:
            remove = [i.id for i in state.live() if i.image != step.image and i.in_service]
        if add or remove:
            self.provider.set_in_service(self.fleet, add, remove)
        return {"added": add, "removed": remove}

    def _canary(self, step: Step, plan: Plan) -> dict[str, Any]:
        assert step.image is not None
        if step.traffic:
            return self.gates.split_canary(step.image, step.seconds, step.traffic)
        return self.gates.canary(step.image, step.seconds)

    def _retire(self, step: Step, plan: Plan) -> dict[str, Any]:
        state = self.gates.observe()
        old = _drained(state, plan.image)
        if step.seconds > 0:
            return {"warm": old}
        failed = [i.id for i in unreplaced_failures(state, exclude=plan.image)]
        return {"terminated": self._stop(old + failed)}


def _drained(state: FleetState, image: str | None) -> list[str]:
    """Live instances of other images that no longer take traffic."""
    return [i.id for i in state.live() if i.image != image and not i.in_service]
