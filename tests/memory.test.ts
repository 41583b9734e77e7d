// Unit tests for scripts/lib/memory.ts: when a full collection runs.

import { expect, test } from "bun:test";
import { COLLECT_EVERY_BYTES, collectGarbage } from "../scripts/lib/memory.ts";

test("collects once enough batch bytes have passed and the process is above the limit, then counts again", () => {
  const rss = process.memoryUsage.rss();
  collectGarbage(COLLECT_EVERY_BYTES, 0); // start from a known count
  expect(collectGarbage(COLLECT_EVERY_BYTES - 1, 0)).toBe(false); // not enough bytes yet
  expect(collectGarbage(1, 0)).toBe(true);
  expect(collectGarbage(COLLECT_EVERY_BYTES / 2, 0)).toBe(false); // counting starts again after a collection
  // Below the limit nothing runs, however many bytes have passed.
  expect(collectGarbage(10 * COLLECT_EVERY_BYTES, rss * 100)).toBe(false);
});
