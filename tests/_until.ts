/**
 * Waiting on a condition in tests, never on a fixed sleep. The deadline only matters when the
 * condition never comes: it is long, because a loaded 2-core CI host (the cluster's servers
 * fsyncing, kernel tests churning) can stall a step that takes milliseconds for seconds.
 *
 * @module
 */

/**
 * Resolves once `condition()` holds; throws naming `what` (read at the deadline, when a
 * function) after `timeoutMs`.
 */
export async function until(
  condition: () => boolean | Promise<boolean>,
  what: string | (() => string),
  timeoutMs = 30_000,
): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await condition())) {
    if (performance.now() > deadline) {
      throw new Error(`Timed out waiting for ${typeof what === "string" ? what : what()}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}
