"""Error types shared across layers: one type per failure, whichever client meets it."""


class MLServerUnavailableError(RuntimeError):
    """MLServer cannot be reached (connection refused, timeout, or a 5xx from the server itself)."""


class MLServerModelError(RuntimeError):
    """MLServer refused to load, unload or report a model."""


class ModelIntegrityError(RuntimeError):
    """A model artifact's SHA-256 is not the one recorded when the version was trained, or none was recorded.

    Raised before anything unpickles the artifact; ``model`` names the version (``riverbed-loan version 3``),
    ``artifact`` the file, ``expected`` the recorded digest (None: nothing recorded) and ``actual`` the file's.
    """

    def __init__(
        self,
        message: str,
        *,
        model: str = "",  # a default so the exception unpickles (pickle calls the class with the message alone)
        artifact: str | None = None,
        expected: str | None = None,
        actual: str | None = None,
    ) -> None:
        super().__init__(message)
        self.model = model
        self.artifact = artifact
        self.expected = expected
        self.actual = actual
