# Two commands for a new machine: `make demo` (end-to-end offline demo) and `make test`.
.PHONY: setup demo test bench clean

setup:
	@scripts/setup.sh

demo: setup
	HF_HUB_OFFLINE=1 .venv/bin/roost demo

test: setup
	HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q

bench: setup
	HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_magpie.py
	HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_deita.py
	HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_reward.py
	HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_pairs.py
	HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_sppo.py
	HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_step_dpo.py
	HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_embed.py
	HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_dedup.py
	HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_hub_input.py
	HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_static_dedup.py
	HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_curate_memory.py
	HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_curate_memory.py --rows 1000000 --static
	HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_curate_resume.py
	HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_report.py
	HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_server.py

clean:
	rm -rf out .cache
