// scripts/lib/shutdown.ts in a process of its own: once every stop step has run, a handle a library left
// open (a timer, a socket) neither keeps the script alive nor turns its exit into a failure.

import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { LINGER_MS } from "../scripts/lib/shutdown.ts";
import { ROOT } from "./helpers.ts";

/** A script that stops cleanly but leaves an interval running, as kafkajs can after a disconnect mid-rebalance. */
function lingering(exitCode: number): string {
  return `
    import { createShutdown } from ${JSON.stringify(join(ROOT, "scripts/lib/shutdown.ts"))};
    import { createLogger } from ${JSON.stringify(join(ROOT, "scripts/lib/log.ts"))};
    const shutdown = createShutdown(createLogger("t", "silent"));
    shutdown.onStop("flush", async () => {});
    setInterval(() => {}, 1000);
    await shutdown.run();
    process.exitCode = ${exitCode};
  `;
}

describe("a script whose stop steps have all run", () => {
  for (const code of [0, 1]) {
    test(`exits with its own code (${code}) although a timer is still running`, async () => {
      const started = performance.now();
      const child = Bun.spawn([process.execPath, "-e", lingering(code)], { stdout: "ignore", stderr: "pipe" });
      const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
      expect(await child.exited).toBe(code);
      clearTimeout(timer);
      // It waited for the timer only as long as LINGER_MS (well under the 15 s at which it would be killed).
      expect(performance.now() - started).toBeGreaterThanOrEqual(LINGER_MS);
    });
  }
});
