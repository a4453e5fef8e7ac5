"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""


class InspectorError(Exception):
    """A problem the user can fix: the message names the thing to fix."""


class ImageError(InspectorError):
    """One image could not be read or converted."""
