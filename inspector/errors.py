"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""


class InspectorError(Exception):
    """A problem the user can fix: the message names the thing to fix."""


class ImageError(InspectorError):
    """One image could not be read or converted."""


def refuse_older(fmt: object, current: int, where: object, kind: str, fix: str) -> None:
    """A model written before the current format is refused with one line saying to refit it."""
    if isinstance(fmt, int) and fmt < current:
        raise InspectorError(f"{where} was fitted by an older inspector version ({kind} format {fmt}): refit it {fix}")
