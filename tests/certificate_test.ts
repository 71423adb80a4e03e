import assert from "node:assert/strict";
import {
  CertificateError,
  type HostIdentity,
  HostIdentityWatcher,
  type HostIdentityWatcherOptions,
  parseIdRule,
  readCertificateIdentity,
} from "../identity/host_identity.ts";
import { certificateIdentity } from "../identity/certificate.ts";
import { certificatePem, makeCertificate } from "./_certs.ts";
import { until } from "./_until.ts";

const DAY_MS = 86_400_000;

/** Runs `fn` with a fresh temp dir, removed afterwards. */
async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "flowexporter-identity-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/**
 * The real clock moved on by `skewMs`. A clock frozen when a test starts would fall before the
 * notBefore (whole seconds) of a certificate the test makes later, whenever a second boundary
 * passes in between.
 */
function skewedNow(skewMs: number): Date {
  return new Date(Date.now() + skewMs);
}

function throwsCertificate(fn: () => unknown, message: string | RegExp) {
  assert.throws(fn, (error: unknown) => {
    assert.ok(error instanceof CertificateError, `expected CertificateError, got ${error}`);
    assert.equal(error.name, "CertificateError");
    if (typeof message === "string") assert.equal(error.message, message);
    else assert.match(error.message, message);
    return true;
  });
}

Deno.test("certificateIdentity() takes the URI SAN by default", async () => {
  const pem = await certificatePem({
    subject: "/O=Acme, Inc./CN=web-1",
    uris: ["spiffe://example.org/ns/shop/sa/cart"],
  });
  const identity = certificateIdentity(pem);
  assert.equal(identity.workloadId, "spiffe://example.org/ns/shop/sa/cart");
  assert.equal(identity.from, "uri-san");
  assert.equal(identity.subject, "O=Acme, Inc., CN=web-1");
  assert.ok(Math.abs(identity.notAfter.getTime() - Date.now() - DAY_MS) < 60_000);
  assert.ok(identity.notBefore.getTime() <= Date.now());
  assert.match(identity.fingerprint256, /^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);
});

Deno.test("the identity rule chooses between URI SAN and subject CN", async () => {
  const both = await certificatePem({ cn: "web-1", uris: ["spiffe://example.org/a"] });
  const cnOnly = await certificatePem({ subject: "/O=Acme/CN=web-2" });
  const sanOnly = await certificatePem({ uris: ["spiffe://example.org/b"] });

  const pick = (pem: string, rule: "uri-san" | "cn" | "uri-san-then-cn") =>
    certificateIdentity(pem, { rule });
  assert.deepEqual([pick(both, "uri-san").workloadId, pick(both, "uri-san").from], [
    "spiffe://example.org/a",
    "uri-san",
  ]);
  assert.equal(pick(both, "uri-san-then-cn").workloadId, "spiffe://example.org/a");
  assert.deepEqual([pick(both, "cn").workloadId, pick(both, "cn").from], ["web-1", "cn"]);
  assert.equal(pick(cnOnly, "uri-san-then-cn").workloadId, "web-2");
  assert.equal(pick(cnOnly, "uri-san-then-cn").from, "cn");
  assert.equal(pick(cnOnly, "cn").workloadId, "web-2");
  throwsCertificate(
    () => pick(cnOnly, "uri-san"),
    "Cannot use certificate: it has no URI SAN (issue one, or use the cn or uri-san-then-cn rule)",
  );
  throwsCertificate(() => pick(sanOnly, "cn"), "Cannot use certificate: it has no subject CN");
  const nameless = await certificatePem({ subject: "/O=Acme" });
  throwsCertificate(
    () => pick(nameless, "uri-san-then-cn"),
    "Cannot use certificate: it has no subject CN and no URI SAN",
  );
});

Deno.test("certificateIdentity() reads names exactly from the DER", async () => {
  // Deno's subjectAltName string does not escape this comma; the DER reader is not fooled.
  const comma = await certificatePem({ uris: ["spiffe://example.org/a,DNS:evil"] });
  assert.equal(certificateIdentity(comma).workloadId, "spiffe://example.org/a,DNS:evil");
  const utf8 = await certificatePem({ cn: "café-☕" });
  assert.equal(certificateIdentity(utf8).workloadId, "café-☕");
});

Deno.test("certificateIdentity() takes the first certificate of a file with a key or a chain", async () => {
  const leaf = await certificatePem({ cn: "leaf" });
  const other = await certificatePem({ cn: "issuer" });
  const key = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n" +
    "-----END PRIVATE KEY-----\n";
  assert.equal(certificateIdentity(leaf + other).workloadId, "leaf");
  assert.equal(certificateIdentity(key + leaf + other).workloadId, "leaf");
  assert.equal(certificateIdentity(new TextEncoder().encode(leaf)).workloadId, "leaf");
});

Deno.test("certificateIdentity() refuses certificates that cannot give a workload ID", async (t) => {
  const valid = await certificatePem({ cn: "web-1", days: 1 });
  const now = Date.now();

  await t.step("no PEM block", () => {
    throwsCertificate(
      () => certificateIdentity("hello", {}, "/etc/x.pem"),
      "Cannot use certificate /etc/x.pem: no PEM block -----BEGIN CERTIFICATE----- found",
    );
  });

  await t.step("malformed body", () => {
    const broken = valid.replace(/\n[A-Za-z0-9+/]{20}/, "\nAAAAAAAAAAAAAAAAAAAA");
    throwsCertificate(
      () => certificateIdentity(broken),
      /^Cannot use certificate: malformed certificate \(.+\)$/,
    );
    const truncated = valid.split("\n").slice(0, 4).join("\n") + "\n-----END CERTIFICATE-----\n";
    throwsCertificate(() => certificateIdentity(truncated), /^Cannot use certificate: malformed/);
  });

  await t.step("expired", () => {
    const identity = certificateIdentity(valid);
    throwsCertificate(
      () => certificateIdentity(valid, { now: new Date(now + 2 * DAY_MS) }),
      `Cannot use certificate: expired at ${identity.notAfter.toISOString()} (renew it)`,
    );
    // The last second of the validity period still counts.
    assert.equal(certificateIdentity(valid, { now: identity.notAfter }).workloadId, "web-1");
  });

  await t.step("not yet valid", () => {
    const identity = certificateIdentity(valid);
    throwsCertificate(
      () => certificateIdentity(valid, { now: new Date(now - DAY_MS) }),
      `Cannot use certificate: not valid before ${identity.notBefore.toISOString()} ` +
        "(check the clock or the issuer)",
    );
  });

  await t.step("two URI SANs", async () => {
    const two = await certificatePem({
      cn: "two-sans",
      uris: ["spiffe://a/x", "spiffe://a/y"],
    });
    throwsCertificate(
      () => certificateIdentity(two),
      `Cannot use certificate: it has 2 URI SANs ("spiffe://a/x", "spiffe://a/y"); expected one ` +
        "workload ID",
    );
    assert.equal(certificateIdentity(two, { rule: "cn" }).workloadId, "two-sans");
  });

  await t.step("two CNs", async () => {
    const two = await certificatePem({ subject: "/CN=a/CN=b" });
    throwsCertificate(
      () => certificateIdentity(two, { rule: "cn" }),
      "Cannot use certificate: it has 2 subject CNs; expected one workload ID",
    );
  });

  await t.step("a workload ID longer than 127 bytes", async () => {
    const long = await certificatePem({ uris: [`spiffe://example.org/${"x".repeat(120)}`] });
    throwsCertificate(
      () => certificateIdentity(long),
      "Cannot use certificate: its URI SAN is not a usable workload ID: Workload ID is 141 " +
        "bytes; the maximum is 127 (FE_WORKLOAD_ID_LEN - 1)",
    );
  });
});

Deno.test("readCertificateIdentity() names the file and what to do", async () => {
  await withDir(async (dir) => {
    await assert.rejects(readCertificateIdentity(`${dir}/missing.pem`), {
      name: "CertificateError",
      message: `Cannot use certificate ${dir}/missing.pem: no such file (install the ` +
        "certificate there or set --cert-path)",
    });
    await assert.rejects(readCertificateIdentity(dir), {
      message: `Cannot use certificate ${dir}: it is a directory, not a file`,
    });
    await makeCertificate(`${dir}/id.pem`, { cn: "web-1" });
    assert.equal((await readCertificateIdentity(`${dir}/id.pem`)).workloadId, "web-1");
  });
});

Deno.test("parseIdRule() accepts the three rules only", () => {
  assert.equal(parseIdRule("uri-san"), "uri-san");
  assert.equal(parseIdRule("cn"), "cn");
  assert.equal(parseIdRule("uri-san-then-cn"), "uri-san-then-cn");
  assert.throws(() => parseIdRule("san"), {
    name: "TypeError",
    message: `Invalid identity rule "san" (use uri-san, cn or uri-san-then-cn)`,
  });
});

/** Starts a watcher on `path` that records log lines and changes. */
async function watch(path: string, options: Partial<HostIdentityWatcherOptions> = {}) {
  const logs: string[] = [];
  const changes: HostIdentity[] = [];
  const watcher = await HostIdentityWatcher.start({
    path,
    debounceMs: 20,
    pollIntervalMs: 0,
    log: (line) => logs.push(line),
    onChange: (identity) => changes.push(identity),
    ...options,
  });
  return { watcher, logs, changes };
}

Deno.test("HostIdentityWatcher starts unknown without a certificate and picks one up later", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/identity.pem`;
    const { watcher, logs, changes } = await watch(path);
    using _ = watcher;
    assert.deepEqual(watcher.current(), { workloadId: "", source: "unknown" });
    assert.deepEqual(logs, [
      `Cannot use certificate ${path}: no such file (install the certificate there or set ` +
      "--cert-path); the host identity stays unknown",
    ]);

    const pem = await certificatePem({ uris: ["spiffe://example.org/host"] });
    await Deno.writeTextFile(`${dir}/.tmp`, pem);
    await Deno.rename(`${dir}/.tmp`, path);
    await until(() => changes.length === 1, "the new certificate");
    const current = watcher.current();
    assert.equal(current.workloadId, "spiffe://example.org/host");
    assert.equal(current.source, "certificate");
    assert.ok(current.notAfter instanceof Date);
    assert.equal(current.subject, "O=flowexporter-test");
    assert.equal(changes[0], current);
    assert.match(logs.at(-1)!, /^Host identity is "spiffe:\/\/example\.org\/host" \(URI SAN of /);
  });
});

Deno.test("HostIdentityWatcher follows rotations without a restart", async (t) => {
  await withDir(async (dir) => {
    const path = `${dir}/identity.pem`;
    await makeCertificate(path, { uris: ["spiffe://example.org/v1"] });
    const { watcher, logs, changes } = await watch(path);
    using _ = watcher;
    assert.equal(watcher.current().workloadId, "spiffe://example.org/v1");
    assert.equal(changes.length, 0, "the first read is not a change");
    assert.equal(logs.length, 1);

    await t.step("a certificate renamed over the old file", async () => {
      await makeCertificate(`${dir}/new.pem`, { uris: ["spiffe://example.org/v2"] });
      await Deno.rename(`${dir}/new.pem`, path);
      await until(() => watcher.current().workloadId === "spiffe://example.org/v2", "v2");
    });

    await t.step("the file rewritten in place", async () => {
      const pem = await certificatePem({ uris: ["spiffe://example.org/v3"] });
      const file = await Deno.open(path, { write: true, truncate: true });
      await file.write(new TextEncoder().encode(pem));
      file.close();
      await until(() => watcher.current().workloadId === "spiffe://example.org/v3", "v3");
    });

    await t.step("the file rewritten through another path, as through a bind mount", async () => {
      // Writes through a hard link in another directory reach the file's watch only, so this
      // checks that the watch moved to the inode the rename brought in.
      await new Promise((resolve) => setTimeout(resolve, 200)); // let earlier events play out
      await withDir(async (elsewhere) => {
        await Deno.link(path, `${elsewhere}/identity.pem`);
        const pem = await certificatePem({ uris: ["spiffe://example.org/v4"] });
        const file = await Deno.open(`${elsewhere}/identity.pem`, { write: true, truncate: true });
        await file.write(new TextEncoder().encode(pem));
        file.close();
        await until(() => watcher.current().workloadId === "spiffe://example.org/v4", "v4");
      });
    });

    assert.deepEqual(changes.map((c) => c.workloadId), [
      "spiffe://example.org/v2",
      "spiffe://example.org/v3",
      "spiffe://example.org/v4",
    ]);
  });
});

Deno.test("HostIdentityWatcher follows a Kubernetes-style symlink swap", async () => {
  await withDir(async (dir) => {
    await Deno.mkdir(`${dir}/..v1`);
    await makeCertificate(`${dir}/..v1/identity.pem`, { cn: "v1" });
    await Deno.symlink("..v1", `${dir}/..data`);
    await Deno.symlink("..data/identity.pem", `${dir}/identity.pem`);
    const { watcher } = await watch(`${dir}/identity.pem`);
    using _ = watcher;
    assert.equal(watcher.current().workloadId, "v1");

    await Deno.mkdir(`${dir}/..v2`);
    await makeCertificate(`${dir}/..v2/identity.pem`, { cn: "v2" });
    await Deno.symlink("..v2", `${dir}/..data_tmp`);
    await Deno.rename(`${dir}/..data_tmp`, `${dir}/..data`);
    await until(() => watcher.current().workloadId === "v2", "v2");
  });
});

Deno.test("HostIdentityWatcher keeps the last good identity on a bad certificate", async (t) => {
  await withDir(async (dir) => {
    const path = `${dir}/identity.pem`;
    let skew = 0; // see skewedNow
    await makeCertificate(path, { cn: "good", days: 10 });
    const { watcher, logs, changes } = await watch(path, { now: () => skewedNow(skew) });
    using _ = watcher;
    const good = watcher.current();
    assert.equal(good.workloadId, "good");

    const expectLog = async (pattern: RegExp) => {
      const before = logs.length;
      await until(() => logs.length > before, `a log line matching ${pattern}`);
      assert.equal(logs.length, before + 1, "one line per problem");
      assert.match(logs.at(-1)!, pattern);
      assert.ok(!logs.at(-1)!.includes("\n"));
      assert.equal(watcher.current(), good);
    };

    await t.step("malformed", async () => {
      await Deno.writeTextFile(
        path,
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
      );
      await expectLog(
        new RegExp(
          `^Cannot use certificate ${path}: malformed certificate \\(.*\\); keeping workload ID "good"$`,
        ),
      );
    });

    await t.step("not a PEM file at all", async () => {
      await Deno.writeTextFile(path, "");
      await expectLog(
        /: no PEM block -----BEGIN CERTIFICATE----- found; keeping workload ID "good"$/,
      );
    });

    await t.step("expired", async () => {
      skew = 2 * DAY_MS; // "good" (10 days) is still valid, the new one (1 day) is not
      await makeCertificate(path, { cn: "expired", days: 1 });
      await expectLog(/: expired at \S+ \(renew it\); keeping workload ID "good"$/);
    });

    await t.step("deleted", async () => {
      await Deno.remove(path);
      await expectLog(/: no such file \(.*\); keeping workload ID "good"$/);
    });

    await t.step("a valid certificate again", async () => {
      await makeCertificate(path, { cn: "better", days: 10 });
      await until(() => watcher.current().workloadId === "better", "better");
      assert.match(logs.at(-1)!, /^Host identity is "better" \(subject CN of /);
    });
    assert.deepEqual(changes.map((c) => c.workloadId), ["better"]);
  });
});

Deno.test("HostIdentityWatcher with an expired certificate at start stays unknown", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/identity.pem`;
    await makeCertificate(path, { cn: "old", days: 1 });
    const { watcher, logs } = await watch(path, { now: () => new Date(Date.now() + 2 * DAY_MS) });
    using _ = watcher;
    assert.deepEqual(watcher.current(), { workloadId: "", source: "unknown" });
    assert.match(logs[0], /: expired at \S+ \(renew it\); the host identity stays unknown$/);
  });
});

Deno.test("HostIdentityWatcher polls: it sees changes and expiry without file events", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/identity.pem`;
    let skew = 0; // see skewedNow
    await makeCertificate(path, { cn: "a", days: 1 });
    // A debounce longer than the test leaves only the poll to notice anything.
    const { watcher, logs } = await watch(path, {
      debounceMs: 60_000,
      pollIntervalMs: 25,
      now: () => skewedNow(skew),
    });
    using _ = watcher;
    await makeCertificate(path, { cn: "b", days: 1 });
    await until(() => watcher.current().workloadId === "b", "b");

    skew = 2 * DAY_MS;
    await until(() => logs.some((l) => l.includes("expired")), "the expiry line");
    await new Promise((resolve) => setTimeout(resolve, 150)); // several more polls
    assert.equal(logs.filter((l) => l.includes("expired")).length, 1, "logged once, not per poll");
    assert.match(logs.at(-1)!, /: expired at .*; keeping workload ID "b"$/);
    assert.equal(watcher.current().workloadId, "b");
  });
});

Deno.test("HostIdentityWatcher applies the configured rule", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/identity.pem`;
    await makeCertificate(path, { cn: "by-cn", uris: ["spiffe://example.org/by-san"] });
    const byCn = await watch(path, { rule: "cn" });
    const byDefault = await watch(path);
    using _a = byCn.watcher;
    using _b = byDefault.watcher;
    assert.equal(byCn.watcher.current().workloadId, "by-cn");
    assert.equal(byCn.watcher.rule, "cn");
    assert.equal(byDefault.watcher.current().workloadId, "spiffe://example.org/by-san");
    assert.equal(byDefault.watcher.rule, "uri-san-then-cn");
  });
});

Deno.test("HostIdentityWatcher logs a failing change handler on one line and closes twice", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/identity.pem`;
    const { watcher, logs } = await watch(path, {
      onChange: () => {
        throw new Error("map write failed:\n  E2BIG");
      },
    });
    await makeCertificate(path, { cn: "x" });
    await watcher.reload();
    assert.equal(watcher.current().workloadId, "x");
    // One line even when the error text is not; the handler runs before the identity is logged.
    assert.equal(logs.at(-2), "Host identity change handler failed: map write failed: E2BIG");
    assert.match(logs.at(-1)!, /^Host identity is "x"/);
    watcher.close();
    watcher.close();
    watcher[Symbol.dispose]();
    await watcher.reload(); // after close: a no-op that still resolves
    assert.equal(watcher.current().workloadId, "x");
  });
});
