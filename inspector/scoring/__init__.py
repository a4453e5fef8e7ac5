"""Numbers on arrays (numpy only): thresholds, metrics, drift statistics, the promotion gate."""
