"""How far end-to-end parity moves with the host's float32 kernels, against the 1-ulp noise floor.

For each ``ATEN_CPU_CAPABILITY`` (each selects other float32 kernels, as another CPU would), runs
``moai compat check`` on a fixture in a subprocess and reports, for every end-to-end logit check, the
difference to the official logits, the 1-ulp spread the check measured on that run, and their ratio.
The largest ratio seen is what the constant ``NOISE_K`` of ``moai/compat/parity.py`` must exceed with
a margin (docs/official.md, "Portable parity").

    python bench/parity_noise.py [FIXTURE_DIR] [--trials N] [--quick] [--out bench/results/parity_noise.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from timing import write

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "parity_noise.json"
CAPABILITIES = ("default", "avx2", "avx512")

CHILD = """
import json, sys, torch
from moai.compat.parity import run_parity
report = {}
code = run_parity(sys.argv[1], out=lambda _line: None, report=report, noise_trials=int(sys.argv[2]))
print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "code": code, "report": report}))
"""


def run_one(fixture: Path, capability: str, trials: int) -> dict:
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(fixture), str(trials)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fixture", nargs="?", default=str(REPO / "tests/fixtures/official_tiny"))
    parser.add_argument("--trials", type=int, default=8, help="1-ulp runs per check (default: 8)")
    parser.add_argument(
        "--quick", action="store_true", help="2 trials, default kernels; writes only with --out"
    )
    parser.add_argument("--out", type=Path, default=None, help=f"results JSON (default {RESULTS})")
    args = parser.parse_args()
    if args.quick:
        args.trials = 2

    rows, worst = [], 0.0
    print(f"{'kernels':<8} {'check':<32} {'|Δ| vs official':>16} {'1-ulp spread':>13} {'ratio':>6}")
    for capability in CAPABILITIES[:1] if args.quick else CAPABILITIES:
        result = run_one(Path(args.fixture), capability, args.trials)
        for name, check in result["report"].items():
            spread = check["spread"]
            if spread is None:
                continue
            ratio = check["max_diff"] / spread if spread else float("inf")
            worst = max(worst, ratio)
            rows.append(
                {"kernels": result["capability"], "check": name, "diff": check["max_diff"], "spread": spread}
            )
            print(
                f"{result['capability']:<8} {name:<32} {check['max_diff']:>16.3g} {spread:>13.3g} {ratio:>6.2f}"
            )
        print(f"{result['capability']:<8} parity exit code {result['code']}")
    print(f"largest ratio |Δ| / spread: {worst:.2f}")
    out = args.out or (None if args.quick else RESULTS)
    if out is not None:
        write(out, {"trials": args.trials, "rows": rows, "largest_ratio": worst})


if __name__ == "__main__":
    main()
