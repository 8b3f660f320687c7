"""Curation stages, one module each; see base.py. `STAGES` finds them by `kind`."""
