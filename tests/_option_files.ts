/**
 * Test helper: config files in memory and the message of a `ConfigError`, for the tests of the
 * agent's and the collector's options.
 *
 * @module
 */
import assert from "node:assert/strict";
import { ConfigError, type ReadTextFile } from "../lib/options.ts";

/** A file system holding only `files`; other paths are NotFound. */
export function files(files: Record<string, string>): ReadTextFile {
  return (path) => {
    if (path in files) return files[path];
    throw new Deno.errors.NotFound(`No such file: ${path}`);
  };
}

/** A file system without files: no config file is read. */
export const NO_FILES: ReadTextFile = files({});

/** The message of the ConfigError `fn` throws; fails when it throws nothing or something else. */
export function configErrorOf(fn: () => unknown): string {
  try {
    fn();
  } catch (error) {
    assert.ok(error instanceof ConfigError, `expected a ConfigError, got ${error}`);
    assert.equal(error.name, "ConfigError");
    return error.message;
  }
  assert.fail("expected an error");
}
