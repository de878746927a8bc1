# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Each creates .venv when needed and installs raftlite into it (building io/native).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.raftlite-installed
TEST_TIME_LIMIT := 18m

.PHONY: install demo sim-demo test test-slow jepsen-campaign bench clean

$(STAMP): pyproject.toml setup.py io/native/_aio_build.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip "setuptools>=68" wheel
	$(PY) -m pip install --quiet -e '.[test,plots,fast,sweeps]'
	@touch $(STAMP)

install: $(STAMP)

# A real 3-node cluster on loopback: writes, a leader killed with SIGKILL, a new
# leader, the old node back and caught up; DUMPs from every node compared.
demo: $(STAMP)
	$(PY) -m raftlite demo

# The same story in the simulator, then a seeded run under every fault kind.
sim-demo: $(STAMP)
	$(PY) -m raftlite sim demo
	$(PY) -m raftlite sim run --seed 1 --nodes 3 --duration 20 --nemesis all

# Fails loudly if the suite runs past $(TEST_TIME_LIMIT) (CI allows 90 minutes; we aim
# well under 20).
# Two parts: the simulator and unit tests on both cores (pytest-xdist), then the tests
# that start node processes, one at a time (tests/conftest.py names them).
test: $(STAMP)
	@status=0; timeout --kill-after=30s $(TEST_TIME_LIMIT) sh -c '\
	  $(PY) -m pytest -n 2 -m "not slow and not real_cluster"; parallel=$$?; \
	  $(PY) -m pytest -m "not slow and real_cluster"; serial=$$?; \
	  [ $$parallel -ne 0 ] && exit $$parallel; exit $$serial' || status=$$?; \
	if [ $$status -eq 124 ]; then echo "FAILED: make test ran past $(TEST_TIME_LIMIT) and was stopped" >&2; fi; \
	exit $$status

# Long sweeps and soaks that do not belong in `make test`.
test-slow: $(STAMP)
	$(PY) -m pytest -n 2 -m "slow and not real_cluster"
	$(PY) -m pytest -m "slow and real_cluster"

# Simulator speed, native I/O, then raftlite beside dqlite-benchmark (kvwrite at 1, 4,
# 16, 64 workers): table, JSON and plot in bench/results/.
# A longer jepsen_like campaign in the simulator: every workload under every nemesis
# kind, alone and all together, over 20 seeds (progress, then a summary table).
jepsen-campaign: $(STAMP)
	$(PY) -m raftlite.jepsen_like.campaign --seeds 1..20 --nemesis each,all --time-limit 10

bench: $(STAMP)
	$(PY) -m raftlite sim bench --nodes 5 --duration 60
	$(PY) -m raftlite sim bench --actor raft --nodes 5 --duration 60 --rate 100
	$(PY) -m raftlite sim bench --actor raft --nodes 5 --duration 60 --rate 100 --faults
	$(PY) bench/native_io_bench.py
	$(PY) bench/kv_matrix.py --workers 1,4,16,64 --duration 10 --runs 2

clean:
	rm -rf build dist *.egg-info .pytest_cache io/native/_aio*.so io/native/_aio.c
