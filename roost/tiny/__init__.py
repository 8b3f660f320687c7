"""Models built offline for the tests and the demo: models.py (tiny chat and reward models) and
math_model.py (a tiny model that really solves some of the shipped arithmetic problems)."""
