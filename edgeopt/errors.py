"""The few exception types edgeopt raises, each with a message a user can act on.

Every error names the problem and the fix. The CLI turns them into one paragraph and an exit code;
a traceback is only shown with ``--verbose``.
"""

from __future__ import annotations


class EdgeoptError(Exception):
    """Base class. ``problem`` says what is wrong, ``fix`` what to do about it."""

    exit_code = 1

    def __init__(self, problem: str, fix: str | None = None):
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return self.problem if not self.fix else f"{self.problem}\nFix: {self.fix}"


class UserInputError(EdgeoptError):
    """A recipe, spec, target, precision, path or flag the user gave is wrong."""

    exit_code = 2


class ModelLoadError(UserInputError):
    """The model (factory, checkpoint, file) cannot be loaded as given."""


class BackendMissingError(EdgeoptError):
    """A framework edgeopt needs for this step is not installed."""

    exit_code = 3

    def __init__(self, what: str, extra: str, purpose: str = "", fix: str | None = None):
        needed = f" to {purpose}" if purpose else ""
        verb, pronoun = ("are", "them") if " and " in what else ("is", "it")
        super().__init__(
            f"{what} {verb} not installed; edgeopt needs {pronoun}{needed}.",
            fix or f"pip install 'edgeopt[{extra}]'",  # a backend's own: Backend.install_hint()
        )
        self.extra = extra


class ExportError(EdgeoptError):
    """The model could not be exported to ONNX."""

    exit_code = 4


class ParityError(EdgeoptError):
    """An artifact's outputs differ from the PyTorch reference beyond tolerance."""

    exit_code = 5


class CompileError(EdgeoptError):
    """A backend failed to compile an artifact."""

    exit_code = 6


class DataError(UserInputError):
    """Calibration or evaluation data is unusable."""


class IntegrityError(EdgeoptError):
    """A file, artifact or bundle does not match its recorded hash or schema."""

    exit_code = 7


class ArtifactLoadError(IntegrityError):
    """The backend could not load an artifact (corrupt, truncated, or made for another runtime version)."""


class BusyError(EdgeoptError):
    """Another edgeopt process holds the lock on this output folder (or cached bundle)."""

    exit_code = 11


class DiskFullError(EdgeoptError):
    """The disk holding the output (or the cache) is full."""

    exit_code = 10


def require(module: str, extra: str, purpose: str = ""):
    """Import ``module`` or raise :class:`BackendMissingError` naming the pip extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised in a torch-free venv test
        raise BackendMissingError(module, extra, purpose) from exc
