"""The study and its storage: opening storages, sessions and recovery, the trial budget, duplicates."""
