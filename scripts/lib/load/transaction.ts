// The database side of a load: one transaction for a group of prepared batch files, with each file's ledger
// row in the same transaction, so a file is either loaded with all its rows or not at all, and loading it again
// is a no-op.
//
// Rules, per record (identity = source file + Row ID):
// - not in orders, cleans  -> inserted; an open rejection of the same Row ID or line is marked resolved; when a
//   row of another source with the same Row ID and the same values (row_hash) loaded before, it is inserted
//   marked with that source (orders.same_as_source), counted as cross_source, and the loader warns
// - in orders, same values -> duplicate (nothing changes)
// - in orders, other values, or broken while its identity is loaded -> a "conflict" in rejected_rows, kept for
//   audit; orders keeps the row that loaded first
// - broken, not loaded     -> an "open" rejection (the latest version of the line replaces an older one)
//
// Before commit, each file's count is checked: inserted (as COPY reports it) + duplicates + rejected (as the
// insert reports it) = the data records the file holds, and the ledger row is written only if the statement
// still runs in the transaction that began the load. A committed file therefore never lies about its rows.
// A gap file's ranges of lost offsets go to lost_offsets in the same transaction as its ledger row.
// The commit is announced with NOTIFY sales_loaded, for the live dashboard. Loaders take turns through the row of
// loader_lock (lock.ts).

import type { LostRange } from "../batch.ts";
import { collectGarbage } from "../memory.ts";
import { copyIn, isDataError, type Database, type TransactionSql } from "../db.ts";
import { LOCK_WAIT_MS, LoaderLockTimeout, loaderLockError, takeLoaderLock } from "./lock.ts";
import { CHUNK_CHARS, CHUNK_RECORDS, copyLine, identity, ORDER_COLUMNS, type Candidate, type CheckedFile, type Chunk, type OrderRow, type RejectedRow } from "./read.ts";

/** The channel the loader announces commits on (LISTEN sales_loaded). */
export const LOADED_CHANNEL = "sales_loaded";

/** postgres.js sends one parameter per value; a statement holds at most 65,535. */
const MAX_PARAMETERS = 65_000;

const USER_COLUMNS = ["customer_id", "customer_name", "segment", "country", "city", "state", "postal_code", "region", "market"];
const PRODUCT_COLUMNS = ["product_id", "category", "sub_category", "product_name"];
const LATEST_COLUMNS = ["latest_order_date", "latest_source_row_id", "latest_source_file"];
const REJECTED_COLUMNS: (keyof RejectedRow | "status")[] = [
  "source_file",
  "source_line",
  "source_lines",
  "source_row_id",
  "status",
  "reason",
  "fields",
  "raw_text",
  "kafka_topic",
  "kafka_partition",
  "kafka_offset",
  "batch_file",
];

/** A row inserted although a row of another source with the same Row ID and values loaded before it. */
export interface SameAs {
  /** the inserted row: its source and line */
  readonly source: string;
  readonly line: number;
  readonly rowId: number;
  /** the row loaded before: its source and line */
  readonly first: { readonly source: string; readonly line: number };
}

export interface FileResult {
  readonly name: string;
  readonly status: "loaded" | "already-loaded";
  readonly records: number;
  readonly inserted: number;
  readonly duplicates: number;
  /** rows recorded in rejected_rows by this file: open rejections and conflicts */
  readonly rejected: number;
  /** inserted rows that break a plausibility rule and carry a warning */
  readonly warnings: number;
  /** open rejections this file resolved with a corrected row */
  readonly resolved: number;
  /** inserted rows whose Row ID and values a row of another source has (orders.same_as_source) */
  readonly crossSource: readonly SameAs[];
  /** what went to rejected_rows, for the rejects file people read */
  readonly rejections: readonly RejectedRow[];
  /** ranges of lost offsets recorded in lost_offsets (a gap file) */
  readonly lost: readonly LostRange[];
}

/** Thrown when a file's counts do not add up before commit; nothing of the transaction is kept. */
export class LedgerMismatchError extends Error {
  override name = "LedgerMismatchError";
}

/** Byte order of UTF-8, the order of PostgreSQL's "C" collation, so JS and SQL agree on ties. */
function compareC(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

/** Is `a` a later order than `b`? By order date, then Row ID, then source file: a total order. */
export function isLater(a: OrderRow, b: OrderRow): boolean {
  if (a.order_date !== b.order_date) return String(a.order_date) > String(b.order_date);
  if (a.source_row_id !== b.source_row_id) return Number(a.source_row_id) > Number(b.source_row_id);
  return compareC(String(a.source_file), String(b.source_file)) > 0;
}

/** The latest row per id, for the users / products upserts (one row per id per statement). */
export function latestBy(rows: readonly OrderRow[], id: "customer_id" | "product_id"): OrderRow[] {
  const latest = new Map<unknown, OrderRow>();
  for (const row of rows) {
    const seen = latest.get(row[id]);
    if (!seen || isLater(row, seen)) latest.set(row[id], row);
  }
  return [...latest.values()];
}

/** Columns of orders a load writes: the row's own, then the source whose row it repeats (null for most). */
export const COPY_COLUMNS = [...ORDER_COLUMNS, "same_as_source"];

/** COPY text for candidates (COPY_COLUMNS), made as it is sent, a few hundred lines per chunk. */
export function* copyChunks(candidates: readonly Candidate[], sameAs: ReadonlyMap<Candidate, SameAs> = new Map()): Generator<string> {
  for (let i = 0; i < candidates.length; i += 500) {
    yield candidates
      .slice(i, i + 500)
      .map((c) => copyLine(c.row, sameAs.get(c)?.first.source ?? null))
      .join("");
  }
}

function chunks<T>(rows: readonly T[], columns: number): T[][] {
  const size = Math.max(1, Math.floor(MAX_PARAMETERS / columns));
  const out: T[][] = [];
  for (let i = 0; i < rows.length; i += size) out.push(rows.slice(i, i + size));
  return out;
}

function latestValues(row: OrderRow, columns: readonly string[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const column of columns) out[column] = row[column as keyof OrderRow];
  out.latest_order_date = row.order_date;
  out.latest_source_row_id = row.source_row_id;
  out.latest_source_file = row.source_file;
  return out;
}

/** Types of the dimension columns that are not text, for the arrays the upsert unnests. */
const COLUMN_TYPES: Readonly<Record<string, string>> = { latest_order_date: "date", latest_source_row_id: "bigint" };

/**
 * Upserts one row per id into a dimension table (users, products) with the values of that id's latest order
 * in `rows`, unless the table already holds a later one. "Later" is (order date, Row ID, source file) in
 * PostgreSQL's "C" order, the same rule as isLater, so the result does not depend on the order of files.
 * The rows go as one array per column: one short statement however many rows, not one parameter per value.
 */
async function upsertLatest(
  tx: TransactionSql,
  table: "users" | "products",
  id: "customer_id" | "product_id",
  columns: readonly string[],
  rows: readonly OrderRow[],
): Promise<void> {
  const all = [...columns, ...LATEST_COLUMNS];
  const latest = latestBy(rows, id).map((r) => latestValues(r, columns));
  const arrays = all.map((c, i) => `$${i + 1}::${COLUMN_TYPES[c] ?? "text"}[]`);
  const set = all.filter((c) => c !== id).map((c) => `${c} = excluded.${c}`);
  await tx.unsafe(
    `insert into ${table} (${all.join(", ")}) select * from unnest(${arrays.join(", ")})
     on conflict (${id}) do update set ${set.join(", ")}, updated_at = now()
     where (${table}.latest_order_date, ${table}.latest_source_row_id, ${table}.latest_source_file collate "C")
         < (excluded.latest_order_date, excluded.latest_source_row_id, excluded.latest_source_file collate "C")`,
    all.map((c) => latest.map((r) => r[c] ?? null)) as never[],
  );
}

interface Loaded {
  line: number;
  hash: string | null;
}

/** A rejection already recorded for a line: what it held, and whether the line has loaded since. */
interface Recorded {
  content: string;
  resolved: boolean;
}

/**
 * The lines a group's inserted rows span, per source file, as numbers: a line whose recorded rejections are
 * looked up after a row spanning it was inserted (in an earlier chunk) must see them as resolved, as a row
 * inserted earlier in the same chunk makes them.
 */
class Spans {
  private starts: number[] = [];
  private ends: number[] = [];
  private sorted = true;
  private widest = 1;

  add(line: number, lines: number): void {
    if (this.starts.length > 0 && line < this.starts[this.starts.length - 1]!) this.sorted = false;
    this.starts.push(line);
    this.ends.push(line + lines);
    this.widest = Math.max(this.widest, lines);
  }

  covers(line: number): boolean {
    if (!this.sorted) this.sort();
    const { starts, ends } = this;
    let lo = 0;
    let hi = starts.length;
    const from = line - this.widest + 1;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (starts[mid]! < from) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo; i < starts.length && starts[i]! <= line; i++) if (ends[i]! > line) return true;
    return false;
  }

  private sort(): void {
    const order = this.starts.map((_, i) => i).sort((a, b) => this.starts[a]! - this.starts[b]!);
    this.starts = order.map((i) => this.starts[i]!);
    this.ends = order.map((i) => this.ends[i]!);
    this.sorted = true;
  }
}

/**
 * What a group's transaction keeps from one chunk to the next: only what judging later records needs that the
 * database does not say by itself. Rows inserted by earlier chunks are in orders (the transaction sees them);
 * recorded rejections, once looked up, are judged here as the group goes on.
 */
interface GroupState {
  /** source file + line -> rejections recorded for it, for lines with a rejection in the group */
  readonly recorded: Map<string, Recorded[]>;
  /** source file -> the lines of the group's inserted rows */
  readonly spans: Map<string, Spans>;
  /** candidates PostgreSQL refused row by row: judged as loaded by the records after them, as in one plan */
  readonly refused: Map<string, Loaded>;
  /** source file -> whether it may have open rejections (looked up once, set when one is recorded) */
  readonly open: Map<string, boolean>;
}

function groupState(): GroupState {
  return { recorded: new Map(), spans: new Map(), refused: new Map(), open: new Map() };
}

/** What the database knows about a chunk's rows, looked up through indexes only. */
interface Known {
  /** identity -> the row in orders */
  readonly loaded: Map<string, Loaded>;
  /** source file + line -> rejections recorded for it (the group's) */
  readonly recorded: Map<string, Recorded[]>;
  /** Row ID + row_hash -> the source and line of the first row loaded with them (sameValues) */
  readonly firsts: Map<string, { source: string; line: number }>;
  readonly spans: Map<string, Spans>;
}

/** A row's own values: its Row ID and the fingerprint of every cleaned value (which holds no Row ID). */
const sameValues = (row: OrderRow) => `${String(row.row_hash)}\u0000${String(row.source_row_id)}`;

/**
 * For candidates whose identity is new: the first row of orders with the same Row ID and values, from another
 * source (the identity is new, so any such row is another source's). One probe of orders_same_values per key,
 * except for rows of the one source file orders holds rows of, if it holds only one (two probes of an index's
 * ends say so): no other source can have their values then.
 */
async function lookUpFirsts(
  tx: TransactionSql,
  candidates: readonly Candidate[],
  loaded: ReadonlyMap<string, Loaded>,
  held: { lo: string | null; hi: string | null } | undefined,
): Promise<Known["firsts"]> {
  const firsts: Known["firsts"] = new Map();
  const fresh = candidates.filter((c) => !loaded.has(c.key));
  if (fresh.length === 0 || held?.lo == null) return firsts;
  const only = held.lo === held.hi ? held.lo : undefined;
  const keys = [...new Map(fresh.filter((c) => c.row.source_file !== only).map((c) => [sameValues(c.row), c.row])).values()];
  for (const part of chunks(keys, 2)) {
    const rows = await tx<{ i: string; source_file: string; source_line: number }[]>`
      select k.i::text, o.source_file, o.source_line
      from unnest(${part.map((r) => String(r.row_hash))}::text[], ${part.map((r) => Number(r.source_row_id))}::bigint[]) with ordinality as k (h, r, i)
      cross join lateral (
        select source_file, source_line from orders
        where row_hash = k.h and source_row_id = k.r
        order by row_id
        limit 1
      ) o
    `;
    for (const r of rows) firsts.set(sameValues(part[Number(r.i) - 1]!), { source: r.source_file, line: r.source_line });
  }
  return firsts;
}

/** The first and last source file orders holds rows of (null for none): two probes of the identity index's ends. */
async function sourcesInOrders(tx: TransactionSql): Promise<{ lo: string | null; hi: string | null } | undefined> {
  const [held] = await tx<{ lo: string | null; hi: string | null }[]>`
    select (select min(source_file) from orders) as lo, (select max(source_file) from orders) as hi
  `;
  return held;
}

/** The content of a rejected line as received: equal for the same line sent again. */
function content(row: { fields: Record<string, string> | null; raw_text: string | null }): string {
  const fields = row.fields === null ? null : Object.entries(row.fields).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return JSON.stringify([fields, row.raw_text]);
}

const lineKey = (file: string, line: number) => identity(file, `line ${line}`);

type Key = { file: string; rowId: number };

/**
 * Source files of `keys` whose Row ID range holds any row of orders: one probe of the identity index per source
 * file. A chunk of new rows (the usual case) needs no probe per row then.
 */
async function sourcesHeld(tx: TransactionSql, keys: readonly Key[]): Promise<Set<string>> {
  const ranges = new Map<string, { lo: number; hi: number }>();
  for (const { file, rowId } of keys) {
    const range = ranges.get(file);
    if (range === undefined) ranges.set(file, { lo: rowId, hi: rowId });
    else [range.lo, range.hi] = [Math.min(range.lo, rowId), Math.max(range.hi, rowId)];
  }
  if (ranges.size === 0) return new Set();
  const [files, los, his] = [[...ranges.keys()], [...ranges.values()].map((r) => r.lo), [...ranges.values()].map((r) => r.hi)];
  const rows = await tx<{ f: string }[]>`
    select k.f from unnest(${files}::text[], ${los}::bigint[], ${his}::bigint[]) as k (f, lo, hi)
    where exists (select from orders where source_file = k.f and source_row_id between k.lo and k.hi)
  `;
  return new Set(rows.map((r) => r.f));
}

/** The rows of orders with the identities of `keys` (the group's refused rows too). */
async function lookUpLoaded(tx: TransactionSql, keys: readonly Key[], state: GroupState): Promise<Map<string, Loaded>> {
  const loaded = new Map(state.refused);
  const held = await sourcesHeld(tx, keys);
  const probe = keys.filter((k) => held.has(k.file));
  // A chunk's rows come from a few source files: each key names its file by number, not by its name again.
  const sources = [...held];
  const number = new Map(sources.map((file, i) => [file, i + 1]));
  for (const part of chunks(probe, 2)) {
    // One probe of the identity index per key, whatever the sizes: a subquery with a limit is not merged into
    // a join, which the planner would run as a hash join reading all of orders once the batch is a tenth of
    // the table. The same below for rejected lines.
    const rows = await tx<{ source_file: string; source_row_id: string; source_line: number; row_hash: string | null }[]>`
      select o.source_file, o.source_row_id, o.source_line, o.row_hash
      from unnest(${part.map((k) => number.get(k.file)!)}::int[], ${part.map((k) => k.rowId)}::bigint[]) as k (i, r)
      cross join lateral (
        select source_file, source_row_id, source_line, row_hash from orders
        where source_file = (${sources}::text[])[k.i] and source_row_id = k.r
        limit 1
      ) o
    `;
    for (const r of rows) loaded.set(identity(r.source_file, r.source_row_id), { line: r.source_line, hash: r.row_hash });
  }
  return loaded;
}

/**
 * Rejections recorded for the chunk's rejected lines the group has not looked up yet, into state.recorded. A
 * rejection this transaction resolved counts as open (as it was when the group began), unless a row the group
 * inserted spans its line.
 */
async function lookUpRecorded(tx: TransactionSql, rejected: readonly RejectedRow[], state: GroupState): Promise<void> {
  const lines = [...new Map(rejected.map((r) => [lineKey(r.source_file, r.source_line), { file: r.source_file, line: r.source_line }])).entries()]
    .filter(([key]) => !state.recorded.has(key))
    .map(([, line]) => line);
  const found = new Map<string, Recorded[]>();
  for (const part of chunks(lines, 2)) {
    const rows = await tx<{ source_file: string; source_line: number; resolved: boolean; fields: Record<string, string> | null; raw_text: string | null }[]>`
      select r.source_file, r.source_line, r.resolved, r.fields, r.raw_text
      from unnest(${part.map((k) => k.file)}::text[], ${part.map((k) => k.line)}::int[]) as k (f, l)
      cross join lateral (
        select source_file, source_line, status = 'resolved' and resolved_at is distinct from now() as resolved, fields, raw_text
        from rejected_rows
        where source_file = k.f and source_line = k.l
        offset 0
      ) r
    `;
    for (const r of rows) {
      const key = lineKey(r.source_file, r.source_line);
      found.set(key, [...(found.get(key) ?? []), { content: content(r), resolved: r.resolved }]);
    }
  }
  for (const { file, line } of lines) {
    const recorded = found.get(lineKey(file, line)) ?? [];
    const spanned = state.spans.get(file)?.covers(line) === true;
    state.recorded.set(lineKey(file, line), spanned ? recorded.map((r) => ({ ...r, resolved: true })) : recorded);
  }
}

/** What the database knows about the records of a round's chunks (of one file or several). */
async function lookUp(tx: TransactionSql, chunks: readonly Chunk[], state: GroupState): Promise<Known> {
  const candidates = chunks.length === 1 ? chunks[0]!.candidates : chunks.flatMap((c) => c.candidates);
  const rejected = chunks.length === 1 ? chunks[0]!.rejected : chunks.flatMap((c) => c.rejected);
  const keys: Key[] = [
    ...candidates.map((c) => ({ file: String(c.row.source_file), rowId: Number(c.row.source_row_id) })),
    ...rejected.filter((r) => r.source_row_id !== null).map((r) => ({ file: r.source_file, rowId: r.source_row_id! })),
  ];
  // Sent together: one wait for the server, not one per statement (the next round is cleaned meanwhile).
  const [loaded, held] = await Promise.all([lookUpLoaded(tx, keys, state), sourcesInOrders(tx), lookUpRecorded(tx, rejected, state)]);
  return { loaded, recorded: state.recorded, firsts: await lookUpFirsts(tx, candidates, loaded, held), spans: state.spans };
}

interface Plan {
  readonly name: string;
  readonly fresh: Candidate[];
  readonly rejections: (RejectedRow & { status: "open" | "conflict" })[];
  duplicates: number;
  /** fresh rows that repeat a row of another source, and which */
  readonly sameAs: Map<Candidate, SameAs>;
}

/**
 * Sorts a chunk's records into inserts, rejections and duplicates, in the order of the file, against what is
 * known (updated as it goes): two versions of a line in one file end as they would in two runs.
 */
function plan(name: string, chunk: Chunk, known: Known): Plan {
  const result: Plan = { name, fresh: [], rejections: [], duplicates: chunk.duplicates, sameAs: new Map() };
  const stays = (line: number) => `; the row loaded from line ${line} stays in orders`;
  for (const item of chunk.sequence) {
    if ("key" in item) planCandidate(item, name, known, result, stays);
    else planRejected(item, known, result, stays);
  }
  return result;
}

function planCandidate(candidate: Candidate, batchFile: string, known: Known, result: Plan, stays: (line: number) => string): void {
  const { row } = candidate;
  const at = known.loaded.get(candidate.key);
  if (at === undefined) {
    result.fresh.push(candidate);
    known.loaded.set(candidate.key, { line: Number(row.source_line), hash: row.row_hash as string });
    noteSameValues(candidate, known, result);
    const source = String(row.source_file);
    const spans = known.spans.get(source) ?? known.spans.set(source, new Spans()).get(source)!;
    spans.add(Number(row.source_line), candidate.lines);
    // This insert resolves the open rejections of the lines it spans, also those an earlier file of the group
    // recorded: records after it must see the line as loaded, as they would in a later run.
    for (let n = 0; n < candidate.lines; n++) {
      const line = lineKey(String(row.source_file), Number(row.source_line) + n);
      const recorded = known.recorded.get(line);
      if (recorded) known.recorded.set(line, recorded.map((r) => ({ ...r, resolved: true })));
    }
  } else if (at.hash === null || at.hash === row.row_hash) result.duplicates++;
  else {
    result.rejections.push(candidateRejection(candidate, batchFile, "conflict", `Row ID ${row.source_row_id} is already loaded with other values${stays(at.line)}`));
  }
}

/**
 * A new row whose Row ID and values a row of another source has (loaded before, or earlier in this group) is
 * inserted all the same, and noted; the first row with them is remembered for the rows after it.
 */
function noteSameValues(candidate: Candidate, known: Known, result: Plan): void {
  const { row } = candidate;
  const values = sameValues(row);
  const first = known.firsts.get(values);
  if (first === undefined) known.firsts.set(values, { source: String(row.source_file), line: Number(row.source_line) });
  else if (first.source !== row.source_file) {
    result.sameAs.set(candidate, { source: String(row.source_file), line: Number(row.source_line), rowId: Number(row.source_row_id), first });
  }
}

/** A rejection of a candidate, with the fields as the source had them. */
function candidateRejection<S extends "open" | "conflict">(candidate: Candidate, batchFile: string, status: S, reason: string): RejectedRow & { status: S } {
  const { row, fields } = candidate;
  return {
    status,
    source_file: String(row.source_file),
    source_line: Number(row.source_line),
    source_lines: candidate.lines,
    source_row_id: Number(row.source_row_id),
    reason,
    fields,
    raw_text: null,
    kafka_topic: row.kafka_topic as string | null,
    kafka_partition: row.kafka_partition as number | null,
    kafka_offset: row.kafka_offset as string | null,
    batch_file: batchFile,
  };
}

function planRejected(rejected: RejectedRow, known: Known, result: Plan, stays: (line: number) => string): void {
  const key = lineKey(rejected.source_file, rejected.source_line);
  const before = known.recorded.get(key) ?? [];
  const same = content(rejected);
  // The same broken line again (a re-sent file, a replayed topic): recorded already.
  if (before.some((r) => r.content === same)) {
    result.duplicates++;
    return;
  }
  known.recorded.set(key, [...before, { content: same, resolved: false }]);
  const at = rejected.source_row_id === null ? undefined : known.loaded.get(identity(rejected.source_file, rejected.source_row_id));
  if (at !== undefined) result.rejections.push({ ...rejected, status: "conflict", reason: `${rejected.reason}${stays(at.line)}` });
  else if (before.some((r) => r.resolved)) {
    result.rejections.push({ ...rejected, status: "conflict", reason: `${rejected.reason}; this line has loaded since it was first rejected` });
  } else result.rejections.push({ ...rejected, status: "open" });
}

/**
 * Records rejections: a new line is inserted; a line whose current rejection (open or conflict) held other
 * content is updated to the latest version. Returns how many rows were written.
 */
async function recordRejections(tx: TransactionSql, rows: readonly Plan["rejections"][number][], fileLines: Map<string, bigint>): Promise<number> {
  // One version per line and statement (ON CONFLICT cannot change a row twice in one statement): two versions
  // of a line in one file, the later one (by Kafka offset) is kept, as a later file's would replace it, also
  // when an earlier chunk of the file wrote the other (`fileLines`: line -> offset written). All count as rejected.
  const latest = new Map<string, Plan["rejections"][number]>();
  for (const row of rows) {
    const key = lineKey(row.source_file, row.source_line);
    const seen = latest.get(key);
    const written = fileLines.get(key);
    if ((!seen || !(offsetOf(row) < offsetOf(seen))) && !(written !== undefined && offsetOf(row) < written)) latest.set(key, row);
  }
  let written = rows.length - latest.size;
  for (const [key, row] of latest) fileLines.set(key, offsetOf(row));
  for (const part of chunks([...latest.values()], REJECTED_COLUMNS.length)) {
    const changed = await tx`
      insert into rejected_rows ${tx(part as unknown as Record<string, never>[], REJECTED_COLUMNS as string[])}
      on conflict (source_file, source_line) where status in ('open', 'conflict') do update set
        status = excluded.status, reason = excluded.reason, fields = excluded.fields, raw_text = excluded.raw_text,
        source_row_id = excluded.source_row_id, source_lines = excluded.source_lines, kafka_topic = excluded.kafka_topic,
        kafka_partition = excluded.kafka_partition, kafka_offset = excluded.kafka_offset, batch_file = excluded.batch_file,
        rejected_at = now()
      returning 1
    `;
    written += changed.length;
  }
  return written;
}

/** A rejection's Kafka offset, for ordering versions of one line; -1 when it has none. */
function offsetOf(row: RejectedRow): bigint {
  return row.kafka_offset === null ? -1n : BigInt(row.kafka_offset);
}

/**
 * Records a gap file's ranges in lost_offsets. A range found again from the same first offset (a consumer
 * that stopped before committing past it, while retention moved on) is the same row, widened.
 */
async function recordLost(tx: TransactionSql, ranges: readonly LostRange[], gapFile: string): Promise<void> {
  for (const r of ranges) {
    await tx`
      insert into lost_offsets (consumer_group, kafka_topic, kafka_partition, first_offset, last_offset, kind, reason, gap_file)
      values (${r.group}, ${r.topic}, ${r.partition}, ${r.first.toString()}, ${r.last === null ? null : r.last.toString()}, ${r.kind}, ${r.reason}, ${gapFile})
      on conflict (consumer_group, kafka_topic, kafka_partition, first_offset) do update set
        last_offset = greatest(lost_offsets.last_offset, excluded.last_offset), kind = excluded.kind, reason = excluded.reason,
        gap_file = excluded.gap_file, recorded_at = now()
    `;
  }
}

/** The rows a file inserted, as numbers: what resolving its open rejections needs once the file is recorded. */
class FreshKeys {
  /** each row's source file, as a number: a name read from a chunk would keep that chunk's text alive */
  readonly sources: number[] = [];
  readonly rowIds: number[] = [];
  readonly lines: number[] = [];
  readonly spans: number[] = [];
  private readonly numbers = new Map<string, number>();
  readonly names: string[] = [];

  get files(): string[] {
    return this.sources.map((i) => this.names[i]!);
  }

  add(candidates: readonly Candidate[]): void {
    for (const { row, lines } of candidates) {
      const name = String(row.source_file);
      let number = this.numbers.get(name);
      if (number === undefined) {
        number = this.names.push(name) - 1;
        this.numbers.set(name, number);
      }
      this.sources.push(number);
      this.rowIds.push(Number(row.source_row_id));
      this.lines.push(Number(row.source_line));
      this.spans.push(lines);
    }
  }
}

/** May any rejection still be open for `files`? Most loads have none, and skip resolving. Asked once per source file. */
async function anyOpenRejection(tx: TransactionSql, files: readonly string[], state: GroupState): Promise<boolean> {
  const unknown = [...new Set(files)].filter((f) => !state.open.has(f));
  if (unknown.length > 0) {
    const open = await tx<{ f: string }[]>`
      select k.f from unnest(${unknown}::text[]) as k (f)
      where exists (select from rejected_rows where status = 'open' and source_file = k.f)
    `;
    const found = new Set(open.map((r) => r.f));
    for (const f of unknown) state.open.set(f, found.has(f));
  }
  return files.some((f) => state.open.get(f) === true);
}

/**
 * Marks open rejections resolved by rows now inserted: same source file and Row ID, or a line the row spans
 * (a record broken across lines was rejected line by line).
 */
async function resolveRejections(tx: TransactionSql, fresh: FreshKeys, batchFile: string): Promise<number> {
  let resolved = 0;
  const size = Math.floor(MAX_PARAMETERS / 4);
  const files = fresh.files;
  for (let i = 0; i < files.length; i += size) {
    const part = <T>(values: T[]) => values.slice(i, i + size);
    const done = await tx`
      update rejected_rows r set status = 'resolved', resolved_at = now(), resolved_by = ${batchFile}
      from unnest(${part(files)}::text[], ${part(fresh.rowIds)}::bigint[], ${part(fresh.lines)}::int[], ${part(fresh.spans)}::int[]) as k (f, id, line, lines)
      where r.status = 'open' and r.source_file = k.f
        and (r.source_row_id = k.id or r.source_line between k.line and k.line + k.lines - 1)
      returning 1
    `;
    resolved += done.length;
  }
  return resolved;
}

export interface CommitOptions {
  /**
   * Insert row by row, each under a savepoint, instead of one COPY: a row PostgreSQL refuses becomes one
   * rejection with the server's reason, and the rest of the file loads. Used after a COPY failed on data.
   */
  readonly isolate?: boolean;
  /** how long to wait for the loader lock before giving up with LoaderLockError (default LOCK_WAIT_MS) */
  readonly lockWaitMs?: number;
}

/** The rejection of a row that cleaned but that PostgreSQL refused, with the server's reason. */
function refused(candidate: Candidate, name: string, error: unknown): RejectedRow & { status: "open" } {
  const detail = error as { message?: string; column_name?: string; code?: string };
  const column = detail.column_name ? ` (column ${detail.column_name})` : "";
  const code = detail.code ? ` [${detail.code}]` : "";
  return candidateRejection(candidate, name, "open", `PostgreSQL refused the row: ${detail.message ?? String(error)}${column}${code}`);
}

/** Inserts the plan's new rows one by one under savepoints; those PostgreSQL refuses become rejections. */
async function insertIsolated(tx: TransactionSql, plan: Plan, state: GroupState): Promise<number> {
  const kept: Candidate[] = [];
  for (const candidate of plan.fresh) {
    const { row } = candidate;
    try {
      await tx.savepoint(async (sp) => {
        await upsertLatest(sp, "users", "customer_id", USER_COLUMNS, [row]);
        await upsertLatest(sp, "products", "product_id", PRODUCT_COLUMNS, [row]);
        const values = { ...row, same_as_source: plan.sameAs.get(candidate)?.first.source ?? null };
        await sp`insert into orders ${sp(values as unknown as Record<string, never>, COPY_COLUMNS)}`;
      });
      kept.push(candidate);
    } catch (error) {
      // Only the server's verdict on this row's data makes it a rejection; a cancelled statement, a deadlock or
      // a full disk says nothing about the row: the load stops and is tried again.
      if (!isDataError(error)) throw error;
      plan.rejections.push(refused(candidate, plan.name, error));
      state.refused.set(candidate.key, { line: Number(row.source_line), hash: row.row_hash as string });
    }
  }
  plan.fresh.splice(0, plan.fresh.length, ...kept);
  return kept.length;
}

/** Files of the group whose content the ledger does not hold yet, each content once. */
async function newFiles(tx: TransactionSql, files: readonly CheckedFile[]): Promise<CheckedFile[]> {
  const done = new Set(
    (await tx<{ sha256: string }[]>`select sha256 from loaded_files where sha256 = any(${files.map((f) => f.hash)}::char(64)[])`).map((r) => r.sha256),
  );
  const todo: CheckedFile[] = [];
  const seen = new Set<string>();
  for (const file of files) {
    if (!done.has(file.hash) && !seen.has(file.hash)) todo.push(file);
    seen.add(file.hash);
  }
  return todo;
}

/**
 * Inserts the new rows of a round's plans (one COPY for all, or row by row when isolating) and checks the count
 * the server reports.
 */
async function insertFresh(tx: TransactionSql, plans: readonly Plan[], state: GroupState, options: CommitOptions): Promise<void> {
  if (options.isolate) {
    // What stays in a plan's fresh rows is what was inserted; a refused row is one of its rejections now.
    for (const p of plans) await insertIsolated(tx, p, state);
    return;
  }
  const fresh = plans.length === 1 ? plans[0]!.fresh : plans.flatMap((p) => p.fresh);
  if (fresh.length === 0) return;
  const rows = fresh.map((c) => c.row);
  // users and products first: orders refers to them. Sent together: one wait for the server, not two.
  await Promise.all([
    upsertLatest(tx, "users", "customer_id", USER_COLUMNS, rows),
    upsertLatest(tx, "products", "product_id", PRODUCT_COLUMNS, rows),
  ]);
  // COPY: the rows are known to be new (checked under the loader lock), and COPY is the fast way in.
  const sameAs = plans.length === 1 ? plans[0]!.sameAs : new Map(plans.flatMap((p) => [...p.sameAs]));
  const inserted = await copyIn(tx`copy orders (${tx(COPY_COLUMNS)}) from stdin`, copyChunks(fresh, sameAs));
  if (inserted !== fresh.length) {
    const names = [...new Set(plans.map((p) => p.name))];
    const files = names.length === 1 ? names[0] : `${names[0]} and ${names.length - 1} more files`;
    throw new LedgerMismatchError(`${files}: COPY stored ${inserted} rows where ${fresh.length} were sent; nothing was committed`);
  }
}

/** What a file's chunks added up to, for its result and the check of its counts. */
interface FileTally {
  inserted: number;
  duplicates: number;
  rejected: number;
  warnings: number;
  records: number;
  readonly rejections: RejectedRow[];
  readonly crossSource: SameAs[];
  readonly fresh: FreshKeys;
  /** lines whose rejection this file wrote, with the offset of the version written */
  readonly lines: Map<string, bigint>;
}

function fileTally(): FileTally {
  return { inserted: 0, duplicates: 0, rejected: 0, warnings: 0, records: 0, rejections: [], crossSource: [], fresh: new FreshKeys(), lines: new Map() };
}

/** A chunk of one of the group's files (by its place in the group), or, without a chunk, the end of that file. */
interface Part {
  readonly file: number;
  readonly chunk?: Chunk;
}

/** Chunks loaded together: of several small files, or one chunk of a big one. */
interface Round {
  readonly parts: Part[];
  records: number;
  chars: number;
}

/**
 * The chunks of the group's files in order, gathered into rounds of at most CHUNK_RECORDS records and CHUNK_CHARS
 * characters (a single chunk may pass the characters a little): small files share a round, a big one takes a
 * round per chunk. A file's end comes after its last chunk, once its content was checked again.
 */
async function* roundsOf(files: readonly CheckedFile[]): AsyncGenerator<Round> {
  let round: Round = { parts: [], records: 0, chars: 0 };
  const take = (): Round => [round, (round = { parts: [], records: 0, chars: 0 })][0]!;
  for (const [file, checked] of files.entries()) {
    for await (const chunk of checked.chunks()) {
      if (round.chars > 0 && (round.records + chunk.records > CHUNK_RECORDS || round.chars + chunk.chars > CHUNK_CHARS)) yield take();
      round.parts.push({ file, chunk });
      round.records += chunk.records;
      round.chars += chunk.chars;
      if (round.records >= CHUNK_RECORDS || round.chars >= CHUNK_CHARS) yield take();
    }
    round.parts.push({ file });
  }
  if (round.parts.length > 0) yield take();
}

/** What loading a group's files shares from one round to the next. */
interface GroupLoad {
  readonly files: readonly CheckedFile[];
  readonly state: GroupState;
  readonly options: CommitOptions;
  /** per file of the group, while it loads */
  readonly tallies: (FileTally | undefined)[];
  /** per file loaded, in the order of the group */
  readonly results: FileResult[];
}

/**
 * One round: its chunks looked up and planned together, in the order of the files (a later file sees the rows an
 * earlier one inserts), their new rows inserted at once; then, file by file, each chunk's rejections recorded
 * and each file that ends here closed, in the order one file after the other would have.
 */
async function loadRound(tx: TransactionSql, round: Round, group: GroupLoad): Promise<void> {
  const { files, state, tallies } = group;
  const chunks = round.parts.filter((p): p is Required<Part> => p.chunk !== undefined);
  const known = await lookUp(tx, chunks.map((p) => p.chunk), state);
  const plans = chunks.map((p) => plan(files[p.file]!.name, p.chunk, known));
  await insertFresh(tx, plans, state, group.options);
  let next = 0;
  for (const { file, chunk } of round.parts) {
    const tally = (tallies[file] ??= fileTally());
    if (chunk !== undefined) await settleChunk(tx, plans[next++]!, chunk, state, tally);
    else {
      group.results.push(await finishFile(tx, files[file]!, state, tally));
      tallies[file] = undefined;
    }
  }
  // The round is done with: garbage is collected (when due) while the next one is read.
  collectGarbage(round.chars);
}

/** A chunk's planned rejections recorded, and its counts added to its file's. */
async function settleChunk(tx: TransactionSql, p: Plan, chunk: Chunk, state: GroupState, tally: FileTally): Promise<void> {
  const written = await recordRejections(tx, p.rejections, tally.lines);
  for (const r of p.rejections) if (r.status === "open") state.open.set(r.source_file, true);
  tally.records += chunk.records;
  tally.inserted += p.fresh.length;
  tally.rejected += written;
  tally.duplicates += p.duplicates + (p.rejections.length - written);
  tally.warnings += p.fresh.filter((c) => c.row.warnings !== null).length;
  tally.rejections.push(...p.rejections);
  // A row PostgreSQL refused (row by row) is no longer fresh: only inserted rows count.
  tally.crossSource.push(...p.fresh.flatMap((c) => p.sameAs.get(c) ?? []));
  tally.fresh.add(p.fresh);
}

/**
 * Runs `each` on every item in order, the next one read and cleaned while PostgreSQL works on this one:
 * JavaScript and PostgreSQL work at the same time (each on its own core), two rounds in memory at most.
 */
async function eachInTurn<T>(items: AsyncIterable<T>, each: (item: T) => Promise<void>): Promise<void> {
  const iterator = items[Symbol.asyncIterator]();
  let next = iterator.next();
  try {
    for (let current = await next; !current.done; current = await next) {
      next = iterator.next();
      next.catch(() => undefined); // awaited in the next round; a failure must not count as unhandled meanwhile
      await each(current.value);
    }
  } finally {
    // A failure stops the reading: let the round being read settle, and close the file.
    await next.catch(() => undefined);
    await iterator.return?.();
  }
}

/**
 * Closes a file whose chunks have all loaded: records its lost offsets (a gap file), resolves the open
 * rejections its rows resolve and checks its counts: inserted (as COPY reports it) + duplicates + rejected = the
 * records read from it.
 */
async function finishFile(tx: TransactionSql, file: CheckedFile, state: GroupState, tally: FileTally): Promise<FileResult> {
  if (file.lost.length > 0) await recordLost(tx, file.lost, file.name);
  const resolved = tally.inserted > 0 && (await anyOpenRejection(tx, tally.fresh.names, state)) ? await resolveRejections(tx, tally.fresh, file.name) : 0;
  if (tally.inserted + tally.rejected + tally.duplicates !== tally.records) {
    throw new LedgerMismatchError(
      `${file.name}: ${tally.records} records, but ${tally.inserted} inserted + ${tally.duplicates} duplicates + ` +
        `${tally.rejected} rejected; nothing was committed`,
    );
  }
  const { records, inserted, duplicates, rejected, warnings, rejections, crossSource } = tally;
  return { name: file.name, status: "loaded", records, inserted, duplicates, rejected, warnings, resolved, rejections, lost: file.lost, crossSource };
}

/**
 * The ledger rows, written only by the transaction that began this load (`xid`): a statement that reached
 * another session (a driver fault after a lost connection) inserts nothing, and the load fails.
 */
async function writeLedger(tx: TransactionSql, files: readonly CheckedFile[], results: readonly FileResult[], xid: string): Promise<void> {
  const ledger = await tx`
    insert into loaded_files (sha256, file_name, records, inserted, duplicates, rejected, warnings, cross_source)
    select * from unnest(${files.map((f) => f.hash)}::char(64)[], ${results.map((r) => r.name)}::text[],
                         ${results.map((r) => r.records)}::int[], ${results.map((r) => r.inserted)}::int[],
                         ${results.map((r) => r.duplicates)}::int[], ${results.map((r) => r.rejected)}::int[],
                         ${results.map((r) => r.warnings)}::int[], ${results.map((r) => r.crossSource.length)}::int[])
    where pg_current_xact_id()::text = ${xid}
    returning 1
  `;
  if (ledger.length !== results.length) {
    throw Object.assign(new Error("the ledger rows reached another session than the load's transaction"), { code: "CONNECTION_CLOSED" });
  }
}

/** The result of a file whose content the ledger already holds. */
function alreadyLoaded(file: CheckedFile): FileResult {
  return {
    name: file.name,
    status: "already-loaded",
    records: 0,
    inserted: 0,
    duplicates: 0,
    rejected: 0,
    warnings: 0,
    resolved: 0,
    rejections: [],
    lost: [],
    crossSource: [],
  };
}

/** One group in one transaction, under the loader lock: round by round (chunks of its files in order); then ledger, announce. */
async function loadGroup(tx: TransactionSql, files: readonly CheckedFile[], options: CommitOptions): Promise<FileResult[]> {
  // Loaders take turns, one group at a time, so "is this row new?" below cannot race with another loader.
  const xid = await takeLoaderLock(tx, options.lockWaitMs ?? LOCK_WAIT_MS);
  const todo = await newFiles(tx, files);
  const group: GroupLoad = { files: todo, state: groupState(), options, tallies: [], results: [] };
  await eachInTurn(roundsOf(todo), (round) => loadRound(tx, round, group));
  const { results } = group;
  if (results.length > 0) {
    await writeLedger(tx, todo, results, xid);
    const payload = JSON.stringify({ files: results.length, rows: results.reduce((n, r) => n + r.inserted, 0) });
    await tx`select pg_notify(${LOADED_CHANNEL}, ${payload})`;
  }
  return [...results, ...files.filter((f) => !todo.includes(f)).map(alreadyLoaded)];
}

/**
 * Loads `files` in one transaction. Files whose content is already in the ledger are skipped. Throws on any
 * database error (nothing of the group is kept then), and FileChangedError for a file that is no longer as it
 * was checked; the caller decides whether to retry or isolate. When the loader lock is not free in time, throws
 * LoaderLockError naming the session that holds it.
 */
export async function commitFiles(db: Database, files: readonly CheckedFile[], options: CommitOptions = {}): Promise<FileResult[]> {
  try {
    return await db.transaction((tx) => loadGroup(tx, files, options));
  } catch (error) {
    // Rolled back by now: the pool's connection is free to ask who holds the lock.
    if (error instanceof LoaderLockTimeout) throw await loaderLockError(db.sql, options.lockWaitMs ?? LOCK_WAIT_MS);
    throw error;
  }
}
