"""The search space: its syntax, sampling, and the checks that run before any trial."""
