"""Building a dataset: runner.py (a Build: one recipe's synthesizer, plan and writer, shard by
shard, resumable), on_ray.py (the same shards on a Ray cluster's actors), iterate.py (the loop of
builds, training and evaluations of `roost iterate`)."""
