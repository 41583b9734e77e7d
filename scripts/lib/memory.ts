// Resident memory within bounds. Bun's collector lets garbage pile up to about twice the live data before it
// collects; a script that handles batches of rows tells collectGarbage how many bytes of batches it has just
// finished with, and a full collection runs at that quiet moment once enough has passed through and the
// process is resident above a limit (make bench measures each script's peak).

import { fullGC } from "bun:jsc";

/** Above this resident size, collections run... */
export const COLLECT_ABOVE_BYTES = 160 * 1024 * 1024;
/** ...at most once per this many bytes of batches (a process whose live data stays above the limit is not collected after every small file). */
export const COLLECT_EVERY_BYTES = 2 * 1024 * 1024;

let since = 0;

/** Counts `bytes` of batches done with; runs a full collection when due. True when it ran. */
export function collectGarbage(bytes: number, limit = COLLECT_ABOVE_BYTES): boolean {
  since += bytes;
  if (since < COLLECT_EVERY_BYTES || process.memoryUsage.rss() <= limit) return false;
  since = 0;
  fullGC();
  return true;
}
