/**
 * Takes a workload ID from an X.509 certificate: its validity, its names, its fingerprint. Kept
 * apart from host_identity.ts because X509Certificate (node:crypto) brings Node's compatibility
 * layer: host_identity.ts loads this module with the first certificate it reads.
 *
 * @example
 * ```ts
 * import { certificateIdentity } from "./certificate.ts";
 * const pem = await Deno.readTextFile("/etc/flowexporter/identity.pem");
 * console.log(certificateIdentity(pem, { rule: "uri-san" }).workloadId);
 * ```
 *
 * @module
 */
import { X509Certificate } from "node:crypto";
import { MapLayoutError, validateWorkloadId } from "../lib/map_layout.ts";
import { errorText } from "../lib/error_text.ts";
import { x509Names } from "./_x509_names.ts";
import {
  CertificateError,
  type CertificateIdentity,
  type CertificateOptions,
  DEFAULT_ID_RULE,
  type IdRule,
} from "./host_identity.ts";

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/;

/**
 * Takes the workload ID from a PEM certificate (the first CERTIFICATE block: a chain or a file
 * that also holds the key is fine).
 *
 * @param pem PEM text or bytes.
 * @param path only used in error messages.
 * @throws {CertificateError} when there is no certificate, it is malformed, not valid at
 * `options.now`, or the rule finds no usable name.
 */
export function certificateIdentity(
  pem: string | Uint8Array,
  options: CertificateOptions = {},
  path?: string,
): CertificateIdentity {
  const text = typeof pem === "string" ? pem : new TextDecoder().decode(pem);
  const block = PEM_CERTIFICATE.exec(text)?.[0];
  if (!block) {
    throw new CertificateError("no PEM block -----BEGIN CERTIFICATE----- found", path);
  }
  let certificate: X509Certificate;
  let names: ReturnType<typeof x509Names>;
  try {
    certificate = new X509Certificate(block);
    names = x509Names(new Uint8Array(certificate.raw));
  } catch (cause) {
    throw new CertificateError(`malformed certificate (${errorText(cause)})`, path, { cause });
  }
  const now = options.now ?? new Date();
  const notBefore = certificate.validFromDate;
  const notAfter = certificate.validToDate;
  if (now < notBefore) {
    throw new CertificateError(
      `not valid before ${notBefore.toISOString()} (check the clock or the issuer)`,
      path,
    );
  }
  if (now > notAfter) {
    throw new CertificateError(`expired at ${notAfter.toISOString()} (renew it)`, path);
  }
  const { workloadId, from } = pickName(names, options.rule ?? DEFAULT_ID_RULE, path);
  return {
    workloadId,
    from,
    subject: certificate.subject.split("\n").join(", "),
    notBefore,
    notAfter,
    fingerprint256: certificate.fingerprint256,
  };
}

function pickName(
  names: { commonNames: string[]; uris: string[] },
  rule: IdRule,
  path: string | undefined,
): { workloadId: string; from: "uri-san" | "cn" } {
  const { uris, commonNames } = names;
  if (rule !== "cn" && uris.length > 1) {
    const listed = uris.map((uri) => JSON.stringify(uri)).join(", ");
    throw new CertificateError(
      `it has ${uris.length} URI SANs (${listed}); expected one workload ID`,
      path,
    );
  }
  let from: "uri-san" | "cn";
  let value: string;
  if (rule !== "cn" && uris.length === 1) {
    [from, value] = ["uri-san", uris[0]];
  } else if (rule === "uri-san") {
    throw new CertificateError(
      "it has no URI SAN (issue one, or use the cn or uri-san-then-cn rule)",
      path,
    );
  } else if (commonNames.length === 1) {
    [from, value] = ["cn", commonNames[0]];
  } else {
    throw new CertificateError(
      commonNames.length === 0
        ? `it has no subject CN${rule === "cn" ? "" : " and no URI SAN"}`
        : `it has ${commonNames.length} subject CNs; expected one workload ID`,
      path,
    );
  }
  try {
    validateWorkloadId(value);
  } catch (cause) {
    if (!(cause instanceof MapLayoutError)) throw cause;
    throw new CertificateError(
      `its ${
        from === "uri-san" ? "URI SAN" : "subject CN"
      } is not a usable workload ID: ${cause.message}`,
      path,
      { cause },
    );
  }
  return { workloadId: value, from };
}
