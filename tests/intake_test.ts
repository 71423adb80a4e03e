/**
 * The record intake and its journal, without a kernel: a fake ring, a fake shipper, and a real
 * journal in a temporary directory.
 */
import assert from "node:assert/strict";
import {
  CaptureJournal,
  readChunks,
  type RecordsChunk,
  type RingSpan,
} from "../lib/capture_journal.ts";
import { concatBytes } from "../lib/bytes.ts";
import { RECORD_OFFSETS, RECORD_SIZE } from "../lib/decode.ts";
import type { FlowRecord } from "../lib/flow.ts";
import { type EncodedFlows, encodeRecords, FlowBuffer, splitFlows } from "../lib/encoded_flows.ts";
import { Intake, type RetiringRing, type RingSource } from "../lib/intake.ts";
import { decodeBatch, encodeBatch, SCHEMA_VERSION, WireFormatError } from "../lib/wire.ts";
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

/** Encoded flows read back, through a batch that holds them. */
function decoded(flows: Uint8Array): FlowRecord[] {
  const body = encodeBatch({
    schemaVersion: SCHEMA_VERSION,
    exporterVersion: "test",
    host: { hostname: "h", workloadId: "" },
    sequence: 1,
    windowStartNs: 0n,
    windowEndNs: 0n,
    recordCount: splitFlows(flows)!.ends.length,
    clockOffsetNs: 0n,
    loss: { kernelDrops: 0n, recursionMisses: 0n, spoolEvictions: 0 },
  }, [flows]);
  return decodeBatch(body).flows;
}

/**
 * A shipper whose windows close every `perWindow` flows, on the flow that fills them; it counts
 * the flows it is told are invalid.
 */
class FakeShipper {
  readonly windows: bigint[][] = [[]];
  invalid = 0;
  constructor(readonly perWindow: number, readonly events: string[]) {}
  get openWindow(): number {
    return this.windows.length - 1;
  }
  addEncoded({ bytes, ends }: EncodedFlows): void {
    ends.forEach((end, i) => {
      const [{ cookie }] = decoded(bytes.subarray(i === 0 ? 0 : ends[i - 1], end));
      this.windows.at(-1)!.push(cookie);
      this.events.push(`add ${cookie}`);
      if (this.windows.at(-1)!.length === this.perWindow) this.windows.push([]);
    });
  }
  dropInvalid(error: unknown): boolean {
    if (!(error instanceof WireFormatError)) return false;
    this.invalid++;
    return true;
  }
}

/** Where a test's chunk was read: ring 7 of this boot, unless `fields` say otherwise. */
function span(fields: Partial<RingSpan> = {}): RingSpan {
  return { bootId: BOOT, ringId: 7, position: 264n, ...fields };
}

/** Raw records encoded as the intake encodes them. */
function flowsOf(records: Uint8Array): EncodedFlows {
  return encodeRecords(
    new FlowBuffer(),
    { records, clockOffsetNs: 0n, bootId: BOOT },
    () => false,
  );
}

/**
 * A journal file as agents before the encoded journal wrote it (magic `FEJ1`): raw records, each
 * chunk with its record size (this version's unless given) and clock offset (0 unless given), read
 * from ring 7 of this boot.
 */
function writeRecordsJournal(
  path: string,
  chunks: (Pick<RecordsChunk, "position" | "records"> & Partial<RecordsChunk>)[],
): void {
  const parts: Uint8Array[] = [];
  for (const c of chunks) {
    const header = new Uint8Array(48);
    const view = new DataView(header.buffer);
    header.set(new TextEncoder().encode("FEJ1"), 0);
    view.setUint32(4, c.records.length, true);
    header.set(BOOT, 8);
    view.setUint32(24, 7, true);
    view.setUint32(28, c.recordSize ?? RECORD_SIZE, true);
    view.setBigUint64(32, c.position, true);
    view.setBigInt64(40, c.clockOffsetNs ?? 0n, true);
    parts.push(header, c.records);
  }
  Deno.writeFileSync(path, concatBytes(parts));
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
    append(window: number, span: RingSpan, flows: EncodedFlows) {
      events.push(`journal ${flows.ends.length} in window ${window}`);
      journal.append(window, span, flows);
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
    const records = rawRecords(3, 1n);
    // The second record ends before it starts: the wire refuses it, and the shipper counts it.
    const second = new DataView(records.buffer, RECORD_SIZE);
    const start = second.getBigUint64(RECORD_OFFSETS.t_start_ns, true);
    second.setBigUint64(RECORD_OFFSETS.t_end_ns, start - 1n, true);
    const received = intake.receive(records, 792n);
    assert.equal(received.records.length, 3 * RECORD_SIZE, "stdout and metrics get all three");
    assert.equal(received.bootId, BOOT, "records carry this boot's ID");
    assert.equal(received.clockOffsetNs, 10n);
    assert.equal(shipper.invalid, 1);
    assert.deepEqual(events, ["add 1", "add 3", "journal 2 in window 0", "commit 792"]);
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
    const earlier = journal.left.map((c) => c.kind === "flows" && c.flows.slice());
    const result = intake.replay();
    assert.deepEqual(result, { records: 3, resumedRing: true, unreadable: 0 });
    assert.deepEqual(shipper.windows[0], [1n, 2n, 3n]);
    assert.equal(ring.committed, 792n, "the journaled but uncommitted chunk is not read again");
    // The old files are gone; this run's journal holds the replayed chunks until spooled.
    const files = [...Deno.readDirSync(dir)].map((e) => e.name);
    assert.equal(files.length, 1);
    const { chunks } = readChunks(Deno.readFileSync(`${dir}/${files[0]}`));
    assert.deepEqual(
      chunks.map((c) => c.kind === "flows" && c.flows),
      earlier,
      "the flows as the earlier run encoded them (its clock offset, not this run's)",
    );
  }),
);

Deno.test(
  "replay() leaves the ring alone for a chunk of another boot or another ring",
  withJournal((dir) => {
    {
      using journal = CaptureJournal.open(dir);
      for (const [bootId, ringId] of [[OTHER_BOOT, 7], [BOOT, 8]] as const) {
        journal.append(0, span({ bootId, ringId, position: 5000n }), flowsOf(rawRecords(1)));
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
  "replay() ships the raw records an earlier version journaled (FEJ1), and journals them anew",
  withJournal((dir) => {
    writeRecordsJournal(`${dir}/000000001abcdefg-0.journal`, [
      { position: 528n, clockOffsetNs: 5n, records: rawRecords(2, 1n) },
      { position: 792n, clockOffsetNs: 5n, records: rawRecords(1, 3n) },
    ]);
    using journal = CaptureJournal.open(dir);
    const ring = new FakeRing(7, []);
    const shipper = new FakeShipper(100, []);
    const intake = intakeOf(ring, journal, shipper, 99n);
    assert.deepEqual(intake.replay(), { records: 3, resumedRing: true, unreadable: 0 });
    assert.deepEqual(shipper.windows[0], [1n, 2n, 3n]);
    assert.equal(ring.committed, 792n);
    const [file] = [...Deno.readDirSync(dir)].map((e) => e.name);
    const { chunks } = readChunks(Deno.readFileSync(`${dir}/${file}`));
    assert.deepEqual(
      chunks.map((c) => c.kind),
      ["flows", "flows"],
      "journaled in this version's form",
    );
    // Encoded with the clock offset they were read with (5 ns), not this run's (99 ns).
    const replayed = chunks[0].kind === "flows" ? decoded(chunks[0].flows) : [];
    const atOffsetZero = decoded(flowsOf(rawRecords(2, 1n)).bytes);
    assert.deepEqual(
      replayed.map((f) => f.tStartNs),
      atOffsetZero.map((f) => f.tStartNs + 5n),
    );
  }),
);

Deno.test(
  "replay() counts, and skips, records of another layout, flows of another schema, and damaged flows",
  withJournal((dir) => {
    // Version 1 of the record: 248 bytes.
    writeRecordsJournal(`${dir}/000000001abcdefg-0.journal`, [
      { position: 0n, recordSize: 248, records: new Uint8Array(2 * 248) },
    ]);
    {
      using journal = CaptureJournal.open(dir);
      journal.append(0, span(), flowsOf(rawRecords(3)));
      journal.append(0, span(), flowsOf(rawRecords(4)));
    }
    const [, file] = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    const bytes = Deno.readFileSync(`${dir}/${file}`);
    const view = new DataView(bytes.buffer);
    view.setUint32(40, SCHEMA_VERSION + 1, true); // the first chunk: a later wire schema
    const second = 44 + view.getUint32(4, true);
    bytes[second + 44] = 0xff; // the second chunk: its first flow is no CBOR map
    Deno.writeFileSync(`${dir}/${file}`, bytes);
    using journal = CaptureJournal.open(dir);
    const shipper = new FakeShipper(100, []);
    const intake = intakeOf(new FakeRing(7, []), journal, shipper);
    assert.deepEqual(intake.replay(), { records: 0, resumedRing: false, unreadable: 2 + 3 + 4 });
    assert.deepEqual(shipper.windows, [[]]);
  }),
);

Deno.test(
  "a torn last chunk ends the replay of its file; the chunks before it survive",
  withJournal((dir) => {
    {
      using journal = CaptureJournal.open(dir);
      for (const position of [264n, 528n]) {
        journal.append(3, span({ position }), flowsOf(rawRecords(1)));
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
    for (const window of [0, 1, 2]) journal.append(window, span(), flowsOf(rawRecords(1)));
    journal.sealed(1);
    const left = [...Deno.readDirSync(dir)].map((e) => e.name);
    assert.equal(left.length, 1);
    assert.match(left[0], /-2\.journal$/);
    journal.append(2, span(), flowsOf(rawRecords(1))); // the open window's file is still usable
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
    const taken: RecordsChunk[] = [];
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
