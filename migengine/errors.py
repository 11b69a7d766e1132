"""The exceptions of migengine; every one derives from MigengineError."""

import errno as _errno


class MigengineError(Exception):
    """Base class of every migengine error."""


class MigrateError(MigengineError, OSError):
    """A kernel argument check failed (``errno == EINVAL``)."""

    def __init__(self, message: str, err: int = _errno.EINVAL) -> None:
        OSError.__init__(self, err, message)


class SegFault(MigengineError):
    """An access outside every VMA, or one the VMA's protection forbids."""


class SigBus(MigengineError):
    """An access to a page that cannot be made present (SIGBUS)."""


class OutOfMemory(MigengineError):
    """No free frame was left for an allocation."""


class InvariantError(MigengineError):
    """``Machine.check()`` found an inconsistent state; the message names it."""
