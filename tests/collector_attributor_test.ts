import assert from "node:assert/strict";
import { makeFlow, nsAt } from "./_batches.ts";
import { Attributor } from "../collector/attributor.ts";
import type { Direction } from "../lib/flow.ts";

const S = 1_000_000_000n;

function attributor(): Attributor {
  return new Attributor({ mergeGapNs: 10n * S, slackNs: S, holdNs: 120n * S, maxHeld: 3 });
}

Deno.test("Attributor attributes a remote end to the workload another host reported on that address", () => {
  const a = attributor();
  // node-b: "db" accepted a connection on 10.0.0.2:5432.
  a.observe("node-b", [
    makeFlow({
      local: "10.0.0.2:5432",
      remote: "10.0.0.1:40000",
      workload: "db",
      startS: 10,
      endS: 20,
      direction: "inbound",
    }),
  ]);
  const client = makeFlow({
    local: "10.0.0.1:40000",
    remote: "10.0.0.2:5432",
    workload: "api",
    startS: 10,
    endS: 20,
  });
  assert.deepEqual(a.attribute(a.endpoint("node-a", client)), {
    status: "attributed",
    workload: "db",
    ownerKey: "[10.0.0.2]:5432",
  });
});

Deno.test("Attributor ignores heartbeats without a known identity", () => {
  const a = attributor();
  a.observe("node-b", [
    makeFlow({ local: "10.0.0.2:80", remote: "10.0.0.1:1", workload: "", startS: 0, endS: 50 }),
  ]);
  const flow = makeFlow({
    local: "10.0.0.1:1",
    remote: "10.0.0.2:80",
    workload: "x",
    startS: 10,
    endS: 11,
  });
  assert.equal(a.attribute(a.endpoint("node-a", flow)).status, "pending");
});

Deno.test("Attributor keeps loopback and link-local addresses apart per host", () => {
  const a = attributor();
  a.observe("node-b", [
    makeFlow({
      local: "127.0.0.1:6379",
      remote: "127.0.0.1:50000",
      workload: "cache-b",
      startS: 0,
      endS: 100,
      direction: "inbound",
    }),
  ]);
  const onA = makeFlow({
    local: "127.0.0.1:50000",
    remote: "127.0.0.1:6379",
    workload: "app-a",
    startS: 50,
    endS: 51,
  });
  assert.equal(
    a.attribute(a.endpoint("node-a", onA)).status,
    "pending",
    "node-b's loopback is not node-a's",
  );
  assert.equal(a.attribute(a.endpoint("node-b", onA)).workload, "cache-b");
});

Deno.test("Attributor never attributes a server end on a shared address by address alone", async (t) => {
  const a = attributor();
  // 10.0.0.3 is a host address: "host:node-c" by IP, and a port-map workload "ingress" on :443.
  a.observe("node-c", [
    makeFlow({
      local: "10.0.0.3:33000",
      remote: "10.0.0.1:80",
      workload: "host:node-c",
      identitySource: "host",
      startS: 0,
      endS: 100,
    }),
    makeFlow({
      local: "10.0.0.3:443",
      remote: "10.0.0.1:41000",
      workload: "ingress",
      identitySource: "port-map",
      startS: 0,
      endS: 100,
      direction: "inbound",
    }),
  ]);
  const toPort = (port: number, startS: number) =>
    a.endpoint(
      "node-a",
      makeFlow({
        local: "10.0.0.1:41000",
        remote: `10.0.0.3:${port}`,
        workload: "web",
        startS,
        endS: startS + 1,
      }),
    );

  await t.step("the port-map workload's port answers it", () => {
    assert.equal(a.attribute(toPort(443, 50)).workload, "ingress");
  });
  await t.step("another port waits: it may belong to a port-map workload not seen yet", () => {
    assert.equal(a.attribute(toPort(8443, 50)).status, "pending");
  });
  await t.step("a client end (ephemeral port) is attributed by address", () => {
    const inbound = makeFlow({
      local: "10.0.0.1:80",
      remote: "10.0.0.3:33000",
      workload: "web",
      startS: 50,
      endS: 51,
      direction: "inbound",
    });
    assert.equal(a.attribute(a.endpoint("node-a", inbound)).workload, "host:node-c");
  });
  await t.step("a heartbeat on the port settles the held flow", () => {
    a.hold(7, toPort(8443, 50), 0n);
    assert.deepEqual(a.retry(), []);
    a.observe("node-c", [
      makeFlow({
        local: "10.0.0.3:8443",
        remote: "10.0.0.9:1",
        workload: "admin",
        identitySource: "port-map",
        startS: 40,
        endS: 60,
        direction: "inbound",
      }),
    ]);
    assert.deepEqual(a.retry(), [{
      id: 7,
      verdict: { status: "attributed", workload: "admin", ownerKey: "[10.0.0.3]:8443" },
    }]);
    assert.equal(a.heldCount, 0);
  });
});

Deno.test("Attributor revokes address-only attributions of server ends when an address turns out shared", () => {
  const a = attributor();
  a.observe("node-c", [
    makeFlow({
      local: "10.0.0.3:33000",
      remote: "10.0.0.1:80",
      workload: "host:node-c",
      identitySource: "host",
      startS: 0,
      endS: 100,
    }),
  ]);
  const before = a.endpoint(
    "node-a",
    makeFlow({
      local: "10.0.0.1:4",
      remote: "10.0.0.3:8443",
      workload: "web",
      startS: 50,
      endS: 51,
    }),
  );
  assert.equal(a.attribute(before).workload, "host:node-c");
  const { revocations } = a.observe("node-c", [
    makeFlow({
      local: "10.0.0.3:8443",
      remote: "10.0.0.9:1",
      workload: "admin",
      identitySource: "port-map",
      startS: 40,
      endS: 60,
      direction: "inbound",
    }),
  ]);
  assert.equal(revocations.length, 1);
  assert.equal(revocations[0].key, "10.0.0.3");
  assert.equal(revocations[0].byAddress, false);
  assert.equal(revocations[0].serverEndsOnly, true);
  assert.equal(revocations[0].status, "unattributed");
  assert.ok(revocations[0].fromNs <= nsAt(50) && nsAt(50) <= revocations[0].toNs);
});

Deno.test("Attributor reports a contest so that earlier attributions in it are withdrawn", () => {
  const a = attributor();
  a.observe("node-b", [
    makeFlow({ local: "10.0.0.2:1", remote: "10.0.0.1:2", workload: "old", startS: 0, endS: 100 }),
  ]);
  const flow = a.endpoint(
    "node-a",
    makeFlow({
      local: "10.0.0.1:2",
      remote: "10.0.0.2:1",
      workload: "x",
      startS: 95,
      endS: 96,
      direction: "inbound",
    }),
  );
  assert.equal(a.attribute(flow).workload, "old");
  const { revocations } = a.observe("node-d", [
    makeFlow({ local: "10.0.0.2:9", remote: "10.0.0.7:2", workload: "new", startS: 90, endS: 200 }),
  ]);
  assert.deepEqual(revocations, [{
    key: "10.0.0.2",
    byAddress: true,
    fromNs: nsAt(89),
    toNs: nsAt(101),
    serverEndsOnly: false,
    status: "ambiguous",
  }]);
  assert.equal(a.attribute(flow).status, "ambiguous");
});

Deno.test("Attributor holds unknown remote ends, settles them on a heartbeat, and gives up on time or count", async (t) => {
  const a = attributor();
  const remote = (ip: string) =>
    a.endpoint(
      "node-a",
      makeFlow({ local: "10.0.0.1:5", remote: `${ip}:80`, workload: "x", startS: 10, endS: 11 }),
    );

  await t.step("a heartbeat far from the flow's time does not settle it", () => {
    a.hold(1, remote("10.0.1.1"), 0n);
    a.observe("node-b", [
      makeFlow({ local: "10.0.1.1:9", remote: "1.1.1.1:1", workload: "b", startS: 500, endS: 600 }),
    ]);
    assert.deepEqual(a.retry(), []);
  });
  await t.step("a heartbeat covering the flow's start settles it", () => {
    a.observe("node-b", [
      makeFlow({
        local: "10.0.1.1:9",
        remote: "1.1.1.1:1",
        workload: "b-old",
        startS: 0,
        endS: 30,
      }),
    ]);
    assert.deepEqual(a.retry().map((r) => [r.id, r.verdict.workload]), [[1, "b-old"]]);
  });
  await t.step("past the hold delay a held flow resolves unattributed", () => {
    a.hold(2, remote("10.0.2.2"), 0n);
    assert.deepEqual(a.expire(119n * S), []);
    assert.deepEqual(a.expire(120n * S), [{ id: 2, verdict: { status: "unattributed" } }]);
  });
  await t.step("beyond maxHeld the oldest resolve unattributed", () => {
    for (let id = 10; id < 15; id++) a.hold(id, remote(`10.0.3.${id}`), 200n * S);
    assert.deepEqual(a.expire(200n * S).map((r) => r.id), [10, 11]);
    assert.equal(a.heldCount, 3);
  });
});

Deno.test("Attributor attributes a flow older than the pruning horizon through ranges kept alive", async (t) => {
  const a = attributor();
  // node-b's database served one connection from 0 s to 1000 s, reported by interim records.
  a.observe("node-b", [
    makeFlow({
      local: "10.0.0.2:5432",
      remote: "10.0.0.1:40000",
      workload: "db",
      startS: 0,
      endS: 1000,
      direction: "inbound",
    }),
  ]);
  a.prune(nsAt(500));
  /** The verdict on node-a's flow of "api" from 100 s between these ends. */
  const verdict = (local: string, remote: string, direction: Direction = "outbound") =>
    a.attribute(a.endpoint(
      "node-a",
      makeFlow({ local, remote, workload: "api", startS: 100, endS: 1000, direction }),
    ));
  await t.step("a server end, by its port", () => {
    assert.deepEqual(verdict("10.0.0.1:40000", "10.0.0.2:5432"), {
      status: "attributed",
      workload: "db",
      ownerKey: "[10.0.0.2]:5432",
    });
  });
  await t.step("a client end, by its address", () => {
    assert.deepEqual(verdict("10.0.0.1:8080", "10.0.0.2:41000", "inbound"), {
      status: "attributed",
      workload: "db",
      ownerKey: "10.0.0.2",
    });
  });
  await t.step("a server end on a port nobody reported: the address alone is not enough", () => {
    assert.deepEqual(verdict("10.0.0.1:40001", "10.0.0.2:6379"), { status: "unattributed" });
  });
});

Deno.test("Attributor answers unattributed for flows older than the pruning horizon", () => {
  const a = attributor();
  a.observe("node-b", [
    makeFlow({ local: "10.0.0.2:1", remote: "10.0.0.1:2", workload: "b", startS: 0, endS: 1000 }),
  ]);
  a.prune(nsAt(500));
  const old = a.endpoint(
    "node-a",
    makeFlow({ local: "10.0.0.1:2", remote: "10.0.0.2:1", workload: "x", startS: 100, endS: 101 }),
  );
  assert.deepEqual(a.attribute(old), { status: "unattributed" });
});
