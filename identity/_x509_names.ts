/**
 * Reads the subject common names and URI subject alternative names from a certificate's DER.
 * node:crypto's `subjectAltName` string does not escape commas inside values in Deno, so the
 * names are taken from the DER itself; the certificate has already been parsed by
 * X509Certificate, which is why malformed input only needs a plain error here.
 *
 * @module
 */

const OID_COMMON_NAME = [0x55, 0x04, 0x03]; // 2.5.4.3
const OID_SUBJECT_ALT_NAME = [0x55, 0x1d, 0x11]; // 2.5.29.17
const TAG_SEQUENCE = 0x30;
const TAG_OID = 0x06;
const TAG_VERSION = 0xa0; // [0] EXPLICIT
const TAG_EXTENSIONS = 0xa3; // [3] EXPLICIT
const TAG_URI = 0x86; // GeneralName uniformResourceIdentifier [6] IMPLICIT IA5String

interface Tlv {
  tag: number;
  body: Uint8Array;
}

/** The names a workload ID can come from, in certificate order. */
export interface X509Names {
  /** Subject CN attribute values. */
  commonNames: string[];
  /** URI entries of the subjectAltName extension. */
  uris: string[];
}

/** Extracts subject CNs and URI SANs from a DER-encoded X.509 certificate. */
export function x509Names(der: Uint8Array): X509Names {
  const [certificate] = children(der);
  const tbs = children(expect(certificate, TAG_SEQUENCE).body)[0];
  const fields = children(expect(tbs, TAG_SEQUENCE).body);
  // serial, signature, issuer, validity, subject follow the optional version.
  const subject = fields[(fields[0]?.tag === TAG_VERSION ? 1 : 0) + 4];
  const commonNames: string[] = [];
  for (const rdn of children(expect(subject, TAG_SEQUENCE).body)) {
    for (const attribute of children(rdn.body)) {
      const [type, value] = children(attribute.body);
      if (type.tag === TAG_OID && sameBytes(type.body, OID_COMMON_NAME)) {
        commonNames.push(decodeString(value));
      }
    }
  }
  const uris: string[] = [];
  const extensions = fields.find((f) => f.tag === TAG_EXTENSIONS);
  if (extensions) {
    const [list] = children(extensions.body);
    for (const extension of children(expect(list, TAG_SEQUENCE).body)) {
      const parts = children(extension.body);
      if (!sameBytes(parts[0].body, OID_SUBJECT_ALT_NAME)) continue;
      const [names] = children(parts[parts.length - 1].body); // extnValue OCTET STRING
      for (const name of children(expect(names, TAG_SEQUENCE).body)) {
        if (name.tag === TAG_URI) uris.push(decodeText(name.body, "utf-8"));
      }
    }
  }
  return { commonNames, uris };
}

function children(bytes: Uint8Array): Tlv[] {
  const out: Tlv[] = [];
  let at = 0;
  while (at < bytes.length) {
    const tag = bytes[at++];
    let length = bytes[at++];
    if (length & 0x80) {
      const count = length & 0x7f;
      if (count === 0 || count > 4) throw new Error("Unsupported DER length form");
      length = 0;
      for (let i = 0; i < count; i++) length = length * 256 + bytes[at++];
    }
    if (at + length > bytes.length || Number.isNaN(length)) throw new Error("Truncated DER");
    out.push({ tag, body: bytes.subarray(at, at + length) });
    at += length;
  }
  return out;
}

function expect(tlv: Tlv | undefined, tag: number): Tlv {
  if (tlv?.tag !== tag) {
    throw new Error(`Unexpected DER structure (expected tag 0x${tag.toString(16)})`);
  }
  return tlv;
}

function sameBytes(a: Uint8Array, b: number[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** Decodes the DirectoryString / IA5String forms a CN can take. */
function decodeString(tlv: Tlv): string {
  switch (tlv.tag) {
    case 0x0c: // UTF8String
    case 0x13: // PrintableString
    case 0x16: // IA5String
      return decodeText(tlv.body, "utf-8");
    case 0x14: // TeletexString, in practice Latin-1
      return decodeText(tlv.body, "latin1");
    case 0x1e: // BMPString
      return decodeText(tlv.body, "utf-16be");
    default:
      throw new Error(`Unsupported string type 0x${tlv.tag.toString(16)} in the subject CN`);
  }
}

function decodeText(bytes: Uint8Array, encoding: string): string {
  return new TextDecoder(encoding, { fatal: true }).decode(bytes);
}
