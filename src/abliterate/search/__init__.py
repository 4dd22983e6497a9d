"""The automatic search: the space of edits, the two objectives, the Optuna study, the choice."""
