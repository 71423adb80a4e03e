import assert from "node:assert/strict";
import {
  decodeIpKey,
  decodePortKey,
  decodeWorkload,
  encodeIpKey,
  encodePortKey,
  encodeWorkload,
  FE_WORKLOAD_ID_LEN,
  formatIp,
  IP_WORKLOAD_MAP,
  IP_WORKLOAD_MAX_ENTRIES,
  MapLayoutError,
  parseIp,
  parsePort,
  PORT_WORKLOAD_MAP,
  PORT_WORKLOAD_MAX_ENTRIES,
  validateWorkloadId,
} from "../lib/map_layout.ts";
import { bpfMaxEntries } from "./_c_source.ts";

const bytes = (...values: number[]) => new Uint8Array(values);
const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join(" ");

function throwsLayout(fn: () => unknown, message: string | RegExp) {
  assert.throws(fn, (error: unknown) => {
    assert.ok(error instanceof MapLayoutError, `expected MapLayoutError, got ${error}`);
    assert.equal(error.name, "MapLayoutError");
    if (typeof message === "string") assert.equal(error.message, message);
    else assert.match(error.message, message);
    return true;
  });
}

Deno.test("parseIp() reads IPv4 dotted quads as 4 network-order bytes", () => {
  assert.deepEqual(parseIp("127.0.1.1"), bytes(127, 0, 1, 1));
  assert.deepEqual(parseIp("0.0.0.0"), bytes(0, 0, 0, 0));
  assert.deepEqual(parseIp("255.255.255.255"), bytes(255, 255, 255, 255));
});

Deno.test("parseIp() reads IPv6 text, compressed, full and with an IPv4 tail", () => {
  const loopback = new Uint8Array(16);
  loopback[15] = 1;
  assert.deepEqual(parseIp("::1"), loopback);
  assert.deepEqual(parseIp("0:0:0:0:0:0:0:1"), loopback);
  assert.deepEqual(parseIp("::"), new Uint8Array(16));
  assert.equal(
    hex(parseIp("2001:DB8::8:800:200C:417A")),
    "20 01 0d b8 00 00 00 00 00 08 08 00 20 0c 41 7a",
  );
  assert.equal(hex(parseIp("fe80::")), "fe 80 00 00 00 00 00 00 00 00 00 00 00 00 00 00");
  assert.equal(
    hex(parseIp("::ffff:127.0.1.1")),
    "00 00 00 00 00 00 00 00 00 00 ff ff 7f 00 01 01",
  );
  assert.equal(
    hex(parseIp("0:0:0:0:0:ffff:10.1.2.3")),
    "00 00 00 00 00 00 00 00 00 00 ff ff 0a 01 02 03",
  );
  assert.equal(hex(parseIp("64:ff9b::192.0.2.33")).slice(-11), "c0 00 02 21");
});

Deno.test("parseIp() refuses invalid text with a reason", () => {
  const cases: [string, string][] = [
    ["300.1.1.1", `Invalid IP address "300.1.1.1": 300 is above 255`],
    ["1.2.3", `Invalid IP address "1.2.3": expected four decimal parts a.b.c.d or IPv6 text`],
    [
      "1.2.3.4.5",
      `Invalid IP address "1.2.3.4.5": expected four decimal parts a.b.c.d or IPv6 text`,
    ],
    ["", `Invalid IP address "": expected four decimal parts a.b.c.d or IPv6 text`],
    [
      "localhost",
      `Invalid IP address "localhost": expected four decimal parts a.b.c.d or IPv6 text`,
    ],
    ["1.2.3.x", `Invalid IP address "1.2.3.x": "x" is not a decimal number`],
    ["1.2.3.-1", `Invalid IP address "1.2.3.-1": "-1" is not a decimal number`],
    [" 1.2.3.4", `Invalid IP address " 1.2.3.4": " 1" is not a decimal number`],
    [
      "010.0.0.1",
      `Invalid IP address "010.0.0.1": 010 has a leading zero (ambiguous: some parsers read it as octal)`,
    ],
    ["1::2::3", `Invalid IP address "1::2::3": "::" appears more than once`],
    ["fe80::1%eth0", `Invalid IP address "fe80::1%eth0": zone IDs (%…) are not supported`],
    ["[::1]", `Invalid IP address "[::1]": remove the brackets`],
    [
      "1:2:3:4:5:6:7",
      `Invalid IP address "1:2:3:4:5:6:7": it has 7 16-bit groups (expected 8, or fewer with "::")`,
    ],
    [
      "1:2:3:4:5:6:7:8:9",
      `Invalid IP address "1:2:3:4:5:6:7:8:9": it has 9 16-bit groups (expected 8, or fewer with "::")`,
    ],
    [
      "1:2:3:4::5:6:7:8",
      `Invalid IP address "1:2:3:4::5:6:7:8": it has 8 16-bit groups (expected 8, or fewer with "::")`,
    ],
    ["12345::", `Invalid IP address "12345::": "12345" is not a 16-bit hex group`],
    ["g::", `Invalid IP address "g::": "g" is not a 16-bit hex group`],
    [":1:2:3:4:5:6:7", `Invalid IP address ":1:2:3:4:5:6:7": "" is not a 16-bit hex group`],
    ["1::2:", `Invalid IP address "1::2:": "" is not a 16-bit hex group`],
    [
      "::ffff:1.2.3.256",
      `Invalid IP address "::ffff:1.2.3.256": embedded IPv4 "1.2.3.256": 256 is above 255`,
    ],
    ["1.2.3.4::", `Invalid IP address "1.2.3.4::": "1.2.3.4" is not a 16-bit hex group`],
  ];
  for (const [text, message] of cases) throwsLayout(() => parseIp(text), message);
});

Deno.test("formatIp() prints IPv4 and RFC 5952 IPv6", () => {
  assert.equal(formatIp(bytes(127, 0, 1, 1)), "127.0.1.1");
  const cases = [
    "::",
    "::1",
    "2001:db8::8:800:200c:417a",
    "2001:db8:0:1:1:1:1:1", // one zero group is not compressed
    "2001:db8::1:0:0:1", // first of two equal runs
    "2001:0:0:1::1", // longest run wins
    "fe80::",
    "1:2:3:4:5:6:7:8",
    "::ffff:127.0.1.1",
    "::1:0:0:0", // the longer leading run is compressed
  ];
  for (const text of cases) assert.equal(formatIp(parseIp(text)), text);
  assert.equal(formatIp(parseIp("2001:DB8:0:0:0:0:0:1")), "2001:db8::1");
  assert.equal(formatIp(parseIp("0:0:0:0:0:FFFF:0a01:0203")), "::ffff:10.1.2.3");
  assert.throws(() => formatIp(new Uint8Array(5)), {
    name: "RangeError",
    message: "Cannot format IP address: 5 bytes (expected 4 or 16)",
  });
});

Deno.test("formatIp() and parseIp() agree with the WHATWG URL serializer on random addresses", () => {
  const groups = [0, 0, 0, 1, 0xffff, 0xdb8, 0xa];
  for (let i = 0; i < 2000; i++) {
    const address = new Uint8Array(16);
    const view = new DataView(address.buffer);
    for (let g = 0; g < 8; g++) view.setUint16(2 * g, groups[Math.floor(Math.random() * 7)]);
    const text = formatIp(address);
    assert.deepEqual(parseIp(text), address, text);
    // URL prints IPv4-mapped addresses in hex; everything else must match exactly.
    if (!text.includes(".")) {
      assert.equal(text, new URL(`http://[${text}]/`).hostname.slice(1, -1));
    }
  }
});

Deno.test("encodeIpKey() stores IPv4 as ::ffff:a.b.c.d and IPv6 as is", () => {
  assert.equal(hex(encodeIpKey("127.0.1.1")), "00 00 00 00 00 00 00 00 00 00 ff ff 7f 00 01 01");
  assert.deepEqual(encodeIpKey("::ffff:127.0.1.1"), encodeIpKey("127.0.1.1"));
  assert.deepEqual(encodeIpKey(bytes(127, 0, 1, 1)), encodeIpKey("127.0.1.1"));
  assert.equal(hex(encodeIpKey("::1")), "00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 01");
  const input = parseIp("2001:db8::1");
  const key = encodeIpKey(input);
  assert.deepEqual(key, input);
  assert.notEqual(key, input, "the key is a copy");
});

Deno.test("decodeIpKey() round-trips with encodeIpKey()", () => {
  for (const text of ["127.0.1.1", "10.255.0.7", "::1", "2001:db8::8:800:200c:417a", "fe80::1"]) {
    assert.equal(formatIp(decodeIpKey(encodeIpKey(text))), text);
  }
  assert.equal(decodeIpKey(encodeIpKey("127.0.1.1")).length, 4);
  throwsLayout(() => decodeIpKey(new Uint8Array(4)), "Cannot decode IP key: 4 bytes (expected 16)");
});

Deno.test("encodeIpKey() refuses the unspecified address and bad byte lengths", () => {
  for (const text of ["0.0.0.0", "::", "::ffff:0.0.0.0"]) {
    throwsLayout(
      () => encodeIpKey(text),
      `Invalid IP address "${text}": the unspecified address is never a socket's local address`,
    );
  }
  throwsLayout(
    () => encodeIpKey(new Uint8Array(5)),
    "Invalid IP address: 5 bytes (expected 4 or 16)",
  );
  throwsLayout(() => encodeIpKey("300.1.1.1"), /^Invalid IP address "300\.1\.1\.1"/);
});

Deno.test("encodePortKey() writes IPv4, the port big endian and zero padding", () => {
  assert.equal(hex(encodePortKey("127.0.0.1", 8080)), "7f 00 00 01 1f 90 00 00");
  assert.equal(hex(encodePortKey("::ffff:10.0.0.2", 1)), "0a 00 00 02 00 01 00 00");
  assert.equal(hex(encodePortKey(bytes(192, 0, 2, 1), 65535)), "c0 00 02 01 ff ff 00 00");
  assert.deepEqual(encodePortKey(encodeIpKey("10.0.0.2"), 443), encodePortKey("10.0.0.2", 443));
});

Deno.test("decodePortKey() round-trips and refuses non-zero padding", () => {
  for (const [ip, port] of [["127.0.0.1", 8080], ["10.1.2.3", 1], ["192.0.2.1", 65535]] as const) {
    const { ip: raw, port: decoded } = decodePortKey(encodePortKey(ip, port));
    assert.equal(formatIp(raw), ip);
    assert.equal(decoded, port);
  }
  throwsLayout(
    () => decodePortKey(bytes(127, 0, 0, 1, 0x1f, 0x90, 0, 1)),
    "Cannot decode port key: its padding bytes are not zero, so the BPF lookup never matches it",
  );
  throwsLayout(
    () => decodePortKey(new Uint8Array(16)),
    "Cannot decode port key: 16 bytes (expected 8)",
  );
});

Deno.test("encodePortKey() refuses IPv6, the unspecified address and ports out of range", () => {
  throwsLayout(
    () => encodePortKey("::1", 80),
    `Invalid IP address "::1" for a port entry: port_workload holds IPv4 addresses only (use an IP entry for IPv6)`,
  );
  throwsLayout(
    () => encodePortKey("0.0.0.0", 80),
    `Invalid IP address "0.0.0.0" for a port entry: the unspecified address is never a socket's local address`,
  );
  for (const port of [0, 65536, -1, 1.5, NaN]) {
    throwsLayout(
      () => encodePortKey("127.0.0.1", port),
      `Invalid port ${port}: use an integer from 1 to 65535`,
    );
  }
});

Deno.test("parsePort() accepts 1 to 65535 in plain decimal only", () => {
  assert.equal(parsePort("1"), 1);
  assert.equal(parsePort("8080"), 8080);
  assert.equal(parsePort("65535"), 65535);
  for (const text of ["0", "65536", "99999", "-1", "0x50", "80.0", "", " 80", "1e3", "123456"]) {
    throwsLayout(
      () => parsePort(text),
      `Invalid port ${JSON.stringify(text)}: use an integer from 1 to 65535`,
    );
  }
});

Deno.test("encodeWorkload() writes UTF-8 with NUL padding to 128 bytes", () => {
  const value = encodeWorkload("workload-a");
  assert.equal(value.length, FE_WORKLOAD_ID_LEN);
  assert.equal(hex(value.subarray(0, 11)), "77 6f 72 6b 6c 6f 61 64 2d 61 00");
  assert.ok(value.subarray(10).every((b) => b === 0));
  assert.equal(decodeWorkload(value), "workload-a");
});

Deno.test("workload IDs round-trip up to 127 bytes, multi-byte characters included", () => {
  for (
    const id of [
      "a",
      "spiffe://example.org/ns/shop/sa/cart",
      "café ☕ 工作负载",
      "x".repeat(127),
      "é".repeat(63) + "x", // 127 bytes
      "🦕".repeat(31) + "abc", // 4-byte characters, 127 bytes
    ]
  ) {
    assert.equal(decodeWorkload(encodeWorkload(id)), id);
  }
});

Deno.test("workload IDs longer than 127 bytes are refused, never truncated", () => {
  throwsLayout(
    () => encodeWorkload("x".repeat(140)),
    "Workload ID is 140 bytes; the maximum is 127 (FE_WORKLOAD_ID_LEN - 1)",
  );
  throwsLayout(
    () => encodeWorkload("x".repeat(128)),
    "Workload ID is 128 bytes; the maximum is 127 (FE_WORKLOAD_ID_LEN - 1)",
  );
  // 64 characters but 128 bytes: the byte length counts, not the string length.
  throwsLayout(
    () => encodeWorkload("é".repeat(64)),
    "Workload ID is 128 bytes; the maximum is 127 (FE_WORKLOAD_ID_LEN - 1)",
  );
});

Deno.test("validateWorkloadId() refuses empty, control characters, padding spaces and lone surrogates", () => {
  throwsLayout(() => validateWorkloadId(""), `Invalid workload ID "": it is empty`);
  throwsLayout(
    () => validateWorkloadId("a\0b"),
    `Invalid workload ID "a\\u0000b": it contains the control character U+0000 at index 1`,
  );
  throwsLayout(
    () => validateWorkloadId("line\nbreak"),
    `Invalid workload ID "line\\nbreak": it contains the control character U+000A at index 4`,
  );
  throwsLayout(
    () => validateWorkloadId("del\x7f"),
    `Invalid workload ID "del\x7f": it contains the control character U+007F at index 3`,
  );
  throwsLayout(
    () => validateWorkloadId("c1\u0085"),
    `Invalid workload ID "c1\u0085": it contains the control character U+0085 at index 2`,
  );
  throwsLayout(
    () => validateWorkloadId(" padded"),
    `Invalid workload ID " padded": it has leading or trailing whitespace`,
  );
  throwsLayout(
    () => validateWorkloadId("x\ud800"),
    `Invalid workload ID "x\\ud800": it contains an unpaired UTF-16 surrogate`,
  );
  validateWorkloadId("inner space is fine");
});

Deno.test("decodeWorkload() reads up to the first NUL and refuses bad values", () => {
  const value = encodeWorkload("abc");
  value[10] = 0x41; // bytes after the terminator are ignored, as in BPF
  assert.equal(decodeWorkload(value), "abc");
  throwsLayout(
    () => decodeWorkload(new Uint8Array(128).fill(0x41)),
    "Cannot decode workload value: no NUL terminator in 128 bytes",
  );
  const invalid = new Uint8Array(128);
  invalid.set([0x61, 0xff, 0x62]);
  throwsLayout(
    () => decodeWorkload(invalid),
    "Cannot decode workload value: the ID is not valid UTF-8",
  );
  throwsLayout(
    () => decodeWorkload(new Uint8Array(64)),
    "Cannot decode workload value: 64 bytes (expected 128)",
  );
  assert.equal(decodeWorkload(new Uint8Array(128)), "");
});

Deno.test("the bpftool examples in docs/identity.md carry the bytes the encoders produce", async () => {
  const doc = await Deno.readTextFile(new URL("../docs/identity.md", import.meta.url));
  const commands = [...doc.matchAll(/bpftool map update pinned (\S+) \\\n([^`]*?)\n```/g)].map((
    [, path, rest],
  ) => {
    const flat = rest.replace(/\\\n/g, " ").replace(/\s+/g, " ");
    const [, key, value] = /key hex ([0-9a-f ]+?) value hex ([0-9a-f ]+|\$value)$/.exec(
      flat.trim(),
    )!;
    return { path, key, value: value.trim() };
  });
  assert.deepEqual(commands, [
    {
      path: "/sys/fs/bpf/flowexporter/v1/ip_workload",
      key: hex(encodeIpKey("127.0.1.1")),
      value: hex(encodeWorkload("workload-a")),
    },
    {
      path: "/sys/fs/bpf/flowexporter/v1/port_workload",
      key: hex(encodePortKey("127.0.0.1", 8080)),
      value: hex(encodeWorkload("workload-b")),
    },
    { // the shell helper's example
      path: "/sys/fs/bpf/flowexporter/v1/ip_workload",
      key: hex(encodeIpKey("127.0.1.1")),
      value: "$value",
    },
  ]);
  assert.ok(doc.includes(`| \`2001:db8::7\` | \`${hex(encodeIpKey("2001:db8::7"))}\` |`));
  assert.ok(doc.includes(`(\`127.0.0.1\`, 8080) is \`${hex(encodePortKey("127.0.0.1", 8080))}\``));
});

Deno.test("validateWorkloadId() quotes at most 64 characters of a long invalid ID", () => {
  throwsLayout(
    () => validateWorkloadId("x".repeat(1000) + "\n"),
    `Invalid workload ID "${
      "x".repeat(64)
    }"…: it contains the control character U+000A at index 1000`,
  );
});

Deno.test("the BPF program and docs/identity.md size the identity maps as map_layout.ts does", () => {
  const doc = Deno.readTextFileSync(new URL("../docs/identity.md", import.meta.url));
  for (
    const [map, size] of [
      [IP_WORKLOAD_MAP, IP_WORKLOAD_MAX_ENTRIES],
      [PORT_WORKLOAD_MAP, PORT_WORKLOAD_MAX_ENTRIES],
    ] as const
  ) {
    assert.equal(bpfMaxEntries(map), size, `max_entries of ${map} in bpf/flowexporter.bpf.c`);
    const spaced = size.toLocaleString("en").replaceAll(",", " ");
    assert.match(doc, new RegExp(`\\| \`${map}\` .*\\| ${spaced} +\\|`), `${map} in the docs`);
  }
});
