"""Summary and Markdown table of benchmarks/opinfo_coverage.py's results."""
from __future__ import annotations

from collections import Counter, defaultdict

STATUSES = ("pass", "fallback", "mismatch", "error", "crash")


def headline(results: list[dict]) -> dict:
    """Per 'mode dtype': counts of each status and the share of counted items that pass on the GPU.
    "n/a" items (the CPU rejected every sample) are not counted; "float64_rule" counts the passes (and
    fallbacks) that needed the float64 rule."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for r in results:
        if r["status"] != "n/a":
            counts[f"{r['mode']} {r['dtype']}"][r["status"]] += 1
            counts[f"{r['mode']} {r['dtype']}"]["float64_rule"] += bool(r.get("float64_rule"))
    out = {}
    for key in sorted(counts, key=lambda k: (k.split()[0] != "forward", k)):
        c = counts[key]
        total = sum(c[s] for s in STATUSES)
        out[key] = {**{s: c[s] for s in STATUSES}, "total": total, "pass_pct": 100.0 * c["pass"] / max(1, total),
                    "float64_rule": c["float64_rule"]}
    return out


def write_markdown(path, report: dict) -> None:
    adapter = report["adapter"]
    lines = [
        "# OpInfo coverage of the wgpu device",
        "",
        f"Written by `benchmarks/opinfo_coverage.py` on {report['date']}, adapter: "
        f"{adapter.get('name', '?')} ({adapter.get('backend', '?')}, {adapter.get('driver', '?')}). "
        f"Every entry of PyTorch's OpInfo database, up to {report['samples']} sample inputs per op, dtype and "
        "mode, compared with the CPU (float32 atol=rtol=1e-4; float16 1e-3; bfloat16 rtol 1.6e-2, atol 1e-2).",
        "",
        "- **pass**: every compared sample matches and nothing ran on the CPU;",
        "- **fallback**: matches, but only because some op ran on the CPU (navitrain's fallback counter);",
        "- **mismatch**: a value, dtype, shape or device differs from the CPU's;",
        "- **error**: wgpu raised where the CPU did not; **crash**: the process died or hung.",
        "",
        "Items the CPU itself rejects for every sample are not counted. Random ops (dropout, bernoulli, ...,",
        "attention with dropout) are compared by shape, dtype and device only; indices of topk, kthvalue and",
        "unstable sort/argsort may name another position of an equal value (PyTorch leaves ties unspecified)",
        "and are checked to point at one.",
        "",
        "float16 and bfloat16: PyTorch's CPU kernels often round intermediate results to the dtype (or overflow",
        "in it) where wgpu computes in float32 and rounds once. A result that differs from the CPU's beyond the",
        "tolerance is measured against the float64 result of the same inputs, rounded to the dtype: it still",
        "passes if it is within the dtype's tolerance of that AND its largest error is no larger than the CPU's",
        "(gradients alike, against float64 gradients; `benchmarks/_coverage_precision.py`). Such items are",
        "counted in the headline's float64 rule column",
        "and listed with both errors under \"Passed by the float64 rule\"; a result further from float64 than",
        "the tolerance stays a mismatch, its detail giving both errors.",
        "Rerun one op into this table with `python benchmarks/opinfo_coverage.py --ops NAME --merge`, or",
        "everything that did not pass with `--rerun-failing`.",
        "",
        "## Headline",
        "",
        "| mode dtype | pass | fallback | mismatch | error | crash | total | pass % | by the float64 rule |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, s in report["summary"].items():
        status_cells = " | ".join(str(s[k]) for k in STATUSES)
        lines.append(f"| {key} | {status_cells} | {s['total']} | {s['pass_pct']:.1f}% | {s.get('float64_rule', 0)} |")
    columns = list(report["summary"])
    by_op: dict[str, dict] = defaultdict(dict)
    for r in report["results"]:
        by_op[r["op"]][f"{r['mode']} {r['dtype']}"] = r
    lines += ["", "## Everything that does not pass", "",
              "| op | mode dtype | status | detail |", "|---|---|---|---|"]
    for op in sorted(by_op):
        for key in columns:
            r = by_op[op].get(key)
            if r and r["status"] not in ("pass", "n/a"):
                detail = r.get("detail") or ", ".join(sorted(r.get("fallbacks", {})))
                if r["status"] == "fallback":
                    detail = "CPU: " + ", ".join(sorted(r.get("fallbacks", {})))
                detail = detail.replace("|", "\\|").replace("\n", " ")[:160]
                lines.append(f"| {op} | {key} | {r['status']} | {detail} |")
    lines += ["", "## Passed by the float64 rule", "",
              "Different from the CPU's result beyond the tolerance, but closer to float64 (largest errors):", "",
              "| op | mode dtype | status | wgpu err | CPU err |", "|---|---|---|---|---|"]
    for op in sorted(by_op):
        for key in columns:
            r = by_op[op].get(key)
            if r and r.get("float64_rule"):
                rule = r["float64_rule"]
                errors = " | ".join(f"{float(rule[k]):.3g}" for k in ("wgpu_err", "cpu_err"))  # "inf" is a str
                lines.append(f"| {op} | {key} | {r['status']} | {errors} |")
    lines += ["", "## Per op", "", "| op | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for op in sorted(by_op):
        cells = [by_op[op][k]["status"] + (" (float64 rule)" if by_op[op][k].get("float64_rule") else "")
                 if k in by_op[op] else "" for k in columns]
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")
