"""Errors that mean "the data or the configuration is wrong", not "the code is wrong".

The command line and the Dagster assets report these as one clear message, without a
traceback; any other exception is a bug and keeps its traceback.
"""


class FitError(ValueError):
    """A distance's rows cannot be fitted (too few rows, no spread, no age group).

    The message names the distance, what is wrong and how many rows; the Dagster layer
    shows it as the step's failure message.
    """
