"""Errors the command line maps to exit codes (GUIDE section 3)."""


class PipelineError(Exception):
    """Base class of the errors a user can act on."""

    exit_code = 1


class InputError(PipelineError):
    """Bad input data or configuration: exit code 2, one line naming file, column and row."""

    exit_code = 2


class TrainingFailed(InputError):
    """Training diverged (a NaN or infinite loss) or learned nothing: exit code 2, one line with
    the epoch, the loss and a hint; the run ends FAILED and no model is registered."""


class LockHeldError(PipelineError):
    """Another run holds the state lock: exit code 3."""

    exit_code = 3


class PromotionRefused(PipelineError):
    """The promotion gate kept the champion: exit code 4 (the decision is logged)."""

    exit_code = 4
