# pipesim: common tasks. `make install trace simulate` runs the bundled example end to end.
PYTHON ?= python3
EXAMPLE ?= llama8b_pp2
CLUSTER ?= configs/cluster/single_node_pp_instance.json
DATASET ?= configs/workloads/example_trace.jsonl
BACKEND ?= builtin
TRACE_DIR = traces/$(EXAMPLE)

.PHONY: install trace simulate test bench lint proto proto-check clean

install:
	$(PYTHON) -m pip install -q -e '.[dev]'

# The seed's serving run (Llama-3.1-8B on the PP=2 cluster, the bundled example trace) with every iteration's
# per-NPU .et and a manifest kept in $(TRACE_DIR). `pipesim trace` still writes single iterations.
trace:
	$(PYTHON) -m astra_driver.cli run --cluster-config $(CLUSTER) --dtype float16 --block-size 16 \
	  --dataset $(DATASET) --keep-traces $(TRACE_DIR)

# Replay what `make trace` kept and print the serving summary (BACKEND=astra-sim or docker to switch).
simulate:
	$(PYTHON) -m astra_driver.cli simulate $(TRACE_DIR) --backend $(BACKEND)

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
