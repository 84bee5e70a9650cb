"""``llmc tune``: hyperparameter search over llmc runs with Optuna (tune/space.py, tune/study.py)."""
