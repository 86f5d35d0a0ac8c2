"""`python -m pipeline checkpoint rehash PATH`: write the missing .sha256 sidecars of intact checkpoints.

Training refuses a checkpoint without its sidecar (it cannot tell an intact copy from a torn one) rather
than starting over on top of it; after checking the files (e.g. a run folder copied with `*.pt` only),
this command re-creates the sidecars so `train` / `study` resume from them.
"""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("checkpoint", help="checkpoint maintenance: rehash (write missing .sha256 sidecars)",
                              description=__doc__)
    sub = p.add_subparsers(dest="checkpoint_command", metavar="ACTION", required=True)
    r = sub.add_parser("rehash", help="write the .sha256 of each checkpoint that lacks one (after it loads)",
                       description="Each *.pt without a .sha256 is loaded (weights_only) and, if it is a checkpoint, "
                                   "gets its sidecar. Existing sidecars are never rewritten; a mismatch is reported "
                                   "and the command exits 2.")
    r.add_argument("path", nargs="+", help="a run folder, its checkpoints/ folder or a .pt file")
    r.set_defaults(func=run)


def run(args) -> int:
    from pipeline.checkpoint import rehash
    from pipeline.errors import UserError

    mismatched = []
    for path in args.path:
        for f, state in rehash(path):
            print(f"{state:<8} {f}")
            if state == "mismatch":
                mismatched.append(f)
    if mismatched:
        raise UserError(f"{mismatched[0]} does not match its .sha256 (truncated or corrupt); left as it is "
                        f"({len(mismatched)} such file(s))")
    return 0
