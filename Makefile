# pipesim: common tasks. `make install trace simulate` runs the bundled example end to end.
PYTHON ?= python3
EXAMPLE ?= llama8b_pp2
CLUSTER ?= configs/cluster/single_node_pp_instance.json
TRACE_DIR = traces/$(EXAMPLE)

.PHONY: install trace simulate test bench lint proto proto-check clean

install:
	$(PYTHON) -m pip install -q -e '.[dev]'

# One serving iteration of Llama-3.1-8B on the seed's PP=2 cluster: a 512-token prefill and 32 decodes.
trace:
	$(PYTHON) -m astra_driver.cli trace --cluster-config $(CLUSTER) --prefill 512 --decode 32x1024 --name $(EXAMPLE)

# Replay what `make trace` wrote, exactly as ASTRA-Sim would be run on it (builtin engine by default).
simulate:
	$(PYTHON) -m astra_driver.cli replay --workload-configuration=$(TRACE_DIR)/llm \
	  --system-configuration=$(TRACE_DIR)/system.json \
	  --network-configuration=$(TRACE_DIR)/network.yml \
	  --remote-memory-configuration=$(TRACE_DIR)/memory.json \
	  $(if $(wildcard $(TRACE_DIR)/comm_groups.json),--comm-group-configuration=$(TRACE_DIR)/comm_groups.json,)

test:
	$(PYTHON) -m pytest

bench:
	$(PYTHON) scripts/bench_trace.py
	$(PYTHON) scripts/bench_engine.py
	$(PYTHON) scripts/bench_train.py
	$(PYTHON) scripts/bench_serving.py

lint:
	ruff check .
	ruff format --check .

# The Chakra classes are built in code (llm_converter/chakra/schema.py); this checks them against the .proto.
proto proto-check:
	$(PYTHON) -m pytest tests/test_chakra_schema.py

clean:
	find traces -mindepth 1 ! -name README.md -exec rm -rf {} +

# The pipesim image (Dockerfile; docs/backends.md). OFFLINE=1 builds every wheel here first (build/wheelhouse), so
# the build itself needs no network; DOCKER_BUILD_ARGS adds options, e.g. --build-arg BASE_IMAGE=python-local:3.11,
# --build-arg ASTRA_SIM_IMAGE=IMG --build-arg ASTRA_SIM_BIN=/path/in/IMG, or --network=host.
DOCKER_TAG ?= pipesim
.PHONY: docker
docker:
	$(if $(OFFLINE),rm -rf build/wheelhouse && $(PYTHON) -m pip wheel -q . -w build/wheelhouse,)
	docker build -t $(DOCKER_TAG) $(if $(OFFLINE),--build-arg WHEELHOUSE=build/wheelhouse,) $(DOCKER_BUILD_ARGS) .
