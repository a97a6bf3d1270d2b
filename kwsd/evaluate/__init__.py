"""`kwsd eval`: measure keyword recall, false alarms and latency on labelled recordings,
and tune per-keyword thresholds and boosts against a false-alarm budget."""
