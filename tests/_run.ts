/**
 * Test helper: runs a system command (ip, mount, bpftool, ss) to its end.
 *
 * @module
 */

/** Runs a command; resolves to its stdout, rejects with its stderr when it fails. */
export async function run(command: string, ...args: string[]): Promise<string> {
  const out = await new Deno.Command(command, { args, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) {
    const stderr = new TextDecoder().decode(out.stderr).trim();
    throw new Error(`${command} ${args.join(" ")} failed (exit ${out.code}): ${stderr}`);
  }
  return new TextDecoder().decode(out.stdout);
}
