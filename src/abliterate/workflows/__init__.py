"""The workflows beside `run` (pipeline.py), each a library function behind one command:
evaluate.py (`evaluate`), compare.py (`compare`), manual.py (`directions`, `apply`), heal.py
(`heal`) and memory_plan.py (`plan`)."""
