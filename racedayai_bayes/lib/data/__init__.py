"""The modelled distances, here so that importing them imports nothing else (the command line
parses its arguments with them before it starts the step server)."""

MODEL_DISTANCES = ("70.3", "140.6")
