"""A forkserver preload for test_stop_watchdog: the step server's orphan guard alone (the
server's own preload, racedayai_bayes.step_warmup, also opens a Dagster instance)."""

from racedayai_bayes.stop_watchdog import end_steps_with_their_run

end_steps_with_their_run()
