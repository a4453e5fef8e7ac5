# Two commands a newcomer needs: `make demo` and `make test`. Both install what is missing first.
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: install demo test bench clean-demo

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m launch.demo

test: install
	PYTHONPATH=. .venv/bin/lint-imports --no-cache
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	$(PY) -m pytest

bench: install
	$(PY) benchmarks/quality.py
	$(PY) benchmarks/speed.py

clean-demo:
	rm -rf demo
