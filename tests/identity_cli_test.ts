import assert from "node:assert/strict";
import { IDENTITY_USAGE, runIdentityCommand } from "../identity/cli.ts";
import { encodeIpKey, encodePortKey } from "../lib/map_layout.ts";
import { FakeBpfMap, fakeIdentityMaps } from "./_identity_fake_map.ts";

/**
 * Runs the command with fresh handles on `maps`, capturing its output; checks that every handle
 * it opened was closed once.
 */
async function run(args: string[], maps = fakeIdentityMaps()) {
  const stdout: string[] = [];
  const stderr: string[] = [];
  const handles: FakeBpfMap[] = [];
  const pinDirs: string[] = [];
  const code = await runIdentityCommand(args, (pinDir) => {
    pinDirs.push(pinDir);
    const opened = { ip: maps.ip.reopen(), port: maps.port.reopen() };
    handles.push(opened.ip, opened.port);
    return opened;
  }, { stdout: (s) => stdout.push(s), stderr: (s) => stderr.push(s) });
  assert.deepEqual(handles.map((h) => h.closed), handles.map(() => 1), "every handle closed once");
  const opened = handles.length / 2;
  return { code, stdout: stdout.join("\n"), stderr: stderr.join("\n"), opened, maps, pinDirs };
}

Deno.test("identity set-ip, set-port, list and delete work end to end", async (t) => {
  const maps = fakeIdentityMaps(65536, 262144);

  await t.step("set-ip and set-port write the maps silently and exit 0", async () => {
    for (
      const args of [
        ["set-ip", "127.0.1.1", "workload-a"],
        ["set-ip", "::1", "spiffe://example.org/ns/a"],
        ["set-port", "127.0.0.1", "8080", "workload-b"],
      ]
    ) {
      const result = await run(args, maps);
      assert.deepEqual({ ...result, pinDirs: undefined }, {
        code: 0,
        stdout: "",
        stderr: "",
        opened: 1,
        maps,
        pinDirs: undefined,
      });
    }
    assert.notEqual(maps.ip.lookup(encodeIpKey("127.0.1.1")), null);
    assert.notEqual(maps.port.lookup(encodePortKey("127.0.0.1", 8080)), null);
  });

  await t.step("list prints a table and the fill of each map", async () => {
    const result = await run(["list"], maps);
    assert.equal(result.code, 0);
    assert.equal(
      result.stdout,
      [
        "KIND  ADDRESS    PORT  WORKLOAD",
        "port  127.0.0.1  8080  workload-b",
        "ip    ::1        -     spiffe://example.org/ns/a",
        "ip    127.0.1.1  -     workload-a",
        "ip_workload: 2 of 65536 entries; port_workload: 1 of 262144 entries",
      ].join("\n"),
    );
  });

  await t.step("list --json prints entries and fill as JSON", async () => {
    const result = await run(["list", "--json"], maps);
    assert.equal(result.code, 0);
    assert.deepEqual(JSON.parse(result.stdout), {
      entries: [
        { kind: "port", ip: "127.0.0.1", port: 8080, workload: "workload-b" },
        { kind: "ip", ip: "::1", workload: "spiffe://example.org/ns/a" },
        { kind: "ip", ip: "127.0.1.1", workload: "workload-a" },
      ],
      fill: {
        ip_workload: { entries: 2, maxEntries: 65536 },
        port_workload: { entries: 1, maxEntries: 262144 },
      },
    });
  });

  await t.step("delete-ip and delete-port remove entries", async () => {
    assert.equal((await run(["delete-ip", "::ffff:127.0.1.1"], maps)).code, 0);
    assert.equal((await run(["delete-port", "127.0.0.1", "8080"], maps)).code, 0);
    assert.equal(maps.ip.lookup(encodeIpKey("127.0.1.1")), null);
    assert.equal(maps.port.entries.size, 0);
  });

  await t.step("deleting a missing entry fails unless --if-exists is given", async () => {
    const missing = await run(["delete-ip", "127.0.1.1"], maps);
    assert.equal(missing.code, 1);
    assert.equal(
      missing.stderr,
      "No ip_workload entry for 127.0.1.1 (nothing deleted; pass --if-exists to accept that)",
    );
    const missingPort = await run(["delete-port", "127.0.0.1", "8080"], maps);
    assert.equal(missingPort.code, 1);
    assert.match(missingPort.stderr, /^No port_workload entry for 127\.0\.0\.1 port 8080 /);
    assert.equal((await run(["delete-ip", "--if-exists", "127.0.1.1"], maps)).code, 0);
    assert.equal((await run(["delete-port", "127.0.0.1", "8080", "--if-exists"], maps)).code, 0);
  });
});

Deno.test("identity opens the maps in --pin-dir, by default the agent's", async () => {
  assert.deepEqual((await run(["list"])).pinDirs, ["/sys/fs/bpf/flowexporter/v1"]);
  assert.deepEqual((await run(["list", "--pin-dir", "/sys/fs/bpf/test"])).pinDirs, [
    "/sys/fs/bpf/test",
  ]);
  assert.deepEqual((await run(["set-ip", "10.0.0.1", "w", "--pin-dir=/tmp/p"])).pinDirs, [
    "/tmp/p",
  ]);
  const missing = await run(["list", "--pin-dir"]);
  assert.equal(missing.code, 2);
  assert.equal(
    missing.stderr,
    "Option '--pin-dir <value>' argument missing (see flowexporter identity --help)",
  );
});

Deno.test("identity list says when the maps are empty", async () => {
  const result = await run(["list"]);
  assert.equal(result.code, 0);
  assert.equal(
    result.stdout,
    "No entries\nip_workload: 0 of 16 entries; port_workload: 0 of 16 entries",
  );
});

Deno.test("identity --help prints the usage without opening the maps", async () => {
  for (const args of [["--help"], ["-h"], ["help"], ["set-ip", "--help"]]) {
    const result = await run(args);
    assert.equal(result.code, 0);
    assert.equal(result.stdout, IDENTITY_USAGE);
    assert.equal(result.opened, 0);
  }
  assert.match(IDENTITY_USAGE, /set-port IPV4 PORT WORKLOAD/);
});

Deno.test("identity refuses invalid arguments with exit 2 before opening the maps", async () => {
  const cases: [string[], string][] = [
    [[], "Missing command (see flowexporter identity --help)"],
    [["frobnicate"], `Unknown command "frobnicate" (see flowexporter identity --help)`],
    [["list", "--jsn"], "Unknown option '--jsn' (see flowexporter identity --help)"],
    [
      ["set-ip", "127.0.0.1"],
      "set-ip takes IP WORKLOAD; got 1 argument (see flowexporter identity --help)",
    ],
    [
      ["list", "extra"],
      "list takes no arguments; got 1 argument (see flowexporter identity --help)",
    ],
    [
      ["delete-port", "127.0.0.1", "1", "2"],
      "delete-port takes IPV4 PORT; got 3 arguments (see flowexporter identity --help)",
    ],
    [
      ["set-ip", "--json", "127.0.0.1", "w"],
      "Option --json applies to list only (see flowexporter identity --help)",
    ],
    [
      ["set-ip", "--if-exists", "127.0.0.1", "w"],
      "Option --if-exists applies to delete-ip and delete-port only (see flowexporter identity --help)",
    ],
    [["set-ip", "300.1.1.1", "w"], `Invalid IP address "300.1.1.1": 300 is above 255`],
    [
      ["set-ip", "127.0.0.1", "x".repeat(140)],
      "Workload ID is 140 bytes; the maximum is 127 (FE_WORKLOAD_ID_LEN - 1)",
    ],
    [["set-ip", "127.0.0.1", ""], `Invalid workload ID "": it is empty`],
    [["set-port", "127.0.0.1", "http", "w"], `Invalid port "http": use an integer from 1 to 65535`],
    [["set-port", "127.0.0.1", "0", "w"], `Invalid port "0": use an integer from 1 to 65535`],
    [
      ["set-port", "::1", "80", "w"],
      `Invalid IP address "::1" for a port entry: port_workload holds IPv4 addresses only (use an IP entry for IPv6)`,
    ],
    [
      ["delete-ip", "::ffff:1.2.3"],
      `Invalid IP address "::ffff:1.2.3": embedded IPv4 "1.2.3": expected four decimal parts a.b.c.d or IPv6 text`,
    ],
  ];
  for (const [args, message] of cases) {
    const result = await run(args);
    assert.deepEqual(
      { code: result.code, stdout: result.stdout, stderr: result.stderr, opened: result.opened },
      { code: 2, stdout: "", stderr: message, opened: 0 },
      args.join(" "),
    );
  }
});

Deno.test("identity accepts an operand that starts with a dash after --", async () => {
  const result = await run(["set-ip", "--", "127.0.0.1", "-leading-dash"]);
  assert.equal(result.code, 0);
  assert.equal(result.maps.ip.entries.size, 1);
});

Deno.test("identity reports failures to open or use the maps with exit 1", async (t) => {
  await t.step("the opener's error is shown as is", async () => {
    const stderr: string[] = [];
    const code = await runIdentityCommand(["list"], () => {
      throw new Error(
        "Cannot open /sys/fs/bpf/flowexporter/v1/ip_workload: no such file (is the agent running?)",
      );
    }, { stdout: () => {}, stderr: (s) => stderr.push(s) });
    assert.equal(code, 1);
    assert.deepEqual(stderr, [
      "Cannot open /sys/fs/bpf/flowexporter/v1/ip_workload: no such file (is the agent running?)",
    ]);
  });

  await t.step("maps with another layout are refused and closed", async () => {
    const maps = { ip: new FakeBpfMap(16, 64, 4), port: new FakeBpfMap(8, 128, 4) };
    const result = await run(["list"], maps); // run() checks that both handles were closed
    assert.equal(result.code, 1);
    assert.equal(result.opened, 1);
    assert.match(result.stderr, /^Cannot use map ip_workload: .*FE_MAPS_VERSION 1/);
  });

  await t.step("a full map fails the write", async () => {
    const maps = fakeIdentityMaps(1, 1);
    assert.equal((await run(["set-ip", "10.0.0.1", "a"], maps)).code, 0);
    const result = await run(["set-ip", "10.0.0.2", "b"], maps);
    assert.equal(result.code, 1);
    assert.match(
      result.stderr,
      /^Cannot set ip_workload entry for 10\.0\.0\.2: .*at most 1 entries/,
    );
  });

  await t.step("an async opener works too", async () => {
    const maps = fakeIdentityMaps();
    const code = await runIdentityCommand(
      ["set-ip", "10.0.0.9", "w"],
      () => Promise.resolve(maps),
      { stdout: () => {}, stderr: () => {} },
    );
    assert.equal(code, 0);
    assert.equal(maps.ip.entries.size, 1);
  });
});

Deno.test("identity list quotes entries the BPF side cannot use", async () => {
  const maps = fakeIdentityMaps();
  maps.ip.update(encodeIpKey("10.0.0.2"), new Uint8Array(128).fill(0x41));
  const result = await run(["list"], maps);
  assert.equal(result.code, 0);
  assert.equal(
    result.stdout.split("\n")[1],
    `ip    10.0.0.2  -     "${"A".repeat(128)}" (unusable: Cannot decode workload value: no NUL ` +
      "terminator in 128 bytes)",
  );
});
