"""User-facing errors of the pipeline: each message names the file, key or value at fault."""


class UserError(Exception):
    """An error the user can fix (bad params, missing data, wrong checkpoint). Exit code 2."""
