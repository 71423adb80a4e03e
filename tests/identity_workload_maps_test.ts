import assert from "node:assert/strict";
import { encodeIpKey, encodePortKey, MapLayoutError } from "../lib/map_layout.ts";
import { WorkloadMaps } from "../identity/workload_maps.ts";
import { FakeBpfMap, fakeIdentityMaps } from "./_identity_fake_map.ts";

const text = new TextDecoder();
const idOf = (value: Uint8Array | null) =>
  value && text.decode(value.subarray(0, value.indexOf(0)));

Deno.test("WorkloadMaps writes, lists and deletes IP and port entries", async (t) => {
  const fakes = fakeIdentityMaps();
  using maps = new WorkloadMaps(fakes);

  await t.step("setIp() stores the IPv4-mapped key and the NUL-padded ID", () => {
    maps.setIp("127.0.1.1", "workload-a");
    maps.setIp("::1", "workload-v6");
    assert.equal(idOf(fakes.ip.lookup(encodeIpKey("127.0.1.1"))), "workload-a");
    assert.equal(idOf(fakes.ip.lookup(encodeIpKey("::1"))), "workload-v6");
  });

  await t.step("setPort() stores (IPv4, port) keys", () => {
    maps.setPort("127.0.0.1", 8080, "workload-b");
    maps.setPort("127.0.0.1", 443, "workload-c");
    assert.equal(idOf(fakes.port.lookup(encodePortKey("127.0.0.1", 8080))), "workload-b");
  });

  await t.step("setIp() replaces the workload of an existing entry", () => {
    maps.setIp("::ffff:127.0.1.1", "workload-a2");
    assert.equal(fakes.ip.entries.size, 2);
    assert.equal(idOf(fakes.ip.lookup(encodeIpKey("127.0.1.1"))), "workload-a2");
  });

  await t.step("list() returns port entries first, each map sorted by key", () => {
    assert.deepEqual(maps.list(), [
      { kind: "port", ip: "127.0.0.1", port: 443, workload: "workload-c" },
      { kind: "port", ip: "127.0.0.1", port: 8080, workload: "workload-b" },
      { kind: "ip", ip: "::1", workload: "workload-v6" },
      { kind: "ip", ip: "127.0.1.1", workload: "workload-a2" },
    ]);
  });

  await t.step("fill() counts entries against each map's capacity", () => {
    assert.deepEqual(maps.fill(), {
      ip: { entries: 2, maxEntries: 16 },
      port: { entries: 2, maxEntries: 16 },
    });
  });

  await t.step("deleteIp() and deletePort() report whether an entry was there", () => {
    assert.equal(maps.deleteIp("127.0.1.1"), true);
    assert.equal(maps.deleteIp("127.0.1.1"), false);
    assert.equal(maps.deletePort("::ffff:127.0.0.1", 8080), true);
    assert.equal(maps.deletePort("127.0.0.1", 8080), false);
    assert.deepEqual(maps.list(), [
      { kind: "port", ip: "127.0.0.1", port: 443, workload: "workload-c" },
      { kind: "ip", ip: "::1", workload: "workload-v6" },
    ]);
  });
});

Deno.test("WorkloadMaps leaves the maps untouched on invalid input", () => {
  const fakes = fakeIdentityMaps();
  using maps = new WorkloadMaps(fakes);
  const attempts: [() => unknown, RegExp][] = [
    [() => maps.setIp("300.1.1.1", "w"), /^Invalid IP address "300\.1\.1\.1"/],
    [() => maps.setIp("127.0.0.1", "x".repeat(140)), /^Workload ID is 140 bytes/],
    [() => maps.setIp("127.0.0.1", ""), /^Invalid workload ID "": it is empty$/],
    [() => maps.setIp("0.0.0.0", "w"), /the unspecified address/],
    [() => maps.setPort("::1", 80, "w"), /holds IPv4 addresses only/],
    [() => maps.setPort("127.0.0.1", 0, "w"), /^Invalid port 0/],
    [() => maps.setPort("127.0.0.1", 80, "bad\nid"), /control character U\+000A/],
    [() => maps.deleteIp("nope"), /^Invalid IP address "nope"/],
    [() => maps.deletePort("127.0.0.1", 70000), /^Invalid port 70000/],
  ];
  for (const [attempt, message] of attempts) {
    assert.throws(attempt, (e: unknown) => e instanceof MapLayoutError && message.test(e.message));
  }
  assert.equal(fakes.ip.writes + fakes.port.writes, 0);
});

Deno.test("WorkloadMaps refuses maps whose layout is not FE_MAPS_VERSION 1", () => {
  const wrongValue = { ip: new FakeBpfMap(16, 64, 16), port: new FakeBpfMap(8, 128, 16) };
  assert.throws(() => new WorkloadMaps(wrongValue), {
    name: "MapLayoutError",
    message: "Cannot use map ip_workload: key 16 bytes and value 64 bytes, but FE_MAPS_VERSION 1 " +
      "has key 16 and value 128 (the map was made by another flowexporter build; " +
      "run the matching agent or remove its pin)",
  });
  const wrongKey = { ip: new FakeBpfMap(16, 128, 16), port: new FakeBpfMap(16, 128, 16) };
  assert.throws(() => new WorkloadMaps(wrongKey), {
    message: /^Cannot use map port_workload: key 16 bytes and value 128 bytes, .* has key 8 /,
  });
});

Deno.test("WorkloadMaps says how big a map is when a new entry does not fit", () => {
  const fakes = fakeIdentityMaps(1, 1);
  using maps = new WorkloadMaps(fakes);
  maps.setIp("10.0.0.1", "first");
  assert.throws(() => maps.setIp("10.0.0.2", "second"), {
    message: "Cannot set ip_workload entry for 10.0.0.2: Cannot update map: argument list too " +
      "long (E2BIG); ip_workload holds at most 1 entries (delete stale ones if it is full)",
  });
  maps.setIp("10.0.0.1", "replaced"); // replacing needs no room
  maps.setPort("10.0.0.1", 80, "first");
  assert.throws(
    () => maps.setPort("10.0.0.1", 81, "second"),
    { message: /^Cannot set port_workload entry for 10\.0\.0\.1 port 81: .*at most 1 entries/ },
  );
});

Deno.test("list() shows entries the BPF side cannot use, with the reason", () => {
  const fakes = fakeIdentityMaps();
  using maps = new WorkloadMaps(fakes);
  const padded = encodePortKey("10.0.0.1", 80);
  padded[7] = 1;
  const value = new Uint8Array(128);
  value.set(new TextEncoder().encode("w"));
  fakes.port.update(padded, value);
  fakes.ip.update(encodeIpKey("10.0.0.2"), new Uint8Array(128).fill(0x41));
  assert.deepEqual(maps.list(), [
    {
      kind: "port",
      ip: "10.0.0.1",
      port: 80,
      workload: "w",
      problem:
        "Cannot decode port key: its padding bytes are not zero, so the BPF lookup never matches it",
    },
    {
      kind: "ip",
      ip: "10.0.0.2",
      workload: "A".repeat(128),
      problem: "Cannot decode workload value: no NUL terminator in 128 bytes",
    },
  ]);
});

Deno.test("close() closes both maps once, also through using", () => {
  const fakes = fakeIdentityMaps();
  {
    using maps = new WorkloadMaps(fakes);
    maps.close();
    maps.close();
  }
  assert.equal(fakes.ip.closed, 1);
  assert.equal(fakes.port.closed, 1);
});

Deno.test("fill() uses the map's own count() when it has one", () => {
  const fakes = fakeIdentityMaps();
  const counting = Object.assign(fakes.port, { count: () => 12345 });
  using maps = new WorkloadMaps({ ip: fakes.ip, port: counting });
  maps.setIp("10.0.0.1", "w");
  assert.deepEqual(maps.fill(), {
    ip: { entries: 1, maxEntries: 16 },
    port: { entries: 12345, maxEntries: 16 },
  });
});
