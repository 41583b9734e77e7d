// The consumer's batching, without Kafka: messages become batch rows, rows collect per partition, and a
// partition's rows are handed out as one batch file when BATCH_SIZE is reached, when its first row has waited
// BATCH_MAX_SECONDS (a steady trickle still lands every few seconds, as Kafka Connect's sinks rotate files by
// time), when the partition has been quiet for a while, or when everything is drained at shutdown. Pure
// state with the clock passed in, unit-tested on its own; the consumer script does the I/O (writing files,
// committing offsets).
//
// No message can stop the consumer: a value that is not a JSON object, not UTF-8 or too large, and headers
// without a value, not UTF-8 or too large, make a row with the reason in _error and the value in _raw, which
// the loader records as a rejection. A file's width does not grow with its messages: at most
// MAX_SOURCE_COLUMNS source columns, a row's other fields together in _extra (see batchLayout).

import type { IHeaders, KafkaMessage } from "kafkajs";
import { EXTRA_COLUMN, META_COLUMNS, type MetaColumn } from "./batch.ts";
import { byColumn, type CsvRow } from "./csv.ts";
import { KEPT_CHARS } from "./input.ts";
import { FIELDS, normalizeHeader, ROW_ID_KEY } from "./record.ts";

/** One row of a batch file: the source fields as received, then where the row came from. */
export type BatchRow = Record<string, string | null> & Partial<Record<MetaColumn, string | null>>;

/** A provenance header (a source path, a line number, a reason) longer than this makes the message a rejection. */
export const MAX_HEADER_BYTES = 64 * 1024;
/** A message value longer than this (Kafka's default largest message) is a rejection that keeps its first KEPT_CHARS. */
export const MAX_VALUE_BYTES = 1024 * 1024;
/** Source columns of a batch file; a row's fields beyond them go to _extra. The Superstore has 21 to 24. */
export const MAX_SOURCE_COLUMNS = 100;

const UTF8 = new TextDecoder("utf-8", { fatal: true });

/** Bytes as UTF-8 text; undefined when they are not UTF-8. */
function utf8(bytes: Uint8Array): string | undefined {
  try {
    return UTF8.decode(bytes);
  } catch {
    return undefined;
  }
}

/** A header's text; `problem` says why a header that is there cannot be read. */
interface Header {
  readonly text: string | null;
  readonly problem?: string;
}

function header(headers: IHeaders | undefined, name: string): Header {
  const value = headers?.[name];
  const one: unknown = Array.isArray(value) ? value[0] : value;
  // Kafka allows a header without a value (its console producer writes one for null.marker): not given.
  if (one === undefined || one === null) return { text: null };
  const bytes = one instanceof Uint8Array ? one : Buffer.from(String(one));
  if (bytes.length > MAX_HEADER_BYTES) return { text: null, problem: `header ${name} is ${bytes.length} bytes, more than ${MAX_HEADER_BYTES}` };
  const text = utf8(bytes);
  return text === undefined ? { text: null, problem: `header ${name} is not UTF-8 text` } : { text };
}

/** The message's value as text, and why it cannot be read as a row when it cannot. */
function valueText(value: KafkaMessage["value"]): { text: string | null; problem?: string } {
  if (value === null) return { text: null };
  if (value.length > MAX_VALUE_BYTES) {
    const kept = value.subarray(0, KEPT_CHARS).toString("utf8");
    return { text: kept, problem: `message value is ${value.length} bytes, more than ${MAX_VALUE_BYTES}; its first ${KEPT_CHARS} bytes are kept` };
  }
  const text = utf8(value);
  return text === undefined ? { text: value.toString("utf8"), problem: "message value is not UTF-8 text" } : { text };
}

/** Kafka's timestamp (ms) as ISO text; -1 (none) is null, one outside the calendar stays a number. */
function timestampText(timestamp: string | undefined): string | null {
  const ms = Number(timestamp);
  if (!Number.isFinite(ms) || ms < 0) return null;
  const date = new Date(ms);
  return Number.isNaN(date.getTime()) ? String(timestamp) : date.toISOString();
}

function text(value: unknown): string | null {
  if (value === null || value === undefined) return null;
  if (typeof value === "string") return value;
  if (typeof value === "number" || typeof value === "boolean" || typeof value === "bigint") return String(value);
  return JSON.stringify(value);
}

const RESERVED: ReadonlySet<string> = new Set([...META_COLUMNS, EXTRA_COLUMN]);

/** Where a message came from; `problems` lists provenance headers that are there but cannot be read. */
function metaOf(message: KafkaMessage, topic: string, partition: number): { meta: Record<MetaColumn, string | null>; problems: string[] } {
  const read = ["source_file", "source_line", "source_lines", "parse_error"].map((name) => header(message.headers, name));
  const [file, line, lines, parseError] = read as [Header, Header, Header, Header];
  const meta: Record<MetaColumn, string | null> = {
    _source_file: file.text,
    _source_line: line.text,
    _source_lines: lines.text,
    _topic: topic,
    _partition: String(partition),
    _offset: message.offset,
    _timestamp: timestampText(message.timestamp),
    _error: parseError.text,
    _raw: null,
  };
  return { meta, problems: read.flatMap((h) => (h.problem ? [h.problem] : [])) };
}

/** Puts the fields of a JSON object value into `row`, as text; false when the value is not a JSON object. */
function fieldsOf(value: string | null, row: BatchRow): boolean {
  let parsed: unknown;
  try {
    parsed = value === null ? undefined : JSON.parse(value);
  } catch {
    return false;
  }
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) return false;
  const fields = parsed as Record<string, unknown>;
  // for...in over a JSON.parse result: its own keys, in order (Object.prototype has none enumerable).
  for (const key in fields) {
    // A source column named like one of ours would be overwritten; keep it under a safe name.
    row[RESERVED.has(key) ? `source${key}` : key] = text(fields[key]);
  }
  return true;
}

/**
 * Tells a record from another at the same offset (one of a re-created topic): a hash of its timestamp, key and
 * value, each hashed on its own so that no two splits of the same bytes collide.
 */
export function recordFingerprint(message: Pick<KafkaMessage, "timestamp" | "key" | "value">): bigint {
  const seed = BigInt.asUintN(64, BigInt(message.timestamp || "0"));
  const key = BigInt(Bun.hash(message.key ?? "", seed));
  return BigInt(Bun.hash(message.value ?? "", key));
}

/**
 * The batch row for one message. A message that is not a JSON object (a record the producer could not
 * split, or something another producer wrote), or whose value or provenance headers cannot be read, keeps its
 * raw text in _raw and says why in _error. Never throws: whatever a message holds becomes a row.
 */
export function messageToRow(message: KafkaMessage, topic: string, partition: number): BatchRow {
  const { meta, problems } = metaOf(message, topic, partition);
  const value = valueText(message.value);
  if (value.problem) problems.push(value.problem);
  const row: BatchRow = byColumn<string | null>();
  if (problems.length > 0) meta._error = problems.join("; ");
  else if (meta._error === null) {
    try {
      if (!fieldsOf(value.text, row)) meta._error = value.text === null ? "message has no value" : "message value is not a JSON object";
    } catch (error) {
      // A JSON value nested too deeply to turn into text, say: the message is rejected, not the consumer.
      for (const key of Object.keys(row)) delete row[key];
      meta._error = `message value cannot be read as fields (${(error as Error).message})`;
    }
  }
  if (meta._error !== null) meta._raw = value.text;
  return Object.assign(row, meta);
}

/** Does a source column mean a Superstore field (in any spelling)? Those get their columns first. */
function isKnown(column: string): boolean {
  const key = normalizeHeader(column);
  return key === ROW_ID_KEY || Object.hasOwn(FIELDS, key);
}

/**
 * The source columns of a batch file: in order of first appearance, at most MAX_SOURCE_COLUMNS, columns that
 * mean a Superstore field chosen before others. `overflow` is true when some row has a field left out.
 */
function sourceColumns(rows: readonly BatchRow[]): { columns: string[]; overflow: boolean } {
  const seen = new Set<string>();
  for (const row of rows) for (const key of Object.keys(row)) if (!RESERVED.has(key)) seen.add(key);
  if (seen.size <= MAX_SOURCE_COLUMNS) return { columns: [...seen], overflow: false };
  const known = [...seen].filter(isKnown).slice(0, MAX_SOURCE_COLUMNS);
  const chosen = new Set(known);
  for (const key of seen) {
    if (chosen.size >= MAX_SOURCE_COLUMNS) break;
    chosen.add(key);
  }
  return { columns: [...seen].filter((key) => chosen.has(key)), overflow: true };
}

/**
 * A batch file's columns and rows: the source columns (see sourceColumns), then _extra when some row has
 * fields beyond them (those fields as one JSON object per row), then the meta columns. A file is therefore
 * at most MAX_SOURCE_COLUMNS + 10 columns wide however many distinct fields its messages hold.
 */
export function batchLayout(rows: readonly BatchRow[]): { columns: string[]; rows: readonly CsvRow[] } {
  const { columns, overflow } = sourceColumns(rows);
  if (!overflow) return { columns: [...columns, ...META_COLUMNS], rows };
  const chosen = new Set(columns);
  const laid = rows.map((row) => {
    const out: CsvRow = byColumn<string | null>();
    const extra = byColumn<string | null>();
    let any = false;
    for (const key of Object.keys(row)) {
      if (chosen.has(key) || RESERVED.has(key)) out[key] = row[key];
      else {
        extra[key] = row[key] ?? null;
        any = true;
      }
    }
    out[EXTRA_COLUMN] = any ? JSON.stringify(extra) : null;
    return out;
  });
  return { columns: [...columns, EXTRA_COLUMN, ...META_COLUMNS], rows: laid };
}

/** The columns batchLayout gives a batch file of these rows. */
export function batchColumns(rows: readonly BatchRow[]): string[] {
  return batchLayout(rows).columns;
}

/** The rows of one batch file: one partition's consecutive offsets first..last. */
export interface Batch {
  readonly partition: number;
  readonly first: bigint;
  readonly last: bigint;
  readonly rows: readonly BatchRow[];
}

interface Buffer {
  rows: BatchRow[];
  first: bigint;
  last: bigint;
  /** when the first row was added (ms, any clock) */
  opened: number;
  /** when the last row was added (ms, the same clock) */
  touched: number;
}

export class Batcher {
  private readonly buffers = new Map<number, Buffer>();

  /**
   * A partition's rows become a batch at `batchSize` rows, after `quietMs` without a new row, or once its first
   * row has waited `maxAgeMs`, whichever comes first.
   */
  constructor(
    private readonly batchSize: number,
    private readonly quietMs: number,
    private readonly maxAgeMs: number = Infinity,
  ) {}

  /** Adds a row; returns the partition's batch when it is full. */
  add(partition: number, offset: bigint, row: BatchRow, now: number): Batch | undefined {
    let buffer = this.buffers.get(partition);
    // An offset at or before the buffered ones: fetched again from the committed offset (after a rebalance or
    // a failed commit). What is buffered arrives again too: start over.
    if (buffer && offset <= buffer.last) buffer = undefined;
    if (!buffer) {
      buffer = { rows: [], first: offset, last: offset, opened: now, touched: now };
      this.buffers.set(partition, buffer);
    }
    buffer.rows.push(row);
    buffer.last = offset;
    buffer.touched = now;
    return buffer.rows.length >= this.batchSize ? this.take(partition) : undefined;
  }

  /** Partial batches whose partition has been quiet for quietMs, or whose first row has waited maxAgeMs. */
  due(now: number): Batch[] {
    const ready = [...this.buffers].filter(([, b]) => now - b.touched >= this.quietMs || now - b.opened >= this.maxAgeMs).map(([p]) => p);
    return ready.map((p) => this.take(p)!);
  }

  /** Every buffered batch (shutdown). */
  drain(): Batch[] {
    return [...this.buffers.keys()].map((p) => this.take(p)!);
  }

  /** Forgets everything buffered: after a rebalance or a crash those records are read again. */
  clear(): void {
    this.buffers.clear();
  }

  /** Rows buffered for a partition (0 when none). */
  buffered(partition: number): number {
    return this.buffers.get(partition)?.rows.length ?? 0;
  }

  get empty(): boolean {
    return this.buffers.size === 0;
  }

  /** The partition's buffered rows as a batch now, whatever their number (before a gap in its offsets). */
  take(partition: number): Batch | undefined {
    const buffer = this.buffers.get(partition);
    if (!buffer) return undefined;
    this.buffers.delete(partition);
    return { partition, first: buffer.first, last: buffer.last, rows: buffer.rows };
  }
}
