"""Imported by the step server (step_server.STEP_PRELOAD): every step process forked from it
chooses the page size of its fresh memory as it starts (lib/pages.py). Only the server's
import registers the choice; any other import of the module does nothing."""

from __future__ import annotations

from racedayai_bayes.step_server import in_step_server

if in_step_server():
    import os

    from racedayai_bayes.lib.pages import apply_step_pages

    os.register_at_fork(after_in_child=apply_step_pages)
