"""Mutation check: plant curated semantic bugs, one at a time, in a temporary copy of the repository and
check that the tests meant to catch each one fail (issue 12).

    .venv/bin/python scripts/mutants.py            # every mutant; exit 1 if any survives or is stale
    .venv/bin/python scripts/mutants.py --list     # the mutants and their test selections
    .venv/bin/python scripts/mutants.py -k tta -j 2

Each mutant is an exact source text, its replacement, the file, and the pytest selection that should
kill it. The working tree is never edited: the tracked and untracked-but-not-ignored files are copied to a
temporary folder (`.venv` linked), the replacement is applied there, and the selection runs with
PYTHONPATH and the working directory set to the copy. A mutant whose text is missing or ambiguous is an
error (the code changed: refresh the mutant), as is a selection that fails or is empty on the unmutated
copy (the baseline). Prints `mutant | file | killed-by | result` and the total time.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEST_TIMEOUT_S = 600


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    why: str = ""


EV = "tests/test_eval_values.py"
AL = "tests/test_alignment.py"
REF = "tests/test_references.py"

MUTANTS: tuple[Mutant, ...] = (
    # ---- evaluation loop (pipeline/evaluation.py)
    Mutant("eval-semantic-zeros", "pipeline/evaluation.py",
           "pred = _to_numpy(sem_seg_to_label(result, meta.ignore_label)).astype(np.int64)",
           "pred = np.zeros_like(gt_sem)",
           (f"{EV}::test_ground_truth_model_scores_100_on_semantic_data_with_tta",),
           "single-scale semantic predictions replaced by zeros"),
    Mutant("eval-tta-zeros", "pipeline/evaluation.py",
           "pred = _to_numpy(scores.argmax(0)).astype(np.int64)",
           "pred = np.zeros_like(gt_sem)",
           (f"{EV}::test_ground_truth_model_scores_100_on_semantic_data_with_tta",),
           "multi-scale predictions replaced by zeros"),
    Mutant("eval-panoptic-empty", "pipeline/evaluation.py",
           "_to_numpy(pan_ids), list(pan_segments))",
           "np.zeros_like(_to_numpy(pan_ids)), [])",
           (f"{EV}::test_ground_truth_model_scores_100_on_panoptic_data",),
           "panoptic predictions replaced by an empty map"),
    Mutant("eval-query-threshold", "pipeline/evaluation.py",
           "QUERY_PROB_THRESHOLD = 0.5", "QUERY_PROB_THRESHOLD = 0.45",
           (f"{EV}::test_query_statistics_on_a_constructed_case",),
           "per-query statistics counted at p > 0.45"),
    Mutant("eval-query-no-object", "pipeline/evaluation.py",
           "prob = pred_logits.float().softmax(-1)[..., :-1]", "prob = pred_logits.float().softmax(-1)",
           (f"{EV}::test_query_statistics_on_a_constructed_case",),
           "no-object column counted as a category"),
    # ---- mappers and transforms (maskformer_core/data)
    Mutant("mapper-flip-image-only", "maskformer_core/data/mappers.py",
           "return (img[:, ::-1], sem[:, ::-1] if sem is not None else None, pan[:, ::-1] if pan is not None else None)",
           "return (img[:, ::-1], sem, pan)",
           (f"{AL}::test_semantic_training_mapper_keeps_image_and_label_aligned",),
           "flip applied to the image, not to the labels"),
    Mutant("mapper-pad-label-0", "maskformer_core/data/mappers.py",
           "sem = T.pad_bottom_right(sem, shape, self.meta.ignore_label) if sem is not None else None",
           "sem = T.pad_bottom_right(sem, shape, 0) if sem is not None else None",
           (f"{AL}::test_semantic_training_mapper_keeps_image_and_label_aligned",),
           "label padding with class 0 instead of the ignore label"),
    Mutant("mapper-crowd-kept", "maskformer_core/data/mappers.py",
           'if seg.get("iscrowd", 0):\n            continue', 'if False:\n            continue',
           ("tests/test_prepare_examples.py::test_coco_panoptic_category_ids_become_contiguous",),
           "crowd segments become training targets"),
    Mutant("mapper-test-no-resize", "maskformer_core/data/mappers.py",
           "shape = T.shortest_edge_shape(height, width, self.test_short_size, self.test_max_size)",
           "shape = (height, width)",
           (f"{AL}::test_test_mapper_resizes_the_image_only",),
           "test images not resized to the test size"),
    Mutant("transform-brightness-48", "maskformer_core/data/transforms.py",
           "brightness_delta: int = 32", "brightness_delta: int = 48",
           (f"{AL}::test_colour_augmentation_matches_its_definition_on_greys",),
           "brightness delta outside the SSD definition"),
    Mutant("transform-label-bilinear", "maskformer_core/data/transforms.py",
           'out = F.interpolate(t, size=tuple(shape), mode="nearest")[0, 0]',
           'out = F.interpolate(t, size=tuple(shape), mode="bilinear")[0, 0].round()',
           (f"{AL}::test_semantic_training_mapper_keeps_image_and_label_aligned", "tests/test_data.py"),
           "labels resized bilinearly (new label values at boundaries)"),
    # ---- inference (maskformer_core/inference.py)
    Mutant("inference-renormalised", "maskformer_core/inference.py",
           "probs = F.softmax(mask_cls.float(), dim=-1)[..., :-1]",
           "probs = F.softmax(mask_cls.float()[..., :-1], dim=-1)",
           ("tests/test_inference.py",),
           "semantic inference renormalises after dropping no-object"),
    Mutant("inference-no-score-threshold", "maskformer_core/inference.py",
           "keep = labels.ne(num_classes) & (scores > object_mask_threshold)",
           "keep = labels.ne(num_classes)",
           ("tests/test_inference.py",),
           "panoptic inference keeps low-confidence queries"),
    Mutant("inference-tta-no-flip-back", "maskformer_core/inference.py",
           "            if flipped:\n                sem = sem.flip(-1)", "            if False:\n                sem = sem.flip(-1)",
           (f"{EV}::test_ground_truth_model_scores_100_on_semantic_data_with_tta",),
           "flipped TTA outputs not flipped back"),
    Mutant("inference-no-crop", "maskformer_core/inference.py",
           "result = result[:, : int(img_size[0]), : int(img_size[1])]", "result = result",
           ("tests/test_inference.py",),
           "padding not cropped before resizing to the original size"),
    # ---- criterion (maskformer_core/criterion.py)
    Mutant("criterion-eos-1", "maskformer_core/criterion.py",
           "empty_weight[-1] = eos_coef", "empty_weight[-1] = 1.0",
           ("tests/test_criterion.py",),
           "no-object weight ignored"),
    Mutant("criterion-dice-no-smoothing", "maskformer_core/criterion.py",
           "numerator = 2 * s.mul_(tf).sum(1) + 1", "numerator = 2 * s.mul_(tf).sum(1)",
           ("tests/test_criterion.py",),
           "dice loss (the fused training path) without +1 smoothing in the numerator"),
    Mutant("criterion-giou-not-normalised", "maskformer_core/criterion.py",
           '"loss_giou": (1 - giou).sum() / num_masks}', '"loss_giou": (1 - giou).sum()}',
           (f"{REF}::test_box_losses_by_hand",),
           "GIoU loss not divided by the number of boxes"),
    Mutant("criterion-l1-mean", "maskformer_core/criterion.py",
           'loss_bbox = F.l1_loss(src, tgt, reduction="none").sum() / num_masks',
           'loss_bbox = F.l1_loss(src, tgt, reduction="mean")',
           (f"{REF}::test_box_losses_by_hand",),
           "L1 box loss averaged over coordinates"),
    # ---- matching (maskformer_core/matching.py)
    Mutant("matching-class-cost-sign", "maskformer_core/matching.py",
           "cost_class = -prob[:, labels]", "cost_class = prob[:, labels]",
           (f"{REF}::test_hungarian_matching_reaches_the_brute_force_optimum",),
           "class cost rewards the wrong class"),
    Mutant("matching-mask-weight-1", "maskformer_core/matching.py",
           "cost_mask: float = 20.0", "cost_mask: float = 1.0",
           (f"{REF}::test_hungarian_matching_reaches_the_brute_force_optimum",),
           "focal cost weight 1 instead of 20"),
    # ---- metrics (maskformer_core/metrics)
    Mutant("miou-over-gt-classes", "maskformer_core/metrics/semantic.py",
           'res["mIoU"] = 100 * float(iou[acc_valid].sum() / iou_valid.sum())',
           'res["mIoU"] = 100 * float(iou[acc_valid].sum() / acc_valid.sum())',
           ("tests/test_metrics.py",),
           "mIoU averaged over GT classes only (not the 2021 formula)"),
    Mutant("pq-match-at-0.5", "maskformer_core/metrics/panoptic.py",
           "ok = iou > 0.5", "ok = iou >= 0.5",
           ("tests/test_metrics.py",),
           "IoU exactly 0.5 counted as a match"),
    Mutant("pq-void-fp", "maskformer_core/metrics/panoptic.py",
           "fp = pred_unmatched & (2 * ignored <= pred_area)",
           "fp = pred_unmatched & (ignored <= pred_area)",
           ("tests/test_metrics.py", f"{EV}::test_ground_truth_model_scores_100_on_semantic_data_with_tta"),
           "predictions on VOID counted as false positives"),
    # ---- solver (pipeline/solver.py)
    Mutant("solver-poly-power-1", "pipeline/solver.py",
           "return warm * (1.0 - it / self.max_iter) ** self.power", "return warm * (1.0 - it / self.max_iter)",
           ("tests/test_solver.py",),
           "linear instead of poly(0.9) decay"),
    Mutant("solver-backbone-multiplier", "pipeline/solver.py",
           'lr = base_lr * (backbone_multiplier if "backbone" in module_name else 1.0)', "lr = base_lr",
           ("tests/test_solver.py",),
           "backbone learning-rate multiplier ignored"),
    Mutant("solver-norm-decay", "pipeline/solver.py",
           "                wd = weight_decay_norm\n", "                wd = weight_decay\n",
           ("tests/test_solver.py",),
           "weight decay on norm layers"),
    # ---- tables (pipeline/tables.py)
    Mutant("tables-mean-not-median", "pipeline/tables.py",
           "ours = statistics.median(values)", "ours = statistics.mean(values)",
           ("tests/test_tables.py",),
           "seeds averaged instead of the median (paper Sec. 4.1)"),
    Mutant("tables-tolerance-ignored", "pipeline/tables.py",
           'elif abs(ours - value) > _tolerance(params, p["metric"], pstd, value):', "elif abs(ours - value) > 0:",
           ("tests/test_tables.py",),
           "every difference marked outside tolerance"),
    # ---- the study's caching (pipeline/study.py)
    Mutant("study-never-done", "pipeline/study.py",
           'return unit_state(unit.run_dir)[0] == "done"', "return False",
           ("tests/test_study.py::test_unchanged_cells_are_skipped_and_changed_cells_rerun",),
           "finished cells run again"),
    Mutant("study-done-without-metrics", "pipeline/study.py",
           "if state == \"done\" and not (run_dir / METRICS_FILE).is_file():", "if False:",
           ("tests/test_study.py::test_done_status_without_metrics_is_run_again",),
           "a done status without metrics.json counts as done"),
)


def copy_repo(dest: Path) -> None:
    """Tracked and untracked-not-ignored files of the repository into `dest` (+ a `.venv` link)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, check=True)
    for rel in filter(None, out.stdout.decode().split("\0")):
        src = REPO / rel
        if not src.is_file():  # deleted in the working tree
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    if (REPO / ".venv").exists():
        (dest / ".venv").symlink_to((REPO / ".venv").resolve())


def apply(mutant: Mutant, root: Path) -> str | None:
    """Apply the mutant in `root`; returns an error text when its source text is missing or ambiguous."""
    path = root / mutant.file
    if not path.is_file():
        return f"{mutant.file} not found"
    text = path.read_text()
    count = text.count(mutant.old)
    if count != 1:
        return f"target text found {count} times in {mutant.file}: {mutant.old!r}"
    path.write_text(text.replace(mutant.old, mutant.new))
    return None


def run_tests(root: Path, selection: tuple[str, ...]) -> tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=str(root), TQDM_DISABLE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    # --basetemp inside the copy: pytest's rotation of /tmp/pytest-of-<user> must not touch other sessions.
    cmd = [sys.executable, "-m", "pytest", *selection, "-x", "-q", "-rf", "-p", "no:cacheprovider",
           "-m", "not services and not browser", f"--basetemp={root / '.pytest-tmp'}"]
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=TEST_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return 124, "timeout"
    return proc.returncode, proc.stdout + proc.stderr


def killed_by(output: str) -> str:
    m = re.search(r"^FAILED (\S+)", output, re.M)
    return m.group(1).split(" - ")[0] if m else "?"


def check(mutant: Mutant, work: Path) -> dict:
    root = Path(tempfile.mkdtemp(prefix=f"mutant-{mutant.name}-", dir=work))
    t0 = time.monotonic()
    try:
        copy_repo(root)
        error = apply(mutant, root)
        if error:
            return {"mutant": mutant, "result": "STALE", "killed_by": error, "seconds": 0.0}
        rc, out = run_tests(root, mutant.tests)
        if rc == 1:
            result, by = "killed", killed_by(out)
        elif rc == 0:
            result, by = "SURVIVED", "-"
        else:  # 2 interrupted/collection error, 4 usage, 5 nothing collected, 124 timeout
            result, by = "ERROR", f"pytest exit {rc}: {out.strip().splitlines()[-1] if out.strip() else ''}"
        return {"mutant": mutant, "result": result, "killed_by": by, "seconds": time.monotonic() - t0}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def baseline(mutants: list[Mutant], work: Path) -> str | None:
    """Every selection passes on the unmutated copy (else a 'kill' would mean nothing)."""
    selection = tuple(dict.fromkeys(t for m in mutants for t in m.tests))
    root = Path(tempfile.mkdtemp(prefix="mutant-baseline-", dir=work))
    try:
        copy_repo(root)
        rc, out = run_tests(root, selection)
        if rc != 0:
            return f"baseline: the selections fail without any mutant (pytest exit {rc}):\n{out[-3000:]}"
        return None
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-k", dest="pattern", help="only mutants whose name contains this text")
    ap.add_argument("-j", "--jobs", type=int, default=1, help="mutants checked in parallel (default 1)")
    ap.add_argument("--list", action="store_true", help="print the mutants and exit")
    ap.add_argument("--no-baseline", action="store_true", help="skip the run of the selections without a mutant")
    args = ap.parse_args(argv)
    mutants = [m for m in MUTANTS if not args.pattern or args.pattern in m.name]
    if args.list:
        for m in mutants:
            print(f"{m.name:32s} {m.file:38s} {' '.join(m.tests)}\n{'':32s} {m.why}")
        return 0
    if not mutants:
        print(f"no mutant matches {args.pattern!r}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="mutants-"))
    try:
        if not args.no_baseline:
            problem = baseline(mutants, work)
            if problem:
                print(problem, file=sys.stderr)
                return 1
        with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
            results = list(pool.map(lambda m: check(m, work), mutants))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    w = max(len(m.name) for m in mutants)
    fw = max(len(m.file) for m in mutants)
    print(f"{'mutant':{w}s} | {'file':{fw}s} | killed-by | result")
    for r in results:
        print(f"{r['mutant'].name:{w}s} | {r['mutant'].file:{fw}s} | {r['killed_by']} | {r['result']} "
              f"({r['seconds']:.0f} s)")
    bad = [r for r in results if r["result"] != "killed"]
    print(f"{len(results) - len(bad)}/{len(results)} mutants killed in {time.monotonic() - t0:.0f} s"
          + (f"; {len(bad)} not: {', '.join(r['mutant'].name for r in bad)}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
