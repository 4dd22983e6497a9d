"""The stages of a run, in order: session (1-4: run directory, model, prompts, directions) and
base metrics (5). The search (6) and the choice (7) live in search/."""
