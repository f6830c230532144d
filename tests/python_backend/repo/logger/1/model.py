"""Logs at every level through pb_utils.Logger (in initialize, execute and finalize) and echoes INPUT0."""

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.logger = pb_utils.Logger
        self.logger.log_info("logger: initialize info")

    def execute(self, requests):
        log = self.logger
        log.log_info("logger: execute info")
        log.log_warn("logger: execute warn")
        log.log_error("logger: execute error")
        log.log_verbose("logger: execute verbose")
        log.log("logger: execute log default level")
        out = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", data)]))
        return out

    def finalize(self):
        self.logger.log_info("logger: finalize info")
