"""Error types shared across layers: one type per failure, whichever client meets it."""


class MLServerUnavailableError(RuntimeError):
    """MLServer cannot be reached (connection refused, timeout, or a 5xx from the server itself)."""


class MLServerModelError(RuntimeError):
    """MLServer refused to load, unload or report a model."""
