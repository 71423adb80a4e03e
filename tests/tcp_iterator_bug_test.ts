import assert from "node:assert/strict";
import { tcpIteratorBugFixedIn } from "../lib/tcp_iterator_bug.ts";

Deno.test("the affected kernels are told by their release, each series up to its fix", () => {
  const cases: [string, string | undefined][] = [
    ["5.10.240", undefined], // older than the bug
    ["5.15.0-91-generic", "6.1.183"],
    ["6.1.182", "6.1.183"],
    ["6.1.183", undefined],
    ["6.2", "6.6.152"],
    ["6.6.151-x", "6.6.152"],
    ["6.6.152", undefined],
    ["6.10.14", "6.12.104"],
    ["6.12.103", "6.12.104"],
    ["6.12.104", undefined],
    ["6.18.44-fc-v1045", "6.18.45"],
    ["6.18.45", undefined],
    ["6.19.3", "7.1.9"],
    ["7.1.8", "7.1.9"],
    ["7.1.9", undefined],
    ["7.2.0", undefined],
    ["not-a-release", undefined],
  ];
  for (const [release, fixedIn] of cases) {
    assert.equal(tcpIteratorBugFixedIn(release), fixedIn, release);
  }
});
