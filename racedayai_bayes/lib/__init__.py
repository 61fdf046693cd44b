"""Plain-Python maths and data logic. Nothing below this package imports Dagster."""
