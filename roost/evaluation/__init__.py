"""Evaluation: does training on the data make a model better? (`roost eval`).

- verifiable problems (GSM8K / MATH / plain gold answers, graded with math-verify): greedy
  pass@1, sampled accuracy, maj@k, pass@k, by number of steps (roost.evaluation.verifiable);
- open-ended prompts: win rate against a reference, judged by a reward model or a pairwise
  judge, with a length-controlled win rate (roost.evaluation.winrate);
- lm-evaluation-harness tasks as a pass-through (roost.evaluation.harness).
"""
