"""`python -m pipeline services up|down|status`: the MLflow and Prefect servers (SLURM: scripts/services.sh)."""
from __future__ import annotations

from pathlib import Path

from pipeline import services


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "services", help="start/stop/check the local MLflow and Prefect servers (127.0.0.1 by default)",
        description="Start, stop or check the MLflow tracking server (port $MLFLOW_PORT, 5000) and the Prefect "
                    "server (port $PREFECT_PORT, 4200). State under --root. SLURM and its database are started by "
                    "scripts/services.sh, which also calls this.")
    services.add_arguments(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    root = Path(args.root) if args.root else services.default_root()
    return services.run_action(args.action, root, args.host, args.only)
