# The two commands: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
NETNS ?= edge-test
# Each concurrent `make test` on one machine needs its own NETNS and TEST_ROOT.
TEST_ROOT ?= /tmp/$(NETNS)
TEST_DOCKER := unix://$(TEST_ROOT)/docker.sock
export EDGE_TEST_NETNS := $(NETNS)
export EDGE_TEST_ROOT := $(TEST_ROOT)
CONFIG ?= config/edge.toml
PYTEST_ARGS ?=

.PHONY: run test test-image test-cluster test-arm64 venv test-deps system-deps testbed-up testbed-down unit test-stock bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# `compat` keeps the repository root on sys.path, so twistd finds
# twisted/plugins/edge_plugin.py in an editable install.
venv: $(BIN)/python
	$(BIN)/pip install -q -e . --config-settings editable_mode=compat

run: venv
	$(BIN)/twistd -n edge --config $(CONFIG)

test-deps: $(BIN)/python
	$(BIN)/pip install -q -e '.[test]' --config-settings editable_mode=compat

# Debian packages the tests drive: a real dockerd, dig, dnsmasq, curl, busybox
# for the images the tests make, qemu-user-static for the arm64 image.
system-deps:
	@missing=""; \
	for tool in dockerd dig dnsmasq curl busybox nsenter ip openssl chromium debootstrap qemu-aarch64-static update-binfmts pebble named h2load; do \
		command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages for:$$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			docker.io busybox-static dnsutils dnsmasq-base curl iproute2 util-linux openssl \
			chromium debootstrap qemu-user-static binfmt-support pebble bind9 nghttp2-client; \
	fi

# EDGE_TEST_CLEAN: an engine this starts drops what an earlier run left in its swarm.
testbed-up:
	EDGE_TEST_CLEAN=1 bash tests/testbed/swarm.sh up

testbed-down:
	bash tests/testbed/swarm.sh down

# The whole suite runs inside the test engine's network namespace: overlay
# task addresses are unreachable from there and nothing can leave the machine.
test: system-deps test-deps testbed-up
	DOCKER_HOST=$(TEST_DOCKER) EDGE_TEST_NETNS=$(NETNS) \
		ip netns exec $(NETNS) $(BIN)/python -m pytest $(PYTEST_ARGS)

# Builds edge's image on the test engine (base made locally, wheels from the
# host) and deploys config/edge-stack.yml; a few minutes, so not in `test`.
test-image: system-deps test-deps testbed-up
	image=$$(DOCKER_HOST=$(TEST_DOCKER) bash tests/testbed/image.sh) && \
	DOCKER_HOST=$(TEST_DOCKER) EDGE_TEST_NETNS=$(NETNS) EDGE_IMAGE=$$image \
		ip netns exec $(NETNS) $(BIN)/python -m pytest tests/test_image.py $(PYTEST_ARGS)

# The same image for linux/arm64, built and run under qemu-user-static
# (tests/testbed/binfmt.sh registers it); ~5 min cold, 2.5-3 min with the cache warm.
test-arm64: system-deps test-deps testbed-up
	image=$$(DOCKER_HOST=$(TEST_DOCKER) EDGE_IMAGE_ARCH=arm64 bash tests/testbed/image.sh) && \
	DOCKER_HOST=$(TEST_DOCKER) EDGE_TEST_NETNS=$(NETNS) EDGE_IMAGE_ARM64=$$image \
		ip netns exec $(NETNS) $(BIN)/python -m pytest tests/test_image_arm64.py $(PYTEST_ARGS)

# A multi-node swarm (3 managers + 1 worker, each engine in its own network
# namespace: tests/testbed/cluster.sh) is started, the cluster tests run on it,
# and it is stopped again. EDGE_CLUSTER_PREFIX / EDGE_CLUSTER_SUBNET pick names.
test-cluster: system-deps test-deps
	bash tests/testbed/cluster.sh up
	bash tests/testbed/cluster.sh image
	EDGE_CLUSTER_REQUIRED=1 $(BIN)/python -m pytest -m cluster tests/test_cluster*.py $(PYTEST_ARGS); \
		status=$$?; bash tests/testbed/cluster.sh down; exit $$status

# The HTTP and TLS tests again with the speed-ups on private internals off
# (edge.http.speedups): the stock code paths must pass the same tests.
test-stock: system-deps test-deps
	EDGE_SPEEDUPS=off $(BIN)/python -m pytest -q tests/test_http_protocol.py tests/test_http_pipeline.py \
		tests/test_http_h2.py tests/test_http_h2_e2e.py tests/test_http_proxy.py tests/test_tls_proxy.py \
		tests/test_tls_transport.py tests/test_tls_handshake.py $(PYTEST_ARGS)

unit: test-deps
	$(BIN)/python -m pytest -m 'not swarm' $(PYTEST_ARGS)

bench: venv
	bash bench/run.sh

clean:
	rm -rf $(VENV) build dist *.egg-info
