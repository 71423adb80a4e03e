# Packaging (docs/packaging.md), included by the Makefile after its own rules.
#
#   make dist        one executable per architecture in dist/, the shared object embedded
#   make image       the container image (packaging/Containerfile), from what this machine has
#   make image-test  builds the image, runs the agent in it, checks it records a host connection
#
# make dist builds every architecture's shim first: this machine's, then the others with the
# cross compiler. The BPF object and skeleton are shared: scripts/dist.sh proves the object does
# not depend on __TARGET_ARCH, and `-o` keeps the cross builds from recompiling it for their
# ARCH (which would only churn timestamps and rebuild this machine's shim the next time).

DIST_DIR ?= dist
DIST_ARCHES ?= amd64 arm64
HOST_ARCH := $(shell dpkg --print-architecture 2>/dev/null || echo amd64)
SUBMAKE := $(MAKE) --no-print-directory $(if $(filter 1,$(V)),,-s)

.PHONY: dist dist-shims image image-test

dist-shims: tools
	$(Q)$(SUBMAKE) ARCH=$(HOST_ARCH) $(BUILD)/$(HOST_ARCH)/libflowexporter.so
	$(Q)for arch in $(filter-out $(HOST_ARCH),$(DIST_ARCHES)); do \
		$(SUBMAKE) ARCH=$$arch -o $(BUILD)/flowexporter.bpf.o \
			$(BUILD)/$$arch/libflowexporter.so || exit 1; \
	done

dist: dist-shims
	$(Q)scripts/dist.sh --deno $(DENO) --deno-version $(DENO_VERSION) --out $(DIST_DIR) \
		--flags "$(DENO_RUN_FLAGS) $(AGENT_V8_FLAGS)" $(DIST_ARCHES)

image: build
	$(Q)scripts/image_test.sh --build-only

image-test: build
	$(Q)scripts/image_test.sh

# The README's test command on a bare Debian (debootstrap minbase + podman); docs/fresh_machine.md.
.PHONY: fresh-test
fresh-test:
	$(Q)scripts/fresh_test.sh
