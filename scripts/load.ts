// Loader: the Airflow + Pandas step of the original. Picks up batch files, cleans every row, and loads
// PostgreSQL tables users, products and orders.
//
//   batches/*.csv  ->  users, products, orders (+ rejected_rows, loaded_files)      make load
//
// Extract -> transform -> load, one transaction per batch file, with the file's ledger row (keyed by the
// sha256 of its content) in the same transaction: loading a file twice, or a copy of it, is a no-op.
// Every row is identified by (source file, Row ID), so a row that arrives twice (producer re-run, topic
// replay, consumer restart) is stored once. Rows that cannot be cleaned go to rejected_rows with a reason
// naming the field, and to BATCHES_DIR/rejected/<batch file>: every input line ends up in orders or there.
// users and products keep each id's values from its latest order, whatever order the files come in.
// A file that is not a readable batch (truncated, edited, not CSV) is moved to BATCHES_DIR/failed/ with a
// .reason.txt next to it; the other files still load.
//
// Without flags it loads every pending file and exits; --watch keeps going and picks up new files within a
// second. Two loaders at once are safe: they take turns per file (an advisory lock) and skip what is done.
//
// Env: DATABASE_URL (or PG*), BATCHES_DIR, LOG_LEVEL. Flags: --dir, --watch, --help.

import { mkdir, readdir, rename } from "node:fs/promises";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { join } from "node:path";
import { META_COLUMNS, parseBatchFileName, sha256, writeFileDurably } from "./lib/batch.ts";
import { fail, parseCli } from "./lib/cli.ts";
import { readConfig } from "./lib/config.ts";
import { parseCsv, writeCsv } from "./lib/csv.ts";
import { connect, describeDatabase, type Sql, type TransactionSql } from "./lib/db.ts";
import { createLogger, createProgress, formatDuration, formatRate, type Logger } from "./lib/log.ts";
import { cleanRow, FIELDS, mapHeader, NUL, type CleanValue, type HeaderMap } from "./lib/record.ts";
import { createShutdown, sleep } from "./lib/shutdown.ts";

/** Source columns the schema does not know, kept in orders.extra (jsonb). */
export type Extra = Record<string, string>;

/** One row for `orders`: the cleaned source fields, its identity, and where it came from. */
export type OrderRow = Record<(typeof ORDER_COLUMNS)[number], CleanValue | Extra>;

/** One row for `rejected_rows`. */
export interface RejectedRow {
  source_file: string;
  source_line: number;
  source_lines: number;
  reason: string;
  /** the fields as received (jsonb); null for a line that could not be split */
  fields: Record<string, string> | null;
  raw_text: string | null;
  kafka_topic: string | null;
  kafka_partition: number | null;
  kafka_offset: string | null;
  batch_file: string;
}

const FIELD_COLUMNS = Object.values(FIELDS).map((f) => f.column);
export const ORDER_COLUMNS = [
  ...FIELD_COLUMNS,
  "extra",
  "source_file",
  "source_row_id",
  "source_line",
  "kafka_topic",
  "kafka_partition",
  "kafka_offset",
  "batch_file",
] as const;
const USER_COLUMNS = ["customer_id", "customer_name", "segment", "country", "city", "state", "postal_code", "region", "market"];
const PRODUCT_COLUMNS = ["product_id", "category", "sub_category", "product_name"];
const LATEST_COLUMNS = ["latest_order_date", "latest_source_row_id", "latest_source_file"];
const REJECTED_COLUMNS: (keyof RejectedRow)[] = [
  "source_file",
  "source_line",
  "source_lines",
  "reason",
  "fields",
  "raw_text",
  "kafka_topic",
  "kafka_partition",
  "kafka_offset",
  "batch_file",
];
/** postgres.js sends one parameter per value; a statement holds at most 65,535. */
const MAX_PARAMETERS = 65_000;

const command = {
  script: "scripts/load.ts",
  summary: [
    "Clean the batch files and load users, products and orders; one transaction per file.",
    "Rows that cannot be cleaned go to rejected_rows with a reason naming the field.",
  ].join("\n"),
  flags: {
    dir: { type: "string", short: "d", arg: "DIR", help: "folder of batch files (default $BATCHES_DIR = batches)" },
    watch: { type: "boolean", short: "w", help: "keep running and load new files as they appear" },
  },
  env: ["DATABASE_URL", "BATCHES_DIR", "LOG_LEVEL"],
  notes: "Run by: make load (once), make stream (with --watch)",
} as const;

export interface FileResult {
  readonly status: "loaded" | "already-loaded" | "failed";
  readonly records: number;
  readonly inserted: number;
  readonly duplicates: number;
  readonly rejected: number;
  readonly reason?: string;
}

/** Thrown for a file that is not a readable batch; the caller sets it aside and goes on. */
export class BadBatchFileError extends Error {
  override name = "BadBatchFileError";
}

interface Candidate {
  row: OrderRow;
  /** source file + Row ID */
  key: string;
  /** the fields as received, for a rejection found later */
  fields: Record<string, string>;
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

/** U+0000 cannot be stored in text or jsonb; a rejected row shows it as the six characters \u0000. */
function storable(text: string): string {
  return text.replaceAll(NUL, "\\u0000");
}

function storableFields(fields: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(fields)) out[storable(k)] = storable(v);
  return out;
}

function int(value: string | undefined): number | null {
  return value !== undefined && /^\d+$/.test(value) ? Number(value) : null;
}

/**
 * Extract + transform for one parsed batch file: each row becomes an order candidate or a rejected row.
 * Pure (no I/O), so tests call it directly.
 */
export function transform(
  parsed: { columns: readonly string[]; rows: readonly { line: number; values: Record<string, string> }[] },
  batchFile: string,
): { candidates: Candidate[]; rejected: RejectedRow[]; duplicates: number } {
  const sourceColumns = parsed.columns.filter((c) => !(META_COLUMNS as readonly string[]).includes(c));
  let header: HeaderMap;
  try {
    header = mapHeader(sourceColumns);
  } catch (error) {
    throw new BadBatchFileError((error as Error).message);
  }
  const candidates = new Map<string, Candidate>();
  const rejected: RejectedRow[] = [];
  let duplicates = 0;
  for (const { line, values } of parsed.rows) {
    const topic = values._topic || null;
    const partition = int(values._partition);
    const offset = values._offset || null;
    // Where the row came from. A batch file without our columns (written by hand) names itself.
    const sourceFile = values._source_file || (topic !== null ? `kafka:${topic}/${partition}` : batchFile);
    const sourceLine = int(values._source_line) ?? (values._source_file ? null : int(values._offset)) ?? line;
    const base = {
      source_file: sourceFile,
      source_line: sourceLine,
      source_lines: int(values._source_lines) ?? 1,
      kafka_topic: topic,
      kafka_partition: partition,
      kafka_offset: offset,
      batch_file: batchFile,
    };
    if (values._error) {
      const raw = values._raw ?? null;
      rejected.push({
        ...base,
        reason: `line could not be split into fields: ${values._error}`,
        fields: null,
        raw_text: raw === null ? null : storable(raw),
      });
      continue;
    }
    const fields: Record<string, string> = {};
    for (const column of sourceColumns) fields[column] = values[column] ?? "";
    const clean = cleanRow(fields, header);
    if (!clean.ok) {
      rejected.push({ ...base, reason: clean.reason, fields: storableFields(fields), raw_text: null });
      continue;
    }
    const row = {
      ...clean.row.values,
      // objects, not JSON text: postgres.js serializes a jsonb parameter itself
      extra: clean.row.extra,
      source_file: sourceFile,
      source_row_id: clean.row.rowId ?? sourceLine,
      source_line: sourceLine,
      kafka_topic: topic,
      kafka_partition: partition,
      kafka_offset: offset,
      batch_file: batchFile,
    } as OrderRow;
    const key = `${sourceFile}\u0000${row.source_row_id}`;
    const twin = candidates.get(key);
    if (twin === undefined) candidates.set(key, { row, key, fields });
    else if (twin.row.source_line === sourceLine) duplicates++;
    else {
      rejected.push({
        ...base,
        reason: `Row ID ${row.source_row_id} repeats line ${twin.row.source_line} of ${sourceFile}`,
        fields,
        raw_text: null,
      });
    }
  }
  return { candidates: [...candidates.values()], rejected, duplicates };
}

const COPY_ESCAPES: Record<string, string> = { "\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r" };

/** One value in COPY's text format: \N for NULL, backslash escapes for backslash, tab, newline, CR. */
export function copyValue(value: unknown): string {
  if (value === null || value === undefined) return "\\N";
  const text = typeof value === "object" ? JSON.stringify(value) : String(value);
  return text.replace(/[\\\t\n\r]/g, (c) => COPY_ESCAPES[c]!);
}

/** Order rows as COPY text lines, a few hundred per chunk. */
function* copyLines(rows: readonly OrderRow[]): Generator<string> {
  for (let i = 0; i < rows.length; i += 500) {
    let chunk = "";
    for (const row of rows.slice(i, i + 500)) chunk += `${ORDER_COLUMNS.map((c) => copyValue(row[c])).join("\t")}\n`;
    yield chunk;
  }
}

function chunks<T>(rows: readonly T[], columns: number): T[][] {
  const size = Math.max(1, Math.floor(MAX_PARAMETERS / columns));
  const out: T[][] = [];
  for (let i = 0; i < rows.length; i += size) out.push(rows.slice(i, i + size));
  return out;
}

function latestValues(row: OrderRow, columns: readonly string[]): Record<string, OrderRow[keyof OrderRow]> {
  const out: Record<string, OrderRow[keyof OrderRow]> = {};
  for (const column of columns) out[column] = row[column as keyof OrderRow];
  out.latest_order_date = row.order_date;
  out.latest_source_row_id = row.source_row_id;
  out.latest_source_file = row.source_file;
  return out;
}

/**
 * Upserts one row per id into a dimension table (users, products) with the values of that id's latest order
 * in `rows`, unless the table already holds a later one. "Later" is (order date, Row ID, source file) in
 * PostgreSQL's "C" order, the same rule as isLater, so the result does not depend on the order of files.
 */
async function upsertLatest(
  tx: TransactionSql,
  table: "users" | "products",
  id: "customer_id" | "product_id",
  columns: readonly string[],
  rows: readonly OrderRow[],
): Promise<void> {
  const all = [...columns, ...LATEST_COLUMNS];
  const set = all
    .filter((c) => c !== id)
    .map((c) => tx`${tx(c)} = excluded.${tx(c)}`)
    .reduce((list, item) => tx`${list}, ${item}`);
  const latest = latestBy(rows, id).map((r) => latestValues(r, columns));
  for (const part of chunks(latest, all.length)) {
    await tx`
      insert into ${tx(table)} ${tx(part, all)}
      on conflict (${tx(id)}) do update set ${set}, updated_at = now()
      where (${tx(table)}.latest_order_date, ${tx(table)}.latest_source_row_id, ${tx(table)}.latest_source_file collate "C")
          < (excluded.latest_order_date, excluded.latest_source_row_id, excluded.latest_source_file collate "C")
    `;
  }
}

/** Loads one batch file in one transaction. Returns what happened; throws only for database trouble. */
export async function loadFile(sql: Sql, dir: string, name: string): Promise<FileResult> {
  return commitFile(sql, dir, await prepareFile(dir, name));
}

/** A batch file read, checked and transformed: everything but the database. */
export interface PreparedFile {
  readonly name: string;
  readonly hash: string;
  readonly records: number;
  readonly candidates: Candidate[];
  readonly rejected: RejectedRow[];
  readonly duplicates: number;
}

/** Extract + transform of one file. Throws BadBatchFileError for a file that is not a readable batch. */
export async function prepareFile(dir: string, name: string): Promise<PreparedFile> {
  const path = join(dir, name);
  const bytes = await Bun.file(path).bytes();
  const hash = sha256(bytes);
  const expected = parseBatchFileName(name);
  if (expected && !hash.startsWith(expected.hash)) {
    throw new BadBatchFileError(`content does not match the hash in its name (truncated or edited after it was written)`);
  }
  let parsed;
  try {
    parsed = parseCsv(new TextDecoder("utf-8", { fatal: true }).decode(bytes), path);
  } catch (error) {
    throw new BadBatchFileError((error as Error).message);
  }
  return { name, hash, records: parsed.rows.length, ...transform(parsed, name) };
}

/** Load of one prepared file, in one transaction with its ledger row. */
export async function commitFile(sql: Sql, dir: string, prepared: PreparedFile): Promise<FileResult> {
  const { name, hash, candidates, duplicates: inFileDuplicates } = prepared;
  const rejected = [...prepared.rejected]; // a retried transaction starts from the same list
  const result = await sql.begin(async (tx) => {
    // Loaders take turns, one file at a time, so "is this row new?" below cannot race with another loader.
    await tx`select pg_advisory_xact_lock(hashtext('sales-load'))`;
    const [done] = await tx`select 1 as done from loaded_files where sha256 = ${hash}`;
    if (done) return undefined;

    // Rows this database already has: the same line again is a duplicate; another line with the same
    // Row ID is a conflict the source must resolve, so it is rejected rather than guessed.
    const existing = new Map<string, number>();
    if (candidates.length > 0) {
      const found = await tx<{ source_file: string; source_row_id: string; source_line: number }[]>`
        select o.source_file, o.source_row_id, o.source_line
        from orders o
        join unnest(${candidates.map((c) => String(c.row.source_file))}::text[],
                    ${candidates.map((c) => String(c.row.source_row_id))}::bigint[]) as k (f, r)
          on o.source_file = k.f and o.source_row_id = k.r
      `;
      for (const f of found) existing.set(`${f.source_file}\u0000${f.source_row_id}`, f.source_line);
    }
    let duplicates = inFileDuplicates;
    const fresh: OrderRow[] = [];
    for (const { row, key, fields } of candidates) {
      const line = existing.get(key);
      if (line === undefined) fresh.push(row);
      else if (line === row.source_line) duplicates++;
      else {
        rejected.push({
          source_file: String(row.source_file),
          source_line: Number(row.source_line),
          source_lines: 1,
          reason: `Row ID ${row.source_row_id} is already loaded from line ${line} of ${row.source_file}`,
          fields,
          raw_text: null,
          kafka_topic: row.kafka_topic as string | null,
          kafka_partition: row.kafka_partition as number | null,
          kafka_offset: row.kafka_offset as string | null,
          batch_file: name,
        });
      }
    }

    if (fresh.length > 0) {
      await upsertLatest(tx, "users", "customer_id", USER_COLUMNS, fresh);
      await upsertLatest(tx, "products", "product_id", PRODUCT_COLUMNS, fresh);
      // COPY: the rows are known to be new (checked above, under the lock), and COPY is the fast way in.
      await pipeline(Readable.from(copyLines(fresh)), await tx`copy orders (${tx(ORDER_COLUMNS as readonly string[] as string[])}) from stdin`.writable());
    }

    let rejectedNew = 0;
    for (const part of chunks(rejected, REJECTED_COLUMNS.length)) {
      const inserted = await tx`
        insert into rejected_rows ${tx(part, REJECTED_COLUMNS)}
        on conflict (source_file, source_line) do nothing
        returning 1
      `;
      rejectedNew += inserted.length;
    }
    duplicates += rejected.length - rejectedNew; // rejected before, by an earlier file

    await tx`
      insert into loaded_files ${tx({
        sha256: hash,
        file_name: name,
        records: prepared.records,
        inserted: fresh.length,
        duplicates,
        rejected: rejectedNew,
      })}
    `;
    return { inserted: fresh.length, duplicates, rejected: rejectedNew };
  });

  if (!result) return { status: "already-loaded", records: prepared.records, inserted: 0, duplicates: 0, rejected: 0 };
  if (rejected.length > 0) {
    // The file for people: the reason and where the row came from (named with a leading "_", as in batch
    // files, so a source column of the same name stays apart), then the row as received.
    const fieldColumns = [...new Set(rejected.flatMap((r) => Object.keys(r.fields ?? {})))];
    const columns = ["_reason", "_source_file", "_source_line", "_batch_file", "_kafka_offset", ...fieldColumns, "_raw_text"];
    const rows = rejected.map((r) => ({
      ...r.fields,
      _reason: r.reason,
      _source_file: r.source_file,
      _source_line: r.source_line,
      _batch_file: r.batch_file,
      _kafka_offset: r.kafka_offset,
      _raw_text: r.raw_text,
    }));
    await mkdir(join(dir, "rejected"), { recursive: true });
    await writeFileDurably(join(dir, "rejected"), name, writeCsv(rows, columns));
  }
  return { status: "loaded", records: prepared.records, ...result };
}

/** Moves a bad file to DIR/failed/ with a .reason.txt beside it. */
async function setAside(dir: string, name: string, reason: string): Promise<void> {
  const failed = join(dir, "failed");
  await mkdir(failed, { recursive: true });
  await Bun.write(
    join(failed, `${name}.reason.txt`),
    `${reason}\nThe file was not loaded. Its records are still in Kafka: replay them with\n` +
      `  bun scripts/consumer_batch_to_csv.ts --from-beginning --group <new group>\n`,
  );
  await rename(join(dir, name), join(failed, name));
}

/** Batch files waiting in `dir`, oldest name first; dot files (being written) are not ready. */
export async function pendingFiles(dir: string, done: ReadonlySet<string>): Promise<string[]> {
  const names = await readdir(dir, { withFileTypes: true });
  return names
    .filter((d) => d.isFile() && d.name.endsWith(".csv") && !d.name.startsWith(".") && !done.has(d.name))
    .map((d) => d.name)
    .sort();
}

async function checkSchema(sql: Sql, where: string): Promise<void> {
  const [row] = await sql<{ ok: string | null }[]>`select to_regclass('loaded_files')::text as ok`;
  if (!row?.ok) throw new Error(`${where} has no loader tables: run "make migrate" first`);
}

const CONNECTION_CODES = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "CONNECTION_CLOSED",
  "CONNECTION_ENDED",
  "CONNECTION_DESTROYED",
  "CONNECT_TIMEOUT",
]);

/**
 * Is this "the server is not there right now" (worth waiting for) rather than a problem with the data?
 * Socket errors, postgres.js connection errors, SQLSTATE class 08 and 57P01-57P03 (shutdown, starting up).
 */
export function isConnectionError(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" && (CONNECTION_CODES.has(code) || code.startsWith("08") || /^57P0[1-3]$/.test(code));
}

async function main(): Promise<void> {
  const flags = parseCli(command);
  if (!flags) return;
  const config = readConfig();
  const log: Logger = createLogger("load", config.logLevel);
  const dir = flags.dir ?? config.batchesDir;
  const where = describeDatabase(config.databaseUrl);
  await mkdir(dir, { recursive: true });
  const sql = connect(config, log, { max: 1 });
  const shutdown = createShutdown(log);
  shutdown.onStop("close database connections", () => sql.end({ timeout: 5 }));

  // With --watch, a database that goes away is waited for (backoff up to 10 s), then work resumes where it
  // stopped: the file whose transaction failed is loaded again, which its ledger makes safe.
  let delay = 0;
  const retrying = async <T>(what: string, attempt: () => Promise<T>): Promise<T | undefined> => {
    for (;;) {
      try {
        const value = await attempt();
        if (delay > 0) log.info(`PostgreSQL at ${where} answers again; ${what}`);
        delay = 0;
        return value;
      } catch (error) {
        if (!isConnectionError(error)) throw error;
        if (!flags.watch) throw new Error(`cannot reach PostgreSQL at ${where}: ${(error as Error).message} (is it up? make up)`);
        delay = Math.min(Math.max(delay * 2, 500), 10_000);
        log.warn(`waiting for PostgreSQL at ${where} (${(error as Error).message}); ${what} again in ${delay / 1000}s`);
        await sleep(delay, shutdown.signal);
        if (shutdown.requested) return undefined;
      }
    }
  };

  const totals = { files: 0, skipped: 0, failed: 0, records: 0, inserted: 0, duplicates: 0, rejected: 0 };
  const started = performance.now();
  try {
    await retrying("checking the tables", () => checkSchema(sql, where));
    const names = await retrying("reading the ledger", () => sql<{ file_name: string }[]>`select file_name from loaded_files`);
    const done = new Set((names ?? []).map((r) => r.file_name));
    log.info(`loading ${dir}/*.csv into ${where}${flags.watch ? " (watching for new files, Ctrl-C to stop)" : ""}`);
    while (!shutdown.requested) {
      const pending = await pendingFiles(dir, done);
      const progress = createProgress(log, "files", pending.length, 100);
      // Read and transform the next file while this one's transaction runs: JavaScript and PostgreSQL work
      // at the same time (each on its own core).
      const prepare = (name: string) =>
        prepareFile(dir, name).then(
          (file) => ({ file }),
          (error: unknown) => ({ error }),
        );
      let next = pending[0] === undefined ? undefined : prepare(pending[0]);
      for (const [i, name] of pending.entries()) {
        if (shutdown.requested || !next) break;
        const prepared = await next;
        next = pending[i + 1] === undefined ? undefined : prepare(pending[i + 1]!);
        try {
          if ("error" in prepared) throw prepared.error;
          const result = await retrying(`loading ${name}`, () => commitFile(sql, dir, prepared.file));
          if (result === undefined) break; // stopped while waiting for the database
          if (result.status === "already-loaded") totals.skipped++;
          else {
            totals.files++;
            totals.records += result.records;
            totals.inserted += result.inserted;
            totals.duplicates += result.duplicates;
            totals.rejected += result.rejected;
            log.debug(`${name}: inserted=${result.inserted} duplicates=${result.duplicates} rejected=${result.rejected}`);
            if (result.rejected > 0) log.warn(`${name}: ${result.rejected} rows rejected, see ${dir}/rejected/${name}`);
          }
          done.add(name);
        } catch (error) {
          if ((error as { code?: string }).code === "ENOENT") {
            // Another loader set it aside a moment ago: nothing to load here.
            log.debug(`${name}: gone before it was read`);
          } else if (error instanceof BadBatchFileError) {
            totals.failed++;
            log.error(`${join(dir, name)}: ${error.message}; moved to ${dir}/failed/`);
            await setAside(dir, name, error.message);
          } else throw error;
        }
        progress.update(i + 1);
      }
      await next; // a prefetch left behind by a stop: let it settle before the process ends
      progress.done();
      if (!flags.watch) break;
      await sleep(500, shutdown.signal);
    }
  } finally {
    await shutdown.run();
  }
  const ms = performance.now() - started;
  log.info(
    `done: files=${totals.files} rows=${totals.records} inserted=${totals.inserted} duplicates=${totals.duplicates} ` +
      `rejected=${totals.rejected} already_loaded=${totals.skipped} failed_files=${totals.failed} ` +
      `in ${formatDuration(ms)} (${formatRate(totals.records, ms)})`,
  );
  if (totals.failed > 0) process.exitCode = 1;
}

if (import.meta.main) main().catch(fail);
