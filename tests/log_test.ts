import assert from "node:assert/strict";
import { Log, type LogOptions } from "../lib/log.ts";

const T = new Date("2026-01-01T12:00:00.000Z");

function capture(options: Omit<LogOptions, "write"> = {}): { log: Log; lines: string[] } {
  const lines: string[] = [];
  return { log: new Log({ now: () => T, ...options, write: (l) => lines.push(l) }), lines };
}

Deno.test("The text format prefixes the agent's name and appends fields as key=value", () => {
  const { log, lines } = capture();
  log.info("capturing TCP flows", { transport: "ringbuf", seeded: 12, note: "two words" });
  log.warn("stopped");
  assert.deepEqual(lines, [
    'flowexporter: capturing TCP flows transport=ringbuf seeded=12 note="two words"',
    "flowexporter: stopped",
  ]);
});

Deno.test("The JSON format writes one object per line with ts, level, msg and fields", () => {
  const { log, lines } = capture({ format: "json" });
  log.error("Cannot deliver batch", { attempt: 2, drops: 2n ** 70n, cause: new Error("refused") });
  log.info("no fields");
  assert.equal(lines.length, 2);
  assert.deepEqual(JSON.parse(lines[0]), {
    ts: "2026-01-01T12:00:00.000Z",
    level: "error",
    msg: "Cannot deliver batch",
    fields: { attempt: 2, drops: "1180591620717411303424", cause: "refused" },
  });
  assert.deepEqual(JSON.parse(lines[1]).fields, {});
  assert.ok(!lines[0].includes("\n"));
});

Deno.test("Lines below the level are dropped before they are formatted", () => {
  const { log, lines } = capture({ level: "warn" });
  let formatted = false;
  log.debug("per batch", {
    get expensive() {
      formatted = true;
      return 1;
    },
  });
  log.info("start");
  log.warn("slow collector");
  assert.deepEqual(lines, ["flowexporter: slow collector"]);
  assert.equal(formatted, false);
  assert.equal(log.enabled("debug"), false);
  assert.equal(log.enabled("error"), true);
});

Deno.test("with() adds fields to every line of a derived logger", () => {
  const { log, lines } = capture({ format: "json" });
  const shipper = log.with({ component: "shipper" });
  shipper.info("sent", { batch: 7 });
  assert.deepEqual(JSON.parse(lines[0]).fields, { component: "shipper", batch: 7 });
});

Deno.test("The logger callback feeds the pipeline stages' (level, message) interface", () => {
  const { log, lines } = capture({ level: "info" });
  const callback = log.logger;
  callback("debug", "hidden");
  callback("warn", "Cannot deliver batch node-1:3 (attempt 1 of 5)");
  assert.deepEqual(lines, ["flowexporter: Cannot deliver batch node-1:3 (attempt 1 of 5)"]);
});

Deno.test("A throwing writer does not make logging throw", () => {
  const log = new Log({
    write: () => {
      throw new Deno.errors.BrokenPipe("stderr closed");
    },
  });
  assert.doesNotThrow(() => log.error("still fine"));
});

Deno.test("The text format keeps one event on one line, whatever the message holds", () => {
  const lines: string[] = [];
  const log = new Log({ write: (line) => lines.push(line) });
  log.warn("peer said: ok\nflowexporter: forged line\u001b[2J");
  assert.deepEqual(lines, ["flowexporter: peer said: ok\\nflowexporter: forged line\\u001b[2J"]);
});
