import assert from "node:assert/strict";
import { type ContestedStretch, OwnershipMap } from "../collector/ownership.ts";

const S = 1_000_000_000n; // one second in ns
const at = (s: number) => BigInt(s) * S;

function map(): OwnershipMap {
  return new OwnershipMap({ mergeGapNs: 10n * S, slackNs: S });
}

Deno.test("OwnershipMap merges heartbeats of one workload that overlap or come within the gap", () => {
  const m = map();
  m.add("10.0.0.1", "a", at(100), at(110));
  m.add("10.0.0.1", "a", at(105), at(120)); // overlaps
  m.add("10.0.0.1", "a", at(125), at(130)); // 5 s later: within the 10 s gap
  m.add("10.0.0.1", "a", at(200), at(210)); // 70 s later: a new range
  assert.deepEqual(
    m.ranges("10.0.0.1").map((r) => [r.startNs / S, r.endNs / S]),
    [[100n, 130n], [200n, 210n]],
  );
  assert.equal(m.size, 2);
});

Deno.test("OwnershipMap merges out-of-order heartbeats into sorted, non-overlapping ranges", () => {
  const m = map();
  m.add("k", "a", at(300), at(310));
  m.add("k", "a", at(100), at(110));
  m.add("k", "a", at(200), at(210));
  assert.deepEqual(m.ranges("k").map((r) => r.startNs / S), [100n, 200n, 300n]);
  // One heartbeat bridging all three, reversed on purpose.
  assert.equal(m.add("k", "a", at(305), at(105)), true);
  assert.deepEqual(m.ranges("k").map((r) => [r.startNs / S, r.endNs / S]), [[100n, 310n]]);
  assert.equal(m.size, 1);
  assert.equal(m.add("k", "a", at(150), at(160)), false, "a covered heartbeat changes nothing");
});

Deno.test("OwnershipMap attributes a reused address to the owner at the time, never the current one", async (t) => {
  const m = map();
  m.add("10.0.0.9", "workload-a", at(0), at(100));
  m.add("10.0.0.9", "workload-b", at(130), at(300)); // A's flows ended; B got the address

  await t.step("times in A's range answer A", () => {
    assert.deepEqual(m.lookup("10.0.0.9", at(50)), { kind: "owned", workload: "workload-a" });
    assert.deepEqual(m.lookup("10.0.0.9", at(100)), { kind: "owned", workload: "workload-a" });
  });
  await t.step("times in B's range answer B", () => {
    assert.deepEqual(m.lookup("10.0.0.9", at(131)), { kind: "owned", workload: "workload-b" });
    assert.deepEqual(m.lookup("10.0.0.9", at(300)), { kind: "owned", workload: "workload-b" });
  });
  await t.step("times in no range answer none", () => {
    assert.deepEqual(m.lookup("10.0.0.9", at(115)), { kind: "none" });
    assert.deepEqual(m.lookup("10.0.0.9", at(400)), { kind: "none" });
    assert.deepEqual(m.lookup("10.0.0.9", at(-50)), { kind: "none" });
    assert.deepEqual(m.lookup("10.0.0.10", at(50)), { kind: "none" });
  });
});

Deno.test("OwnershipMap widens ranges by the slack for clock skew and handshake timing", () => {
  const m = map();
  m.add("k", "a", at(100), at(110));
  assert.deepEqual(m.lookup("k", at(100) - S), { kind: "owned", workload: "a" });
  assert.deepEqual(m.lookup("k", at(110) + S), { kind: "owned", workload: "a" });
  assert.deepEqual(m.lookup("k", at(100) - S - 1n), { kind: "none" });
  assert.deepEqual(m.lookup("k", at(110) + S + 1n), { kind: "none" });
});

Deno.test("OwnershipMap answers ambiguous in a contested stretch and reports it", () => {
  const m = map();
  const contests: ContestedStretch[] = [];
  m.add("10.0.0.5", "a", at(0), at(100), contests);
  assert.equal(contests.length, 0);
  m.add("10.0.0.5", "b", at(90), at(200), contests);
  assert.deepEqual(contests, [{
    key: "10.0.0.5",
    startNs: at(89),
    endNs: at(101),
    workloads: ["b", "a"],
  }]);
  assert.deepEqual(m.lookup("10.0.0.5", at(95)), { kind: "ambiguous", workloads: ["a", "b"] });
  assert.deepEqual(m.lookup("10.0.0.5", at(89)), { kind: "ambiguous", workloads: ["a", "b"] });
  assert.deepEqual(m.lookup("10.0.0.5", at(50)), { kind: "owned", workload: "a" });
  assert.deepEqual(m.lookup("10.0.0.5", at(150)), { kind: "owned", workload: "b" });
});

Deno.test("OwnershipMap treats a hand-over closer than twice the slack as contested", () => {
  const m = map();
  m.add("k", "a", at(0), at(100));
  m.add("k", "b", at(101), at(200)); // 1 s apart: the slack of both reaches across
  assert.equal(m.lookup("k", at(100)).kind, "ambiguous");
  assert.equal(m.lookup("k", at(101)).kind, "ambiguous");
  assert.deepEqual(m.lookup("k", at(98)), { kind: "owned", workload: "a" });
  assert.deepEqual(m.lookup("k", at(103)), { kind: "owned", workload: "b" });
});

Deno.test("OwnershipMap.timeline() lists sorted, non-overlapping segments with contested ones", () => {
  const m = map();
  m.add("k", "a", at(0), at(100));
  m.add("k", "b", at(90), at(200));
  m.add("k", "a", at(500), at(600));
  const segments = m.timeline("k").map((s) => [s.startNs / S, s.endNs, s.workloads.join("+")]);
  assert.deepEqual(segments, [
    [0n, at(90) - 1n, "a"],
    [90n, at(100), "a+b"],
    [100n, at(200), "b"],
    [500n, at(600), "a"],
  ]);
});

Deno.test("OwnershipMap.prune() forgets old ranges and answers none before the horizon", () => {
  const m = map();
  m.add("k", "a", at(0), at(100));
  m.add("k", "b", at(50), at(1000));
  assert.equal(m.prune(at(500)), 1);
  assert.deepEqual(m.ranges("k").map((r) => r.workload), ["b"]);
  // Without the horizon this would answer "b", hiding the forgotten contest with "a".
  assert.deepEqual(m.lookup("k", at(60)), { kind: "none" });
  assert.deepEqual(m.lookup("k", at(600)), { kind: "owned", workload: "b" });
  assert.equal(m.add("k", "a", at(10), at(20)), false, "heartbeats before the horizon are ignored");
});

Deno.test("OwnershipMap.prune() keeps answering before the horizon where a range lived on over it", () => {
  const m = map();
  m.add("k", "a", at(0), at(100));
  m.add("k", "a", at(0), at(1000)); // interim records of one long connection kept it alive
  // Another key's range ended and is forgotten: before its end, that key answers nothing.
  m.add("j", "b", at(0), at(300));
  m.add("j", "c", at(700), at(900));
  assert.equal(m.prune(at(600)), 1);
  assert.deepEqual(m.lookup("j", at(200)), { kind: "none" });
  assert.deepEqual(m.lookup("j", at(650)), { kind: "none" }, "neither b nor c held it then");
  assert.deepEqual(m.lookup("j", at(800)), { kind: "owned", workload: "c" });
  assert.deepEqual(m.lookup("k", at(60)), { kind: "owned", workload: "a" });
});

Deno.test("OwnershipMap answers nothing before the horizon on a key learned after a prune", () => {
  const m = map();
  m.add("k", "a", at(0), at(100));
  m.prune(at(500)); // forgets k entirely
  // A long connection's first record reaches back over the horizon; "a" may have held k then.
  m.add("k", "b", at(50), at(900));
  assert.deepEqual(m.lookup("k", at(60)), { kind: "none" });
  assert.deepEqual(m.lookup("k", at(499)), { kind: "none" });
  assert.deepEqual(m.lookup("k", at(500)), { kind: "owned", workload: "b" });
});

Deno.test("OwnershipMap rejects negative tuning", () => {
  assert.throws(() => new OwnershipMap({ slackNs: -1n }), RangeError);
});
