// Batch files: the hand-over from the consumer to the loader, and what people open to inspect the stream.
//
// A batch file is a CSV: the source fields as received (header names of the source file), then columns
// saying where each row came from. Its name encodes topic, partition, offset range and a content hash:
//
//   sales_topic_p0_000000000100-000000000199_3fa9c2d1e0b4.csv
//
// so names never collide across restarts and never reuse a number, a rewrite of the same records gets the
// same name, and the loader can tell a truncated or edited file (the hash no longer matches).
//
// A gap file says that a range of a partition's offsets could not be read (Kafka deleted them first, or the
// topic was re-created): one row with the range and the reason, named like a batch file with "_lost":
//
//   sales_topic_p0_000000000200-000000000399_lost_5be0c81d2a47.csv    (last offset unknown: ...-unknown_lost_...)

import { createHash } from "node:crypto";
import { open, rename, unlink } from "node:fs/promises";
import { join } from "node:path";
import { writeCsv } from "./csv.ts";

/** Where a row came from; appended after the source fields in every batch file. */
export const META_COLUMNS = [
  "_source_file",
  "_source_line",
  "_source_lines",
  "_topic",
  "_partition",
  "_offset",
  "_timestamp",
  "_error",
  "_raw",
] as const;

export type MetaColumn = (typeof META_COLUMNS)[number];

/**
 * A row's source fields that did not get a column of their own (a file has at most MAX_SOURCE_COLUMNS, see
 * batcher.ts), as one JSON object of text; empty when the row has none. Between the source and meta columns.
 */
export const EXTRA_COLUMN = "_extra";

/** The columns of a gap file, in order; it holds one row. */
export const GAP_COLUMNS = ["topic", "partition", "first_offset", "last_offset", "kind", "consumer_group", "reason"] as const;

export type GapKind = "deleted" | "recreated";

/** A range of one partition's offsets that a consumer group could not read. */
export interface LostRange {
  readonly topic: string;
  readonly partition: number;
  readonly first: bigint;
  /** the last offset known to have existed; null when unknown (records a re-created topic's old log received unread) */
  readonly last: bigint | null;
  readonly kind: GapKind;
  readonly group: string;
  readonly reason: string;
}

const NAME = /^(.+)_p(\d+)_(\d{12,})-(\d{12,})_([0-9a-f]{12})\.csv$/;
const GAP_NAME = /^(.+)_p(\d+)_(\d{12,})-(\d{12,}|unknown)_lost_([0-9a-f]{12})\.csv$/;

export function sha256(content: string | Uint8Array): string {
  return createHash("sha256").update(content).digest("hex");
}

/**
 * The topic as it appears in file names. Kafka allows names a folder handles badly: a leading "." hides the
 * file (and the loader skips dot files, which are files being written), and 249 characters plus the rest of
 * the name exceed the 255 bytes a file name may have. Such names are shortened; the batch file's _topic
 * column keeps the real one.
 */
export function topicInFileName(topic: string): string {
  const visible = topic.replace(/^\.+/, (dots) => "_".repeat(dots.length));
  return visible.length <= 120 ? visible : `${visible.slice(0, 100)}~${sha256(topic).slice(0, 8)}`;
}

const pad = (n: bigint) => n.toString().padStart(12, "0");

export function batchFileName(topic: string, partition: number, first: bigint, last: bigint, content: string | Uint8Array): string {
  return `${topicInFileName(topic)}_p${partition}_${pad(first)}-${pad(last)}_${sha256(content).slice(0, 12)}.csv`;
}

/** The name of a gap file: the range it reports, "unknown" for an unknown last offset, and its content's hash. */
export function gapFileName(range: LostRange, content: string | Uint8Array): string {
  const last = range.last === null ? "unknown" : pad(range.last);
  return `${topicInFileName(range.topic)}_p${range.partition}_${pad(range.first)}-${last}_lost_${sha256(content).slice(0, 12)}.csv`;
}

/** Reads a name written by gapFileName; undefined for any other name. */
export function parseGapFileName(name: string): { readonly partition: number; readonly first: bigint; readonly hash: string } | undefined {
  const m = GAP_NAME.exec(name);
  return m ? { partition: Number(m[2]), first: BigInt(m[3]!), hash: m[5]! } : undefined;
}

export interface BatchName {
  readonly topic: string;
  readonly partition: number;
  readonly first: bigint;
  readonly last: bigint;
  /** first 12 hex digits of the content's sha256 */
  readonly hash: string;
}

/** Reads a name written by batchFileName; undefined for any other name (a file someone put there). */
export function parseBatchFileName(name: string): BatchName | undefined {
  const m = NAME.exec(name);
  if (!m) return undefined;
  return { topic: m[1]!, partition: Number(m[2]), first: BigInt(m[3]!), last: BigInt(m[4]!), hash: m[5]! };
}

/**
 * Writes `content` so that `dir/name` either does not exist or is complete: temporary file, fsync, rename,
 * and (unless `options.syncFolder` is false) fsync of the folder, so the rename itself survives a power cut.
 * A caller that writes many files may skip the folder sync per file and call syncFolder once before it
 * relies on them.
 */
export async function writeFileDurably(
  dir: string,
  name: string,
  content: string | Uint8Array,
  options: { beforeRename?: () => void; syncFolder?: boolean } = {},
): Promise<string> {
  const path = join(dir, name);
  const tmp = join(dir, `.${name}.tmp`);
  const file = await open(tmp, "w");
  try {
    await file.writeFile(content);
    await file.sync();
  } catch (error) {
    // Disk full, file too large, ...: leave no half-written temporary file behind.
    await file.close().catch(() => undefined);
    await unlink(tmp).catch(() => undefined);
    throw error;
  }
  await file.close();
  options.beforeRename?.();
  await rename(tmp, path);
  if (options.syncFolder !== false) await syncFolder(dir);
  return path;
}

/** fsync of a folder: the names created or renamed in it so far survive a power cut. */
export async function syncFolder(dir: string): Promise<void> {
  const folder = await open(dir, "r");
  try {
    await folder.sync();
  } finally {
    await folder.close();
  }
}

/** The gap file for `range`: its name and content (a header and one row, readable as any batch file). */
export function gapFile(range: LostRange): { name: string; content: string } {
  const row = {
    topic: range.topic,
    partition: String(range.partition),
    first_offset: range.first.toString(),
    last_offset: range.last === null ? null : range.last.toString(),
    kind: range.kind,
    consumer_group: range.group,
    reason: range.reason,
  };
  const content = writeCsv([row], GAP_COLUMNS);
  return { name: gapFileName(range, content), content };
}
