"""Imported first by the step server (step_server.STEP_PRELOAD): the cyclic garbage collector
stays off while the server imports its preload, and step_warmup, imported last, freezes what
the preload made and turns it back on (lib/processes.freeze_imports). Only the server's import
turns it off; any other import of the module does nothing."""

from __future__ import annotations

from racedayai_bayes.step_server import in_step_server

if in_step_server():
    import gc
    import os

    gc.disable()
    # a step process collects whatever happens to the server's preload (should step_warmup
    # never run, the server's collector stays off, never a step's)
    os.register_at_fork(after_in_child=gc.enable)
