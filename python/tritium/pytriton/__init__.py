"""PyTriton's API on Tritium: ``tritium.pytriton`` mirrors PyTriton 0.7's public modules
(``triton``, ``model_config``, ``decorators``, ``client``, ``exceptions``) so that code written for
PyTriton runs with its imports changed from ``pytriton.`` to ``tritium.pytriton.``. The functions
are served by an in-process ``tritium.Server`` instead of a ``tritonserver`` child process with a
proxy backend; the book's "PyTriton compatibility" page (docs/src/python/pytriton.md) lists what differs."""
