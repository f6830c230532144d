"""What the stub process shares with the `triton_python_backend_utils` modules: its connection to the server and
the version folder of the model it runs. Both stay None outside a stub (the modules still import, for tests)."""

# The stub's connection to the server (responses, BLS requests, model control, log lines, metrics).
runtime = None
# The version folder of the model this stub runs (set before auto_complete_config and initialize run).
model_dir = None
