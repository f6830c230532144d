"""PyTriton's exception classes, raised where PyTriton raises them."""


class PyTritonError(Exception):
    """The base of every error of this layer."""

    def __init__(self, message: str):
        super().__init__(message)
        self._message = message

    @property
    def message(self) -> str:
        return self._message


class PyTritonValidationError(PyTritonError):
    """A model, a tensor or a function's answer does not validate."""


class PyTritonInvalidOperationError(PyTritonError):
    """An operation not allowed in the current state (binding twice, use after stop...)."""


class PyTritonBadParameterError(PyTritonError):
    """A parameter with a value that cannot be used."""


class PyTritonModelConfigError(PyTritonError):
    """A model config that cannot be served."""


class PyTritonUnrecoverableError(PyTritonError):
    """The server failed and cannot go on."""


class PyTritonRuntimeError(PyTritonError):
    """An error while serving."""
