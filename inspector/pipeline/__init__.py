"""The torch steps: fit, calibrate, evaluate, export; checkpoints and torch inference."""
