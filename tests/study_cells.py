"""Stand-in cell functions for the orchestration tests (injected through `study.cell_fn`).

They follow the engine's run-folder contract (status.json, metrics.json) with numbers computed from
the config, so the flows, caching and tables can be tested without training. A cell fails when its
output folder name contains any substring listed in the STUDY_TEST_FAIL environment variable
(comma separated); every call appends a line to <output_dir>/calls.log so tests can count executions.
"""
from __future__ import annotations

import json
import os
from pathlib import Path


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def config_cell(config) -> dict:
    """mIoU = 30 + queries/10 + seed, PQSt = mIoU / 2; a variant (general_semantic / tta) adds 1."""
    out = Path(config.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "calls.log", "a") as fh:
        fh.write(f"{os.getpid()}\n")
    _write(out / "status.json", {"status": "running"})
    fail = [s for s in os.environ.get("STUDY_TEST_FAIL", "").split(",") if s]
    if any(s in out.name for s in fail):
        _write(out / "status.json", {"status": "failed", "reason": "RuntimeError: injected failure for the test"})
        raise RuntimeError("injected failure for the test")
    q = config.model.num_queries or config.model.num_classes or 0
    miou = 30.0 + q / 10.0 + config.run.seed
    if config.test.strategy == "general_semantic" or config.test.tta:
        miou += 1.0
        ckpt = out / "checkpoints" / "last.pt"
        if not ckpt.is_file():
            raise RuntimeError(f"evaluation-only variant without the trained checkpoint {ckpt}")
    else:
        (out / "checkpoints").mkdir(exist_ok=True)
        for name in ("last.pt", "final.pt"):
            (out / "checkpoints" / name).write_bytes(b"weights")
    metrics = {"val/mIoU": miou, "val/PQSt": miou / 2, "val_ms/mIoU": miou + 0.5, "perf/fps": 1.0}
    _write(out / "metrics.json", metrics)
    _write(out / "status.json", {"status": "done"})
    return metrics
