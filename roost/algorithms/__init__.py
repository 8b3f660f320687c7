"""The rules and algorithms curation stages run, as plain functions and classes with no runner:
base.py (a rule returns keep or a Drop with its reason; FilterStep owns the loop and the rejects),
text_rules.py and heuristics.py (text rules), exact_dedup.py and semantic_dedup.py (dedup kernels,
FAISS), dedup_result.py (what a dedup kept and removed because of which row), decontaminate.py
(n-gram and embedding index of benchmark sets), selection.py (deita's diversity-aware selection),
ranking.py (the one priority order of rows)."""
