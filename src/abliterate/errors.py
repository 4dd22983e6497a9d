"""The one exception type for bad input. The CLI prints its message on one line and exits 2."""


class AbliterateError(Exception):
    """A problem the user can fix; the message names the bad value and the fix."""
