"""The modelled distances, here so that importing them imports nothing else (the command line
parses its arguments with them before it starts the step server)."""

MODEL_DISTANCES = ("70.3", "140.6")

# The model frame's number of each row's athlete (lib/data/frame.py): equal exactly where the
# athlete_hash is, -1 for a blank one. A label of the row, made once when the frame is built
# (its numbering is of that frame's race file only), never a feature: a model uses it to tell
# one athlete's rows from another's without hashing the text again (history.athlete_codes).
ATHLETE_ID = "athlete_id"
