// The rejects file for people: after a file's transaction commits, what it sent to rejected_rows is also
// written as BATCHES_DIR/rejected/<batch file>, one row per rejection with the reason first. The table is the
// record; this file is a convenience, so failing to write it is reported, not fatal.

import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { writeFileDurably } from "../batch.ts";
import { writeCsv } from "../csv.ts";
import type { RejectedRow } from "./read.ts";

/** The CSV text: reason and provenance (named with a leading "_", so a source column of the same name stays apart), then the row as received. */
export function rejectsCsv(rejections: readonly (RejectedRow & { status?: string })[]): string {
  const fieldColumns = [...new Set(rejections.flatMap((r) => Object.keys(r.fields ?? {})))];
  const columns = ["_reason", "_status", "_source_file", "_source_line", "_batch_file", "_kafka_offset", ...fieldColumns, "_raw_text"];
  const rows = rejections.map((r) => ({
    ...r.fields,
    _reason: r.reason,
    _status: r.status ?? "open",
    _source_file: r.source_file,
    _source_line: r.source_line,
    _batch_file: r.batch_file,
    _kafka_offset: r.kafka_offset,
    _raw_text: r.raw_text,
  }));
  return writeCsv(rows, columns);
}

/** Writes dir/rejected/<name>; returns its path. */
export async function writeRejects(dir: string, name: string, rejections: readonly RejectedRow[]): Promise<string> {
  const folder = join(dir, "rejected");
  await mkdir(folder, { recursive: true });
  return writeFileDurably(folder, name, rejectsCsv(rejections));
}
