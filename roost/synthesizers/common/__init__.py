"""What the synthesizer plug-ins share, not plug-ins themselves (the registry skips packages):
prompted.py (the base of the prompt-sampling synthesizers), templates.py (chat templates),
magpie_prompts.py and instruction_rules.py (Magpie's pre-query templates and instruction rules)."""
