"""Judges: chat models that compare, score or label data.

- `roost.judges.pairwise.PairwiseJudge`: any chat model as a pairwise preference model (the part
  PairRM plays in SPPO), from the logprobs of its two answer tokens;
- `roost.judges.absolute.AbsoluteJudge`: Prometheus-style feedback and a 1-5 score under a rubric;
- `roost.judges.tags.Tagger`: Magpie's instruction tags;
the last two answer in JSON under a schema the engine enforces (`roost.judges.structured`).
"""
