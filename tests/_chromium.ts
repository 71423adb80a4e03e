/**
 * Test and benchmark helper: Debian's `chromium`, headless, driven by playwright-core over the
 * DevTools protocol. No browser is downloaded: the Makefile installs Debian's package. Chromium
 * runs in a process group of its own (`setsid`), which {@linkcode HeadlessChromium.close} kills
 * whole, then checks that no process of its profile is left; it reaches nothing but loopback
 * (no host name resolves, background services are off).
 *
 * @module
 */

import { type Browser, chromium } from "playwright-core";
import { readLines, waitForLine } from "./_agent.ts";

/** Where Debian installs the browser. */
const CHROMIUM_PATH = "/usr/bin/chromium";
const DEVTOOLS = /DevTools listening on (ws:\/\/\S+)/;
/** How long a start may take on a busy machine. */
const START_TIMEOUT_MS = 90_000;

/** True when Debian's chromium is installed. */
export const HAS_CHROMIUM: boolean = (() => {
  try {
    return Deno.statSync(CHROMIUM_PATH).isFile;
  } catch {
    return false;
  }
})();

/**
 * A test that needs chromium: skipped on a developer's machine without it, but under CI it
 * runs and fails, saying what to install: a skipped browser test proves nothing.
 */
export function browserTest(name: string, fn: (t: Deno.TestContext) => Promise<void>): void {
  Deno.test({
    name,
    ignore: !HAS_CHROMIUM && !Deno.env.get("CI"),
    fn: async (t) => {
      if (!HAS_CHROMIUM) {
        throw new Error(
          `Cannot find chromium at ${CHROMIUM_PATH}: make test installs it (or apt-get install chromium)`,
        );
      }
      await fn(t);
    },
  });
}

/** A headless chromium and the playwright connection to it. */
export class HeadlessChromium implements AsyncDisposable {
  readonly browser: Browser;
  readonly #child: Deno.ChildProcess;
  readonly #profile: string;
  readonly #stderr: Promise<void>;
  #closed?: Promise<void>;

  private constructor(
    browser: Browser,
    child: Deno.ChildProcess,
    profile: string,
    stderr: Promise<void>,
  ) {
    this.browser = browser;
    this.#child = child;
    this.#profile = profile;
    this.#stderr = stderr;
  }

  /** Starts chromium with a new profile and connects to it. */
  static async launch(): Promise<HeadlessChromium> {
    const profile = await Deno.makeTempDir({ prefix: "flowexporter-chromium-" });
    // Chromium's singleton socket goes under TMPDIR, which a kill never cleans: keep it in the profile.
    const tmp = `${profile}/tmp`;
    await Deno.mkdir(tmp);
    const child = new Deno.Command("setsid", {
      args: [
        CHROMIUM_PATH,
        "--headless",
        "--no-sandbox", // as root, chromium runs only without its sandbox
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        `--user-data-dir=${profile}`,
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-breakpad",
        "--disable-crash-reporter",
        `--crash-dumps-dir=${profile}/crashes`, // not the user's home; and found by close()
        "--disable-domain-reliability",
        "--disable-client-side-phishing-detection",
        "--no-pings",
        "--proxy-server=127.0.0.1:9", // nothing listens there: only loopback, never proxied, is reached
        "about:blank",
      ],
      env: { TMPDIR: tmp },
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const lines: string[] = [];
    const stderr = readLines(child.stderr, (line) => lines.push(line));
    let exited = false;
    child.status.then(() => exited = true);
    try {
      const line = await waitForLine("Chromium", lines, DEVTOOLS, () => exited, START_TIMEOUT_MS);
      const browser = await chromium.connectOverCDP(DEVTOOLS.exec(line)![1], {
        timeout: START_TIMEOUT_MS,
      });
      return new HeadlessChromium(browser, child, profile, stderr);
    } catch (error) {
      await stop(child, profile, stderr);
      throw error;
    }
  }

  /**
   * Kills chromium's process group and waits for it; removes the profile. Safe to call twice.
   *
   * @throws {Error} when a process of this profile is still alive afterwards
   */
  close(): Promise<void> {
    return this.#closed ??= (async () => {
      await this.browser.close().catch(() => {}); // the connection; the kill does the rest
      await stop(this.#child, this.#profile, this.#stderr);
    })();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

async function stop(
  child: Deno.ChildProcess,
  profile: string,
  stderr: Promise<void>,
): Promise<void> {
  try {
    Deno.kill(-child.pid, "SIGKILL"); // setsid made chromium the leader of its own group
  } catch {
    // the group is gone already
  }
  await child.status;
  await stderr;
  const deadline = Date.now() + 10_000;
  let left = profileProcesses(profile);
  while (left.length > 0 && Date.now() < deadline) {
    for (const pid of left) {
      try {
        Deno.kill(pid, "SIGKILL");
      } catch {
        // exited meanwhile
      }
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
    left = profileProcesses(profile);
  }
  await Deno.remove(profile, { recursive: true }).catch(() => {});
  if (left.length > 0) {
    throw new Error(`Chromium processes ${left.join(", ")} of ${profile} outlived their kill`);
  }
}

/** Processes whose command line names `profile` (chromium's helpers name its directory). */
function profileProcesses(profile: string): number[] {
  const pids: number[] = [];
  for (const entry of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    try {
      const cmdline = Deno.readTextFileSync(`/proc/${entry.name}/cmdline`);
      if (cmdline.includes(profile)) pids.push(Number(entry.name));
    } catch {
      // exited while listed
    }
  }
  return pids;
}
