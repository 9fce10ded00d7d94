# Every target that runs project code first makes .venv and installs the
# project into it, so a fresh clone needs nothing but python3 (>= 3.11).

VENV = .venv
PY = $(VENV)/bin/python
PYTHON ?= python3
STAMP = $(VENV)/.installed
SEEDS ?= 100000
NODE_SEEDS ?= 10000
# make soak: minutes of nemesis runs.
MINUTES ?= 10
# Per-test limit in seconds: generous, it only catches a hang.
TEST_TIMEOUT ?= 600
# bench-rebalance: keys loaded before the group is added, and their value size.
KEYS ?= 1000000
VALUE_SIZE ?= 100

.PHONY: all install test up lint format proto sim node-sim soak soak-sim bench-raft bench-node bench-compare bench-txn bench-rebalance clean distclean

all: test

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the dependencies may have changed.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# Debian packages tests use: nftables for the partitions of the
# network-namespace test (iproute2 makes the namespaces), and etcd-client
# (etcdctl) for the etcd API tests with a client nobody here wrote.
# Installed when missing and we are root; without them those tests skip and
# say why.
APT_STAMP = $(VENV)/.apt
$(APT_STAMP): | $(PY)
	@if { ! command -v nft || ! command -v etcdctl; } >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing nftables, iproute2 and etcd-client (apt)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables iproute2 etcd-client >/dev/null \
			|| echo "apt-get failed: the network-namespace and etcdctl tests will skip"; \
	fi
	@# Only once both are there: without them, the next make tries again.
	@if command -v nft >/dev/null 2>&1 && command -v etcdctl >/dev/null 2>&1; then touch $@; fi

install: $(STAMP)

test: $(STAMP) $(APT_STAMP)
	$(PY) -m pytest -n 2 -q --timeout=$(TEST_TIMEOUT)

# A local cluster in the foreground (3 nodes, 4 groups, a router on
# 127.0.0.1:7000, data in ./shardkv-data); Ctrl-C stops it.
up: $(STAMP)
	$(VENV)/bin/shardkv up

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy shardkv router tests/sim tests/checkers tests/fault bench

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. \
		proto/shardkv/v1/*.proto proto/shardkv/etcd/*.proto

sim: $(STAMP)
	$(PY) -m tests.sim.soak --seeds $(SEEDS) --jobs 2

node-sim: $(STAMP)
	$(PY) -m tests.sim.node_sim --seeds 0 $(NODE_SEEDS) --jobs 2

# The simulators' long runs (many seeds; see the README).
soak-sim: sim node-sim

# Nemesis runs on real processes, back to back for MINUTES, then a summary
# table (runs, faults, operations, anomalies); tests/fault/soak.py.
soak: $(STAMP) $(APT_STAMP)
	$(PY) -m tests.fault.soak --minutes $(MINUTES)

bench-raft: $(STAMP)
	$(PY) bench/raft_core.py

bench-node: $(STAMP)
	$(PY) bench/node.py

# Installs Debian's etcd-server first if etcd is missing (needs root).
bench-compare: $(STAMP)
	$(PY) -m bench.etcd.install
	$(PY) -m bench.compare

# Transfers through Txn on a fresh local cluster: two groups, one group, a hot set.
bench-txn: $(STAMP)
	$(PY) -m bench.txn

# Add a group to 4 holding KEYS keys while a client writes the moving keys:
# keys moved/s, the longest put of a moved key, frozen_ms; checks the data after.
bench-rebalance: $(STAMP)
	$(PY) -m bench.rebalance --keys $(KEYS) --value-size $(VALUE_SIZE)

clean:
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist *.egg-info

distclean: clean
	rm -rf $(VENV)
