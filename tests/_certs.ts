/**
 * Test certificates, generated with /usr/bin/openssl: self-signed P-256 leaf certificates with
 * a chosen subject, URI and IP SANs and validity, with their key when a test serves TLS.
 *
 * @module
 */

import assert from "node:assert/strict";

/** What the certificate says. */
export interface CertSpec {
  /** Subject CN (escaped for openssl); ignored when `subject` is given. */
  cn?: string;
  /** Whole subject in openssl -subj syntax, e.g. `/O=Acme/CN=web-1`. */
  subject?: string;
  /** One URI SAN. */
  uri?: string;
  /** Several URI SANs (after `uri`). */
  uris?: string[];
  /** IP address SANs, for a server certificate. */
  ips?: string[];
  /** Validity in days from now; default 1. */
  days?: number;
}

/**
 * Generates a certificate and returns its PEM. openssl works in a temp dir of its own, so no
 * file events happen where a watcher might look.
 */
export async function certificatePem(spec: CertSpec = {}): Promise<string> {
  return (await certificateAndKeyPem(spec)).cert;
}

/** Generates a certificate and returns it with its private key, both PEM. */
export async function certificateAndKeyPem(
  spec: CertSpec = {},
): Promise<{ cert: string; key: string }> {
  const dir = await Deno.makeTempDir({ prefix: "flowexporter-openssl-" });
  try {
    const uris = [...(spec.uri === undefined ? [] : [spec.uri]), ...(spec.uris ?? [])];
    const sans = [
      ...uris.map((uri, i) => `URI.${i + 1} = ${uri}`),
      ...(spec.ips ?? []).map((ip, i) => `IP.${i + 1} = ${ip}`),
    ];
    await Deno.writeTextFile(
      `${dir}/openssl.cnf`,
      [
        "[req]",
        "distinguished_name = dn",
        "[dn]",
        "[ext]",
        "basicConstraints = critical, CA:false",
        ...(sans.length ? ["subjectAltName = @alt", "[alt]", ...sans] : []),
      ].join("\n") + "\n",
    );
    const subject = spec.subject ??
      (spec.cn === undefined
        ? "/O=flowexporter-test"
        : `/CN=${spec.cn.replace(/[/+=\\]/g, "\\$&")}`);
    const { code, stderr } = await new Deno.Command("/usr/bin/openssl", {
      args: [
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        `${dir}/key.pem`,
        "-out",
        `${dir}/cert.pem`,
        "-days",
        String(spec.days ?? 1),
        "-utf8",
        "-subj",
        subject,
        "-config",
        `${dir}/openssl.cnf`,
        "-extensions",
        "ext",
      ],
      stdout: "null",
      stderr: "piped",
    }).output();
    assert.equal(code, 0, `openssl failed: ${new TextDecoder().decode(stderr)}`);
    return {
      cert: await Deno.readTextFile(`${dir}/cert.pem`),
      key: await Deno.readTextFile(`${dir}/key.pem`),
    };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Generates a certificate (see `certificatePem`) and writes it to `path`. */
export async function makeCertificate(path: string, spec: CertSpec = {}): Promise<void> {
  await Deno.writeTextFile(path, await certificatePem(spec));
}
