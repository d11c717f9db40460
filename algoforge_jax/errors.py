"""The one exception type that the CLI turns into a one-line reason and a non-zero exit."""


class UserError(Exception):
    """Bad input from the user: a file, a flag, a checkpoint. The message names what is wrong and where."""
