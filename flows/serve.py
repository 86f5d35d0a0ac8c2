"""Serve the four study flows as Prefect deployments: `python -m flows.serve` (or `python -m pipeline serve`).

Deployments are named like their flows, so `prefect deployment run 'ablations/ablations' --watch`
triggers the ablation tables against the server in PREFECT_API_URL (`prefect server start`).
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("SUBMITIT_LOG_LEVEL", "NOCONFIG")
import submitit  # noqa: E402,F401  (INFRA trap: import at module top)

from prefect import serve  # noqa: E402

from flows.study import FLOWS  # noqa: E402


def deployments() -> list:
    """One deployment per flow, named after the flow (`study/study`, `main-results/main-results`, ...)."""
    return [f.to_deployment(name=name, description=(f.__doc__ or "").strip().splitlines()[0]) for name, f in FLOWS.items()]


def main() -> int:
    if not os.environ.get("PREFECT_API_URL"):
        print("error: PREFECT_API_URL is not set; start `prefect server start` and export "
              "PREFECT_API_URL=http://127.0.0.1:4200/api (or source scripts/services.env)", file=sys.stderr)
        return 2
    serve(*deployments())
    return 0


if __name__ == "__main__":
    sys.exit(main())
