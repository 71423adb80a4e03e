/**
 * The line an operator reads when the BPF side does not load: EACCES means missing privileges for
 * an unprivileged process, and a verifier refusal for one that has them (a verifier refusal made
 * root read "run as root").
 */
import assert from "node:assert/strict";
import { explainLoadFailure } from "../ffi/agent.ts";

const VERIFIER_LOG = [
  "libbpf: prog 'on_state_btf': BPF program load failed: -EACCES",
  "307: (69) r2 = *(u16 *)(r6 +814)",
  "access beyond struct sock at off 814 size 2",
  "libbpf: prog 'on_state_btf': failed to load: -13",
].join("\n");

Deno.test("EACCES without BPF privileges says which privileges", () => {
  const line = explainLoadFailure(-13, "", "", false);
  assert.equal(
    line,
    "Cannot load the BPF program: permission denied " +
      "(run as root or grant CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE)",
  );
});

Deno.test("EACCES with BPF privileges is the verifier's refusal, with its reason", () => {
  const line = explainLoadFailure(-13, "", VERIFIER_LOG, true);
  assert.match(line, /^Cannot load the BPF program: permission denied \(the kernel's verifier/);
  assert.doesNotMatch(line, /run as root/);
  assert.match(line, /access beyond struct sock at off 814 size 2/);
  assert.ok(!line.includes("\n"), "one line");
});

Deno.test("other errors name the errno and add no privilege hint", () => {
  const line = explainLoadFailure(-22, "", "", false);
  assert.equal(line, "Cannot load the BPF program: invalid argument");
});
