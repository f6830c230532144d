"""`triton_python_backend_utils.ModelConfig`: what `auto_complete_config` receives and returns."""

from __future__ import annotations

import json

class ModelConfig:
    """The config `auto_complete_config` receives (built from the config's JSON text) and returns: the model's
    config as a dict, with helpers that fill what it leaves out and refuse what contradicts it, in Triton's words."""

    def __init__(self, model_config):
        self._model_config = json.loads(model_config)

    def as_dict(self):
        return self._model_config

    def _name(self):
        return self._model_config.get("name", "")

    def set_max_batch_size(self, max_batch_size):
        current = self._model_config.get("max_batch_size", 0)
        if current > max_batch_size:
            raise ValueError(f"configuration specified max_batch_size {current}, but in auto-complete-config function "
                             f"for model '{self._name()}' specified max_batch_size {max_batch_size}")  # fmt: skip
        self._model_config["max_batch_size"] = max_batch_size

    def set_dynamic_batching(self):
        for scheduler in ("sequence_batching", "ensemble_scheduling"):
            if scheduler in self._model_config:
                raise ValueError(f"Configuration specified scheduling_choice as '{scheduler}', but auto-complete-config "
                                 f"function for model '{self._name()}' tries to set scheduling_choice as "
                                 "'dynamic_batching'")  # fmt: skip
        self._model_config.setdefault("dynamic_batching", {})

    def add_input(self, input):
        self._add_tensor("input", input, ("name", "data_type", "dims", "optional"), "'name', 'data_type', 'dims' and 'optional'")

    def add_output(self, output):
        self._add_tensor("output", output, ("name", "data_type", "dims"), "'name', 'data_type' and 'dims'")

    def _add_tensor(self, kind, tensor, allowed, allowed_words):
        model = self._name()
        for key in tensor:
            if key not in allowed:
                raise ValueError(f"{kind} '{tensor['name']}' in auto-complete-config function for model '{model}' "
                                 f"contains property other than {allowed_words}.")  # fmt: skip
        if "name" not in tensor:
            raise ValueError(f"{kind} in auto-complete-config function for model '{model}' is missing 'name' property.")
        for key in ("data_type", "dims"):
            if key not in tensor:
                raise ValueError(f"{kind} '{tensor['name']}' in auto-complete-config function for model '{model}' is "
                                 f"missing '{key}' property.")  # fmt: skip
        entries = self._model_config.setdefault(kind, [])
        for entry in entries:
            if entry.get("name") != tensor["name"]:
                continue
            present = entry.get("data_type", "TYPE_INVALID")
            if present != "TYPE_INVALID" and present != tensor["data_type"]:
                raise ValueError(f"unable to load model '{model}', configuration expects datatype {present} for "
                                 f"{kind} '{tensor['name']}', model provides {tensor['data_type']}")  # fmt: skip
            if entry.get("dims") and entry["dims"] != tensor["dims"]:
                raise ValueError(f"model '{model}', tensor '{tensor['name']}': the model expects dims "
                                 f"{tensor['dims']} but the model configuration specifies dims {entry['dims']}")  # fmt: skip
            if "optional" in entry and "optional" in tensor and entry["optional"] != tensor["optional"]:
                raise ValueError(f"model '{model}', tensor '{tensor['name']}': the model expects optional "
                                 f"{tensor['optional']} but the model configuration specifies optional "
                                 f"{entry['optional']}")  # fmt: skip
            entry["data_type"] = tensor["data_type"]
            entry["dims"] = tensor["dims"]
            if "optional" in tensor:
                entry["optional"] = tensor["optional"]
            return
        entries.append(tensor)

    def set_model_transaction_policy(self, transaction_policy_dict):
        model = self._name()
        for key in transaction_policy_dict:
            if key != "decoupled":
                raise ValueError(f"model transaction property in auto-complete-config function for model '{model}' "
                                 "contains property other than 'decoupled'.")  # fmt: skip
        policy = self._model_config.setdefault("model_transaction_policy", {})
        if "decoupled" in transaction_policy_dict:
            if "decoupled" in policy and policy["decoupled"] != transaction_policy_dict["decoupled"]:
                raise ValueError(f"trying to change decoupled property in auto-complete-config for model '{model}', "
                                 f"which is already set to '{policy['decoupled']}'.")  # fmt: skip
            policy["decoupled"] = transaction_policy_dict["decoupled"]
