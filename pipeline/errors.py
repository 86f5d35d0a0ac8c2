"""User-facing errors of the pipeline: each message names the file, key or value at fault."""


class UserError(Exception):
    """An error the user can fix (bad params, missing data, wrong checkpoint). Exit code 2."""


class TrainingDiverged(UserError):
    """The training loss became NaN/Inf (e.g. a too-high learning rate). Exit code 2.

    `iteration`: iterations completed before the bad one; `checkpoint`: the last good checkpoint
    (None when none was written yet). The message names both.
    """

    def __init__(self, message: str, iteration: int, checkpoint=None):
        super().__init__(message)
        self.iteration, self.checkpoint = iteration, checkpoint
