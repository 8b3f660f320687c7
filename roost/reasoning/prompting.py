"""How a math problem is put to a policy and how its solution is laid out (Step-DPO's format).

The user turn is the problem plus Step-DPO's instruction; the assistant turn starts with the
opener and numbered step headers:

    user:      <problem>\nPlease reason step by step, and put your final answer within \\boxed{}.
    assistant: Let's think step by step.\nStep 1: ...\nStep 2: ...\nThe answer is \\boxed{8}.

Generation continues the assistant turn after the opener and the first header, so every
solution is in this shape from its first token.
"""
from __future__ import annotations

INSTRUCTION = "\nPlease reason step by step, and put your final answer within \\boxed{}."
OPENER = "Let's think step by step.\n"
HEADER = "Step {k}:"


def user_turn(problem: str, instruction: str = INSTRUCTION) -> dict:
    return {"role": "user", "content": problem + instruction}
