"""initialize raises: the model never becomes ready."""


class TritonPythonModel:
    def initialize(self, args):
        raise ValueError("initialize exploded")

    def execute(self, requests):
        return []
