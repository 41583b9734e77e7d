// The consumer's batching, without Kafka: messages become batch rows, rows collect per partition, and a
// partition's rows are handed out as one batch file when BATCH_SIZE is reached, when the partition has been
// quiet for a while, or when everything is drained at shutdown. Pure state, unit-tested on its own; the
// consumer script does the I/O (writing files, committing offsets).

import type { IHeaders, KafkaMessage } from "kafkajs";
import { META_COLUMNS, type MetaColumn } from "./batch.ts";
import { byColumn } from "./csv.ts";

/** One row of a batch file: the source fields as received, then where the row came from. */
export type BatchRow = Record<string, string | null> & Partial<Record<MetaColumn, string | null>>;

function header(headers: IHeaders | undefined, name: string): string | undefined {
  const value = headers?.[name];
  if (value === undefined) return undefined;
  const one = Array.isArray(value) ? value[0] : value;
  return one === undefined ? undefined : one.toString();
}

function text(value: unknown): string | null {
  if (value === null || value === undefined) return null;
  if (typeof value === "string") return value;
  if (typeof value === "number" || typeof value === "boolean" || typeof value === "bigint") return String(value);
  return JSON.stringify(value);
}

const META_NAMES: ReadonlySet<string> = new Set(META_COLUMNS);

/**
 * The batch row for one message. A message that is not a JSON object (a record the producer could not
 * split, or something another producer wrote) keeps its raw text in _raw and says why in _error.
 */
export function messageToRow(message: KafkaMessage, topic: string, partition: number): BatchRow {
  const value = message.value?.toString("utf8") ?? null;
  const row: BatchRow = byColumn<string | null>();
  const meta: Record<MetaColumn, string | null> = {
    _source_file: header(message.headers, "source_file") ?? null,
    _source_line: header(message.headers, "source_line") ?? null,
    _source_lines: header(message.headers, "source_lines") ?? null,
    _topic: topic,
    _partition: String(partition),
    _offset: message.offset,
    _timestamp: new Date(Number(message.timestamp)).toISOString(),
    _error: header(message.headers, "parse_error") ?? null,
    _raw: null,
  };
  if (meta._error === null) {
    let parsed: unknown;
    try {
      parsed = value === null ? undefined : JSON.parse(value);
    } catch {
      parsed = undefined;
    }
    if (parsed !== null && typeof parsed === "object" && !Array.isArray(parsed)) {
      const fields = parsed as Record<string, unknown>;
      // for...in over a JSON.parse result: its own keys, in order (Object.prototype has none enumerable).
      for (const key in fields) {
        // A source column named like one of ours would be overwritten below; keep it under a safe name.
        row[META_NAMES.has(key) ? `source${key}` : key] = text(fields[key]);
      }
    } else {
      meta._error = value === null ? "message has no value" : "message value is not a JSON object";
    }
  }
  if (meta._error !== null) meta._raw = value;
  return Object.assign(row, meta);
}

/** Source columns in order of first appearance, then the meta columns. */
export function batchColumns(rows: readonly BatchRow[]): string[] {
  const columns = new Set<string>();
  for (const row of rows) for (const key of Object.keys(row)) columns.add(key);
  for (const meta of META_COLUMNS) columns.delete(meta);
  return [...columns, ...META_COLUMNS];
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
  /** when the last row was added (ms, any clock) */
  touched: number;
}

export class Batcher {
  private readonly buffers = new Map<number, Buffer>();

  constructor(
    private readonly batchSize: number,
    private readonly quietMs: number,
  ) {}

  /** Adds a row; returns the partition's batch when it is full. */
  add(partition: number, offset: bigint, row: BatchRow, now: number): Batch | undefined {
    let buffer = this.buffers.get(partition);
    // An offset at or before the buffered ones: fetched again from the committed offset (after a rebalance or
    // a failed commit). What is buffered arrives again too: start over.
    if (buffer && offset <= buffer.last) buffer = undefined;
    if (!buffer) {
      buffer = { rows: [], first: offset, last: offset, touched: now };
      this.buffers.set(partition, buffer);
    }
    buffer.rows.push(row);
    buffer.last = offset;
    buffer.touched = now;
    return buffer.rows.length >= this.batchSize ? this.take(partition) : undefined;
  }

  /** Partial batches whose partition has been quiet for quietMs. */
  due(now: number): Batch[] {
    const ready = [...this.buffers].filter(([, b]) => now - b.touched >= this.quietMs).map(([p]) => p);
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

  private take(partition: number): Batch | undefined {
    const buffer = this.buffers.get(partition);
    if (!buffer) return undefined;
    this.buffers.delete(partition);
    return { partition, first: buffer.first, last: buffer.last, rows: buffer.rows };
  }
}
