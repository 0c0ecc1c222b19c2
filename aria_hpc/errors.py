"""User-facing errors: the CLI prints one line and exits with code 2, without a traceback; a
preempted run exits 75 (aria_hpc/entry.py maps both)."""


class UserError(Exception):
    """A mistake the user can fix (bad config, missing file, mismatched bank...)."""


class ConfigError(UserError):
    pass


class AgreedError(UserError):
    """The same UserError on every rank (they agreed on it through a collective): rank 0 prints it,
    the others exit 2 quietly, so a user reads one line however many ranks ran."""


PREEMPTED_EXIT = 75  # EX_TEMPFAIL: the checkpoint is saved; run the same command again


class Preempted(Exception):
    """Raised by training after a checkpoint was saved on SIGUSR2 / SIGTERM."""
