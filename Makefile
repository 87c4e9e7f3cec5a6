# The two commands: `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Debian packages the integration tests start as real servers.
SERVICES := mosquitto influxdb victoria-metrics chromium
# The OPC Foundation's DI, IA and Machinery nodesets (MIT) that the OPC UA gateway test's server
# loads, from npm's node-opcua-nodesets (MIT): fetched, never committed.
NODESETS := $(VENV)/opcua-nodesets
NODESETS_PACKAGE := node-opcua-nodesets@2.182.0
# pysparkplug, the independent Sparkplug edge node of the Sparkplug test: it pins paho-mqtt < 2,
# so it gets a virtual environment of its own.
PYSPARKPLUG := $(VENV)/pysparkplug

.PHONY: demo test lint services bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/twin demo

services:
	@missing=""; for pkg in $(SERVICES); do \
	  dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing Debian packages:$$missing; install them with: sudo apt-get install$$missing" >&2; \
	    exit 1; \
	  fi; \
	fi

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

$(NODESETS)/.fetched:
	@mkdir -p $(NODESETS)
	cd $(NODESETS) && npm pack --silent $(NODESETS_PACKAGE) >/dev/null && \
	  tar xzf node-opcua-nodesets-*.tgz --strip-components=2 package/nodesets/Opc.Ua.Di.NodeSet2.xml \
	    package/nodesets/Opc.Ua.IA.NodeSet2.xml package/nodesets/Opc.Ua.Machinery.NodeSet2.xml && \
	  rm node-opcua-nodesets-*.tgz
	touch $@

$(PYSPARKPLUG)/.installed:
	$(PYTHON) -m venv $(PYSPARKPLUG)
	$(PYSPARKPLUG)/bin/pip install --quiet --disable-pip-version-check 'pysparkplug==0.6.1'
	touch $@

test: $(BIN)/.installed services $(NODESETS)/.fetched $(PYSPARKPLUG)/.installed lint
	$(BIN)/pytest

bench: $(BIN)/.installed services
	$(BIN)/python -m bench.ingest
	$(BIN)/python -m bench.sink
	$(BIN)/python -m bench.model
	$(BIN)/python -m bench.allocation
	$(BIN)/python -m bench.cluster
	$(BIN)/python -m bench.maintenance
	$(BIN)/python -m bench.site_model

clean:
	rm -rf $(VENV) twin-data .pytest_cache .ruff_cache
