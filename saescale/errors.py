"""User-facing errors.

Every problem a user can cause (bad option, corrupt file, NaN in a batch, wrong
width, missing data) is raised as :class:`SaescaleError` with a one-line message
that names the problem and the fix. The CLI prints ``error: <message>`` and exits
with status 2, without a traceback.
"""


class SaescaleError(Exception):
    """A problem with the user's input, stated in one line with the fix."""
