"""Curating a dataset: runner.py (the stage runner of `roost curate`: passes, ledger, counts,
rejects, schema) and cache.py (what each stage finished, kept under OUT/.cache, so a killed
curation resumes). The stages themselves are plug-ins in roost/stages/."""
