# flowexporter build. `make run` and `make test` install what is missing
# (Debian packages, Deno from npm, PIC static libbpf/libelf/zlib/zstd) and build first.
# Quiet by default; V=1 shows the commands. Every build and install message goes to stderr:
# `make run`'s stdout carries flow records only, on the first run as on later ones.
# ./flowexporter.sh runs the same targets on a machine that has no make yet.

DENO_VERSION := 2.9.6
ARCH ?= $(shell dpkg --print-architecture 2>/dev/null || echo amd64)
BUILD := build
DEPS := $(BUILD)/deps/$(ARCH)
DENO := $(BUILD)/tools/node_modules/.bin/deno
# FFI grants everything anyway, and Deno opens /proc, /sys and bpffs only with --allow-all.
DENO_RUN_FLAGS := --allow-all
# The agent's environment as packaged (the systemd unit's Environment= lines), for `make run`.
AGENT_ENV := $(shell sed -n 's/^Environment=//p' packaging/flowexporter.service)
# A compiled binary reads no DENO_V8_FLAGS: deno compile bakes the unit's V8 flags into it.
AGENT_V8_FLAGS := $(patsubst DENO_V8_FLAGS=%,--v8-flags=%,$(filter DENO_V8_FLAGS=%,$(AGENT_ENV)))
APT_PACKAGES := clang llvm libbpf-dev bpftool libelf-dev zlib1g-dev gcc make pkg-config dpkg-dev \
	openssl iproute2 util-linux
TEST_APT_PACKAGES := chromium
CLUSTER_APT_PACKAGES := nats-server clickhouse-server

BPF_TARGET_ARCH_amd64 := x86
BPF_TARGET_ARCH_arm64 := arm64
CC_amd64 := gcc
CC_arm64 := aarch64-linux-gnu-gcc
SHIM_CC := $(CC_$(ARCH))

# The shared object the agent loads: shim + skeleton (BPF object embedded) + static libbpf/libelf/zlib/zstd.
LIB := $(BUILD)/$(ARCH)/libflowexporter.so
ifeq ($(ARCH),$(shell dpkg --print-architecture 2>/dev/null || echo amd64))
LIB_LINK := $(BUILD)/libflowexporter.so
endif

ifeq ($(V),1)
Q :=
msg := @true
else
Q := @
msg := @printf '  %-8s %s\n' >&2
endif

.PHONY: all build run dev test fuzz bench bench-interim tools deps cluster-deps check fmt clean
all: build

## Host set-up -------------------------------------------------------------

# Installs those of the Debian packages $(1) (and npm) that are missing.
apt_install = missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done; \
		command -v npm >/dev/null || echo npm); \
	if [ -n "$$missing" ]; then \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends $$missing >/dev/null \
			|| { echo "make: cannot install $$missing with apt-get (run as root on Debian/Ubuntu)" >&2; exit 1; }; \
	fi

$(BUILD)/.apt-stamp:
	$(msg) APT "$(APT_PACKAGES)"
	$(Q)$(call apt_install,$(APT_PACKAGES))
	$(Q)mkdir -p $(BUILD) && touch $@

# The servers of the cluster collector (collector/cluster/): its tests, its benchmark and
# `scripts/cluster.sh` run them on loopback; the embedded SQLite collector needs neither.
$(BUILD)/.cluster-apt-stamp: | $(BUILD)/.apt-stamp
	$(msg) APT "$(CLUSTER_APT_PACKAGES)"
	$(Q)$(call apt_install,$(CLUSTER_APT_PACKAGES))
	$(Q)touch $@

cluster-deps: $(BUILD)/.cluster-apt-stamp

# Only the tests need these: the browser the page test drives (tests/_chromium.ts).
$(BUILD)/.apt-test-stamp: | $(BUILD)/.apt-stamp
	$(msg) APT "$(TEST_APT_PACKAGES)"
	$(Q)$(call apt_install,$(TEST_APT_PACKAGES))
	$(Q)touch $@

$(DENO): | $(BUILD)/.apt-stamp
	$(msg) NPM deno@$(DENO_VERSION)
	$(Q)mkdir -p $(BUILD)/tools && echo '{"private":true}' > $(BUILD)/tools/package.json
	$(Q)cd $(BUILD)/tools && npm install --no-audit --no-fund --silent deno@$(DENO_VERSION) >/dev/null
	$(Q)test -x $@ || { echo "make: npm did not install the deno binary at $@" >&2; exit 1; }

node_modules/.deno-stamp: package.json deno.lock $(DENO)
	$(msg) DENO install
	$(Q)$(DENO) install --frozen --quiet 2>/dev/null || $(DENO) install --frozen >&2
	$(Q)touch $@

tools: $(BUILD)/.apt-stamp $(DENO) node_modules/.deno-stamp

$(DEPS)/.stamp: scripts/build_deps.sh | $(BUILD)/.apt-stamp
	$(msg) DEPS "libbpf libelf zlib zstd (PIC, $(ARCH))"
	$(Q)scripts/build_deps.sh --arch $(ARCH) --out $(DEPS) >&2
	$(Q)test -f $@ || touch $@

deps: $(DEPS)/.stamp

## BPF object, skeleton, shared object --------------------------------------

# CO-RE: the types come from the build host's BTF; relocations adapt them to the target kernel.
$(BUILD)/vmlinux.h: | $(BUILD)/.apt-stamp
	$(msg) BTF $@
	$(Q)test -r /sys/kernel/btf/vmlinux || { echo "make: no kernel BTF at /sys/kernel/btf/vmlinux to generate vmlinux.h" >&2; exit 1; }
	$(Q)bpftool btf dump file /sys/kernel/btf/vmlinux format c > $@.tmp && mv $@.tmp $@

BPF_BUILD = clang -g -O2 -Wall -target bpf -D__TARGET_ARCH_$(BPF_TARGET_ARCH_$(ARCH)) \
	-I$(BUILD) -Ibpf -I$(DEPS)/include -c $< -o $@ && llvm-strip -g $@
# The skeleton of $< (a BPF object) named $(1).
SKEL_BUILD = bpftool gen skeleton $< name $(1) > $@.tmp && mv $@.tmp $@

$(BUILD)/flowexporter.bpf.o: bpf/flowexporter.bpf.c bpf/flowexporter.h $(BUILD)/vmlinux.h $(DEPS)/.stamp
	$(msg) BPF $@
	$(Q)$(BPF_BUILD)

$(BUILD)/flowexporter.skel.h: $(BUILD)/flowexporter.bpf.o
	$(msg) SKEL $@
	$(Q)$(call SKEL_BUILD,flowexporter_bpf)

SHIM_BUILD = $(SHIM_CC) -O2 -g -Wall -Wextra -Werror -fPIC -shared -fvisibility=hidden \
	-I$(BUILD) -Ibpf -I$(DEPS)/include $< -o $@ \
	$(DEPS)/lib/libbpf.a $(DEPS)/lib/libelf.a $(DEPS)/lib/libz.a $(DEPS)/lib/libzstd.a \
	-Wl,--exclude-libs,ALL -Wl,-z,defs -Wl,-z,now -Wl,-z,relro

$(LIB): ffi/flowexporter.c bpf/flowexporter.h $(BUILD)/flowexporter.skel.h $(DEPS)/.stamp
	$(msg) SHIM $@
	$(Q)mkdir -p $(dir $@)
	$(Q)$(SHIM_BUILD)

# The upgrade test's stand-in for an agent of another capture state version: the same shim, but
# it pins its capture as capture-v0 (tests/restart_kernel_test.ts, the upgrade test).
OTHER_STATE_LIB := $(BUILD)/other-state/libflowexporter.so
$(OTHER_STATE_LIB): ffi/flowexporter.c bpf/flowexporter.h $(BUILD)/flowexporter.skel.h $(DEPS)/.stamp
	$(msg) SHIM $@
	$(Q)mkdir -p $(dir $@)
	$(Q)$(SHIM_BUILD) -DFE_STATE_VERSION=0

$(BUILD)/libflowexporter.so: $(LIB)
	$(Q)cp $< $@

build: tools $(LIB) $(LIB_LINK)

## Running, testing, benchmarking ------------------------------------------

run: build
	$(Q)env $(AGENT_ENV) $(DENO) run $(DENO_RUN_FLAGS) main.ts run $(ARGS)

dev: build
	$(Q)$(DENO) task dev

# The README's test command. Deno prints its own summary; CI reads it. Tests never touch the
# host's real agent state: the default spool, pin directory and lock must be as they were.
test: build $(BUILD)/churn $(BUILD)/hold_connections $(OTHER_STATE_LIB) $(BUILD)/.apt-test-stamp $(BUILD)/.cluster-apt-stamp
	$(Q)scripts/host_state.sh > $(BUILD)/host-state.before
	$(Q)$(DENO) test $(DENO_RUN_FLAGS) --parallel tests/ $(TEST_ARGS)
	$(Q)scripts/host_state.sh | diff -u $(BUILD)/host-state.before - >&2 || \
		{ echo "make test: the tests changed the host's agent state above (default spool, pin directory or lock)" >&2; exit 1; }

# A longer fuzzing run than the one in `make test` (same properties, 20 times the cases).
fuzz: tools
	$(Q)FUZZ_RUNS=$${FUZZ_RUNS:-20} $(DENO) test $(DENO_RUN_FLAGS) tests/fuzz_test.ts

$(BUILD)/churn: bench/churn.c | $(BUILD)/.apt-stamp
	$(msg) CC $@
	$(Q)gcc -O2 -Wall -Wextra -pthread $< -o $@

# The benchmark's tool `sockops`: a sock_ops program that only counts closes, and its loader
# (libbpf linked in as in the shim): the floor of following every close through sock_ops.
$(BUILD)/sockops_counter.bpf.o: bench/sockops_counter.bpf.c $(BUILD)/vmlinux.h $(DEPS)/.stamp
	$(msg) BPF $@
	$(Q)$(BPF_BUILD)

$(BUILD)/sockops_counter.skel.h: $(BUILD)/sockops_counter.bpf.o
	$(msg) SKEL $@
	$(Q)$(call SKEL_BUILD,sockops_counter_bpf)

$(BUILD)/sockops_counter: bench/sockops_counter.c $(BUILD)/sockops_counter.skel.h $(DEPS)/.stamp
	$(msg) CC $@
	$(Q)gcc -O2 -Wall -Wextra -Werror -I$(BUILD) -I$(DEPS)/include $< -o $@ \
		$(DEPS)/lib/libbpf.a $(DEPS)/lib/libelf.a $(DEPS)/lib/libz.a $(DEPS)/lib/libzstd.a

bench: build $(BUILD)/churn $(BUILD)/sockops_counter
	$(Q)$(DENO) run $(DENO_RUN_FLAGS) bench/churn_bench.ts $(ARGS)

$(BUILD)/hold_connections: bench/hold_connections.c | $(BUILD)/.apt-stamp
	$(msg) CC $@
	$(Q)gcc -O2 -Wall -Wextra $< -o $@

# The cost of one interim-record pass with 10 000 and 100 000 open connections.
bench-interim: build $(BUILD)/hold_connections
	$(Q)$(DENO) run $(DENO_RUN_FLAGS) bench/interim_bench.ts $(ARGS)

check: tools
	$(Q)$(DENO) task check

clean:
	rm -rf $(BUILD)/*.o $(BUILD)/*.so $(BUILD)/*.skel.h $(BUILD)/vmlinux.h $(BUILD)/amd64 $(BUILD)/arm64 \
		$(BUILD)/other-state $(BUILD)/churn $(BUILD)/sockops_counter $(BUILD)/hold_connections \
		dist $(BUILD)/dist-check $(BUILD)/image

include mk/dist.mk
