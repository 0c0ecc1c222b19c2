"""User-facing errors: the CLI prints one line and exits with code 2, without a traceback."""


class UserError(Exception):
    """A mistake the user can fix (bad config, missing file, mismatched bank...)."""


class ConfigError(UserError):
    pass
