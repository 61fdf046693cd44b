"""Thin Dagster wrappers around racedayai_bayes.lib."""
