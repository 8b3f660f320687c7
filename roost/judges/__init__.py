"""Judges: models that compare responses and say, as a probability, which one is better.

`roost.judges.pairwise.PairwiseJudge` turns any chat model into a pairwise preference model
(the part PairRM plays in SPPO) by reading the logprobs of its two answer tokens.
"""
