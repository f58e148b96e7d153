.PHONY: setup test test-full demo format lint

setup:
	bash scripts/setup.sh

test:
	bash scripts/test.sh

test-full:
	bash scripts/test.sh -m ""

demo:
	bash scripts/demo.sh

lint:
	.venv/bin/ruff check granite_train data_prep tests benchmarks scripts

format:
	.venv/bin/ruff format granite_train data_prep tests benchmarks scripts
	.venv/bin/ruff check --fix granite_train data_prep tests benchmarks scripts
