"""The probe child: runs one case on one route and writes what happened to a result file.

    python -m navitrain.probe.worker run JOB.json     one case (the job names case, source, route, seed)
    python -m navitrain.probe.worker list FILE OUT    the cases a user's case file defines

It runs in a fresh interpreter started by the runner, so a segfault, abort or hang here never reaches
the parent. Results travel only through files: the result JSON is written atomically at the end, and
a phase file says how far the child got, so a crash can be reported as "during the device run".
Order: availability, prepare, CPU reference, device run, comparison. Routes register their kernels for
their own dispatch keys (CUDA, PrivateUse1), so the CPU reference is not theirs to change.
Everything before the CPU reference run is start-up: once it is done the child creates the job's
`ready` file, and only then does the parent's per-case timeout start. First of all, the child forks
its lifeline watcher (lifeline.py), so that it dies with the parent.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback


def _write_json(path: str, data) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


class _Phases:
    def __init__(self, path: str):
        self.path = path

    def __call__(self, name: str) -> None:
        with open(self.path, "w") as f:
            f.write(name)


def _to_cpu(obj):
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu")
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _call(case, device, dtype_name, seed):
    import torch

    from navitrain.probe.inputs import dtype_of

    kwargs = {"dtype": dtype_of(dtype_name)} if case.takes_dtype else {}
    torch.manual_seed(seed)
    return _to_cpu(case.fn(device, **kwargs))


def _exception_text(exc: BaseException) -> str:
    message = str(exc).strip()
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def run(job: dict) -> dict:
    """Run the job's case; return the result record (also for failures that raise)."""
    phase = _Phases(job["phase"])
    phase("the route import")
    from navitrain.probe import cases
    from navitrain.probe.results import ERROR, MISMATCH, PASS, UNAVAILABLE
    from navitrain.routes import registry

    route = registry.get(job["route"])
    phase("the route availability check")
    availability = route.availability()
    if not availability.ok:
        return {"outcome": UNAVAILABLE, "detail": availability.reason, "route_unavailable": True,
                "route_info": availability.reason}
    info = availability.reason

    phase("the case import")
    cases.load_source(job["source"])
    case = cases.get(job["case"])
    import torch

    from navitrain.probe.compare import compare
    from navitrain.probe.inputs import rounding

    # Probes judge kernels at full fp32 precision; TF32 would turn every fp32 conv into a mismatch.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    reference_dtype = case.dtype if case.reference == "same" else case.reference
    try:
        # Prepare before anything runs: the autograd engine sizes its per-device queues on the first
        # backward, so a device registered after a CPU backward (wgpu) would be unknown to it.
        phase("route.prepare()")
        try:
            device = route.prepare()
        except Exception as exc:
            return {"outcome": ERROR, "detail": f"route.prepare() failed: {_exception_text(exc)}",
                    "traceback": traceback.format_exc(), "route_info": info}
        if job.get("ready"):
            open(job["ready"], "w").close()  # start-up done: the parent starts the case's clock
        with rounding(case.dtype):
            phase("the CPU reference run")
            reference = _call(case, torch.device("cpu"), reference_dtype, job["seed"])
            phase("the device run")
            output = _call(case, device, case.dtype, job["seed"])
        phase("the comparison")
        result = compare(output, reference, case.dtype, case.rtol, case.atol)
    except cases.Unsupported as exc:
        return {"outcome": UNAVAILABLE, "detail": str(exc), "route_info": info}
    except Exception as exc:
        return {"outcome": ERROR, "detail": _exception_text(exc), "traceback": traceback.format_exc(),
                "route_info": info}
    finally:
        try:
            route.release()
        except Exception:  # release is best effort; the process ends right after
            pass
    return {"outcome": PASS if result.ok else MISMATCH, "detail": result.detail, "mode": result.mode,
            "max_abs": result.max_abs, "max_rel": result.max_rel, "route_info": info}


def main(argv: list[str]) -> int:
    from navitrain.probe.lifeline import watch_parent

    watch_parent()  # before any heavy import: a forked copy of a small process
    if len(argv) == 2 and argv[0] == "run":
        with open(argv[1]) as f:
            job = json.load(f)
        started = time.perf_counter()
        try:
            result = run(job)
        except Exception as exc:  # the route or the case file failed before the case could run
            result = {"outcome": "error", "detail": _exception_text(exc), "traceback": traceback.format_exc()}
        result["worker_seconds"] = time.perf_counter() - started
        _write_json(job["result"], result)
        return 0
    if len(argv) == 3 and argv[0] == "list":
        from navitrain.probe import cases

        try:
            found = [c.describe() for c in cases.load_file(argv[1])]
            _write_json(argv[2], {"cases": found})
        except Exception as exc:
            _write_json(argv[2], {"error": _exception_text(exc), "traceback": traceback.format_exc()})
        return 0
    print("usage: python -m navitrain.probe.worker run JOB.json | list FILE OUT.json", file=sys.stderr)
    return 2


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # The result file is written; skip interpreter teardown (torch's and a GPU runtime's can take a
    # second, or crash on a broken driver after the answer is already known).
    os._exit(code)
