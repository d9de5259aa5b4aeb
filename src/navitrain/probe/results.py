"""What one probe found: the outcome words and the record the runner, store and reports share."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

PASS = "pass"
MISMATCH = "mismatch"        # ran, but outside tolerance (max abs/rel error in detail)
ERROR = "error"              # raised an exception (message in detail)
GPU_FAULT = "gpu-fault"      # the child's output matches a GPU fault signature from the explain classifier
CRASH = "crash"              # killed by a signal or exited without a result (signal name in detail)
HANG = "hang"                # no result before the timeout: the child and its children were killed
UNAVAILABLE = "unavailable"  # the route is not present here, or the case cannot run on it by design

OUTCOMES = (PASS, MISMATCH, ERROR, GPU_FAULT, CRASH, HANG, UNAVAILABLE)
FAILURES = (MISMATCH, ERROR, GPU_FAULT, CRASH, HANG)


def env_label(env: dict[str, str]) -> str:
    """The canonical one-line form of an environment ("" for none): sorted NAME=VALUE pairs."""
    return " ".join(f"{k}={v}" for k, v in sorted(env.items()))


def parse_env_label(label: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in label.split()) if label else {}


@dataclass
class ProbeResult:
    case: str
    route: str
    env: dict[str, str]
    outcome: str
    detail: str = ""
    mode: str | None = None          # explain failure-mode id (error, gpu-fault; fp16-corruption mismatch)
    max_abs: float | None = None
    max_rel: float | None = None
    seconds: float | None = None
    route_info: str = ""             # the route's availability line, as the child saw it
    essential: bool = False
    created: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def env_label(self) -> str:
        return env_label(self.env)

    def public(self) -> dict:
        """The machine-readable record `navitrain probe --json` prints."""
        return {"case": self.case, "route": self.route, "env": dict(self.env), "outcome": self.outcome,
                "detail": self.detail, "mode": self.mode}

    def to_dict(self) -> dict:
        return asdict(self)
