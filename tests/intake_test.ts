/**
 * The record intake and its journal, without a kernel: a fake ring, a fake shipper, and a real
 * journal in a temporary directory.
 */
import assert from "node:assert/strict";
import { CaptureJournal, type JournalChunk, readChunks } from "../lib/capture_journal.ts";
import { RECORD_SIZE } from "../lib/decode.ts";
import { Intake, type RetiringRing, type RingSource } from "../lib/intake.ts";
import { decodeBatch, encodeBatch, type FlowWriter, SCHEMA_VERSION } from "../lib/wire.ts";
import { rawRecords } from "./_raw_records.ts";

const BOOT = Uint8Array.from({ length: 16 }, (_, i) => i + 1);
const OTHER_BOOT = Uint8Array.from({ length: 16 }, (_, i) => 100 + i);

/** A ring buffer that remembers what was committed, and the order of events. */
class FakeRing implements RingSource {
  readonly recordSize = RECORD_SIZE;
  committed = 0n;
  produced = 1_000_000n;
  constructor(readonly ringId: number, readonly events: string[]) {}
  commit(position: bigint): boolean {
    if (position < this.committed || position > this.produced) return false;
    this.events.push(`commit ${position}`);
    this.committed = position;
    return true;
  }
  consumed(): bigint {
    return this.committed;
  }
}

/** The cookie of the flow a writer writes, read back from its encoding. */
function cookieOf(flow: FlowWriter): bigint {
  const target = new Uint8Array(flow.room);
  const end = flow.write(target, 0);
  const body = encodeBatch({
    schemaVersion: SCHEMA_VERSION,
    exporterVersion: "test",
    host: { hostname: "h", workloadId: "" },
    sequence: 1,
    windowStartNs: 0n,
    windowEndNs: 0n,
    recordCount: 1,
    clockOffsetNs: 0n,
    loss: { kernelDrops: 0n, recursionMisses: 0n, spoolEvictions: 0 },
  }, [target.subarray(0, end)]);
  return decodeBatch(body).flows[0].cookie;
}

/** A shipper whose windows close every `perWindow` flows, on the flow that fills them. */
class FakeShipper {
  readonly windows: bigint[][] = [[]];
  constructor(readonly perWindow: number, readonly events: string[]) {}
  get openWindow(): number {
    return this.windows.length - 1;
  }
  addFlow(flow: FlowWriter): void {
    const cookie = cookieOf(flow);
    this.windows.at(-1)!.push(cookie);
    this.events.push(`add ${cookie}`);
    if (this.windows.at(-1)!.length === this.perWindow) this.windows.push([]);
  }
}

/** A journal chunk of one record from ring 7 of this boot; `fields` change what a test needs. */
function chunk(fields: Partial<JournalChunk> = {}): JournalChunk {
  return {
    bootId: BOOT,
    ringId: 7,
    position: 264n,
    clockOffsetNs: 0n,
    recordSize: RECORD_SIZE,
    records: rawRecords(1),
    ...fields,
  };
}

/** An intake of this boot whose clock offset is `clockOffsetNs`. */
function intakeOf(
  ring: RingSource,
  journal: Pick<CaptureJournal, "append" | "left" | "dropLeft">,
  shipper: FakeShipper,
  clockOffsetNs = 0n,
): Intake {
  return new Intake({ bootId: BOOT, clockOffsetNs: () => clockOffsetNs, ring, journal, shipper });
}

function withJournal(fn: (dir: string) => void | Promise<void>): () => Promise<void> {
  return async () => {
    const dir = await Deno.makeTempDir({ prefix: "flowexporter-journal-" });
    try {
      await fn(dir);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  };
}

/** A journal whose appends are logged too, so the order of events can be checked. */
function loggingJournal(journal: CaptureJournal, events: string[]) {
  return {
    get left() {
      return journal.left;
    },
    dropLeft: () => journal.dropLeft(),
    append(window: number, chunk: JournalChunk) {
      events.push(`journal ${chunk.records.length / RECORD_SIZE} in window ${window}`);
      journal.append(window, chunk);
    },
  };
}

Deno.test(
  "receive() ships, then journals, then commits: a record leaves the ring only when journaled",
  withJournal((dir) => {
    const events: string[] = [];
    using journal = CaptureJournal.open(dir);
    const ring = new FakeRing(7, events);
    const shipper = new FakeShipper(100, events);
    const intake = intakeOf(ring, loggingJournal(journal, events), shipper, 10n);
    const received = intake.receive(rawRecords(2, 1n), 528n);
    assert.equal(received.records.length, 2 * RECORD_SIZE);
    assert.equal(received.bootId, BOOT, "records carry this boot's ID");
    assert.equal(received.clockOffsetNs, 10n);
    assert.deepEqual(events, ["add 1", "add 2", "journal 2 in window 0", "commit 528"]);
  }),
);

Deno.test(
  "receiveInterim() ships an interim pass's records, and neither journals nor commits them",
  withJournal((dir) => {
    const events: string[] = [];
    using journal = CaptureJournal.open(dir);
    const shipper = new FakeShipper(100, events);
    const intake = intakeOf(new FakeRing(7, events), loggingJournal(journal, events), shipper, 5n);
    const chunk = intake.receiveInterim(rawRecords(2, 30n));
    assert.deepEqual(events, ["add 30", "add 31"]);
    assert.equal(chunk.bootId, BOOT);
    assert.equal(chunk.clockOffsetNs, 5n);
    assert.deepEqual(shipper.windows, [[30n, 31n]]);
  }),
);

Deno.test(
  "the perf buffer's records are journaled but there is nothing to commit",
  withJournal((dir) => {
    const events: string[] = [];
    using journal = CaptureJournal.open(dir);
    const intake = intakeOf(
      new FakeRing(0, events),
      loggingJournal(journal, events),
      new FakeShipper(100, events),
    );
    intake.receive(rawRecords(1), 0n);
    assert.deepEqual(events, ["add 1", "journal 1 in window 0"]);
  }),
);

Deno.test(
  "a chunk that closes a window mid-way is journaled under the later window",
  withJournal((dir) => {
    const events: string[] = [];
    {
      using journal = CaptureJournal.open(dir);
      const shipper = new FakeShipper(3, events);
      const intake = intakeOf(new FakeRing(7, events), journal, shipper);
      intake.receive(rawRecords(2, 1n), 100n); // window 0: 1, 2
      intake.receive(rawRecords(2, 3n), 200n); // 3 closes window 0; 4 is in window 1
      journal.sealed(0);
    }
    // Window 1 is not spooled: its journal replays both flows of the chunk (3 again, and 4).
    using again = CaptureJournal.open(dir);
    assert.deepEqual(again.left.map((c) => c.position), [200n]);
  }),
);

Deno.test(
  "replay() ships what an earlier run journaled, journals it again, and moves the ring past it",
  withJournal((dir) => {
    {
      // The earlier run: two chunks journaled, the first committed, then a crash.
      const events: string[] = [];
      using journal = CaptureJournal.open(dir);
      const ring = new FakeRing(7, events);
      const intake = intakeOf(ring, journal, new FakeShipper(100, events), 5n);
      intake.receive(rawRecords(2, 1n), 528n);
      intake.receive(rawRecords(1, 3n), 792n);
    }
    const events: string[] = [];
    using journal = CaptureJournal.open(dir);
    assert.equal(journal.left.length, 2);
    const ring = new FakeRing(7, events);
    ring.committed = 528n; // the crash came before the second commit
    const shipper = new FakeShipper(100, events);
    const intake = intakeOf(ring, journal, shipper, 99n);
    const result = intake.replay();
    assert.deepEqual(result, { records: 3, resumedRing: true, unreadable: 0 });
    assert.deepEqual(shipper.windows[0], [1n, 2n, 3n]);
    assert.equal(ring.committed, 792n, "the journaled but uncommitted chunk is not read again");
    // The old files are gone; this run's journal holds the replayed chunks until spooled.
    const files = [...Deno.readDirSync(dir)].map((e) => e.name);
    assert.equal(files.length, 1);
    const { chunks } = readChunks(Deno.readFileSync(`${dir}/${files[0]}`));
    assert.deepEqual(chunks.map((c) => c.clockOffsetNs), [5n, 5n], "each keeps its clock offset");
  }),
);

Deno.test(
  "replay() leaves the ring alone for a chunk of another boot or another ring",
  withJournal((dir) => {
    {
      using journal = CaptureJournal.open(dir);
      for (const [bootId, ringId] of [[OTHER_BOOT, 7], [BOOT, 8]] as const) {
        journal.append(0, chunk({ bootId, ringId, position: 5000n }));
      }
    }
    using journal = CaptureJournal.open(dir);
    const ring = new FakeRing(7, []);
    const shipper = new FakeShipper(100, []);
    const intake = intakeOf(ring, journal, shipper);
    assert.deepEqual(intake.replay(), { records: 2, resumedRing: false, unreadable: 0 });
    assert.equal(ring.committed, 0n);
  }),
);

Deno.test(
  "replay() counts, and skips, records of another record layout",
  withJournal((dir) => {
    {
      using journal = CaptureJournal.open(dir);
      // Version 1 of the record: 248 bytes.
      journal.append(0, chunk({ recordSize: 248, records: new Uint8Array(2 * 248) }));
    }
    using journal = CaptureJournal.open(dir);
    const shipper = new FakeShipper(100, []);
    const intake = intakeOf(new FakeRing(7, []), journal, shipper);
    assert.deepEqual(intake.replay(), { records: 0, resumedRing: false, unreadable: 2 });
    assert.deepEqual(shipper.windows, [[]]);
  }),
);

Deno.test(
  "a torn last chunk ends the replay of its file; the chunks before it survive",
  withJournal((dir) => {
    {
      using journal = CaptureJournal.open(dir);
      for (const position of [264n, 528n]) {
        journal.append(3, chunk({ position }));
      }
    }
    const [name] = [...Deno.readDirSync(dir)].map((e) => e.name);
    const bytes = Deno.readFileSync(`${dir}/${name}`);
    Deno.writeFileSync(`${dir}/${name}`, bytes.subarray(0, bytes.length - 100));
    using journal = CaptureJournal.open(dir);
    assert.equal(journal.torn, 1);
    assert.deepEqual(journal.left.map((c) => c.position), [264n]);
  }),
);

Deno.test(
  "sealed() removes the journal of a window and of every earlier one, not of later ones",
  withJournal((dir) => {
    using journal = CaptureJournal.open(dir);
    for (const window of [0, 1, 2]) journal.append(window, chunk());
    journal.sealed(1);
    const left = [...Deno.readDirSync(dir)].map((e) => e.name);
    assert.equal(left.length, 1);
    assert.match(left[0], /-2\.journal$/);
    journal.append(2, chunk()); // the open window's file is still usable
    journal.sealed(2);
    assert.deepEqual([...Deno.readDirSync(dir)], []);
  }),
);

/** A retired capture's ring: hands out `chunks` (records, position after them) in turn. */
class FakeRetiringRing extends FakeRing implements RetiringRing {
  #next = 0;
  constructor(ringId: number, events: string[], readonly chunks: [Uint8Array, bigint][]) {
    super(ringId, events);
  }
  read(): { bytes: Uint8Array; position: bigint } {
    // Past what is committed: a chunk the journal already holds is not read again.
    while (this.#next < this.chunks.length && this.chunks[this.#next][1] <= this.committed) {
      this.#next++;
    }
    const [bytes, position] = this.chunks[this.#next++] ?? [new Uint8Array(0), this.committed];
    return { bytes, position };
  }
}

Deno.test(
  "retire() ships a retired ring's records, journals them under its ring ID, and commits them",
  withJournal((dir) => {
    const events: string[] = [];
    using journal = CaptureJournal.open(dir);
    const shipper = new FakeShipper(100, events);
    const intake = intakeOf(new FakeRing(7, []), loggingJournal(journal, events), shipper, 4n);
    const old = new FakeRetiringRing(9, events, [
      [rawRecords(2, 50n), 528n],
      [rawRecords(1, 52n), 792n],
    ]);
    const taken: JournalChunk[] = [];
    assert.equal(intake.retire(old, 0n, (c) => taken.push(c)), 3);
    assert.deepEqual(events, [
      "add 50",
      "add 51",
      "journal 2 in window 0",
      "commit 528",
      "add 52",
      "journal 1 in window 0",
      "commit 792",
    ]);
    assert.deepEqual(taken.map((c) => [c.ringId, c.position, c.clockOffsetNs]), [
      [9, 528n, 4n],
      [9, 792n, 4n],
    ]);
  }),
);

Deno.test(
  "after retire(), the own ring's records of the retired ring's sockets are dropped until the overlap ends",
  withJournal((dir) => {
    using journal = CaptureJournal.open(dir);
    const shipper = new FakeShipper(100, []);
    const intake = intakeOf(new FakeRing(7, []), journal, shipper);
    // The retired programs wrote sockets 50 to 52; they stopped when the own ring was at 1000.
    intake.retire(new FakeRetiringRing(9, [], [[rawRecords(3, 50n), 792n]]), 1000n, () => {});
    // Both versions saw 50 to 52 close: the own ring's copies go.
    const first = intake.receive(rawRecords(4, 49n), 800n); // 49, 50, 51, 52
    assert.deepEqual(shipper.windows[0], [50n, 51n, 52n, 49n], "retired ring first, then 49");
    assert.equal(first.records.length, RECORD_SIZE, "stdout and metrics get the one kept");
    // Past the overlap, nothing is dropped any more (a socket closes once).
    intake.receive(rawRecords(1, 60n), 1100n);
    intake.receive(rawRecords(1, 50n), 1200n);
    assert.deepEqual(shipper.windows[0], [50n, 51n, 52n, 49n, 60n, 50n]);
  }),
);

Deno.test(
  "retire() after a crash reads the retired ring from where the journal ends",
  withJournal((dir) => {
    {
      // The earlier run journaled the retired ring's first chunk, then died before its commit.
      using journal = CaptureJournal.open(dir);
      const intake = intakeOf(new FakeRing(7, []), journal, new FakeShipper(100, []));
      intake.retire(
        new FakeRetiringRing(9, [], [[rawRecords(2, 50n), 528n]]),
        0n,
        () => {},
      );
    }
    using journal = CaptureJournal.open(dir);
    const shipper = new FakeShipper(100, []);
    const intake = intakeOf(new FakeRing(7, []), journal, shipper);
    intake.replay();
    const old = new FakeRetiringRing(9, [], [
      [rawRecords(2, 50n), 528n],
      [rawRecords(1, 52n), 792n],
    ]);
    assert.equal(intake.retire(old, 0n, () => {}), 1);
    assert.deepEqual(shipper.windows[0], [50n, 51n, 52n], "each record once");
    assert.equal(old.committed, 792n);
  }),
);
