// Loader: the Airflow + Pandas step of the original. Picks up batch files, cleans every row, and loads
// PostgreSQL tables users, products and orders.
//
//   batches/*.csv  ->  users, products, orders (+ rejected_rows, loaded_files)      make load
//
// Extract + transform (scripts/lib/load/read.ts) -> load (scripts/lib/load/transaction.ts): small files are
// loaded together, each with its ledger row in the same transaction, so loading a file twice, or a copy of
// it, is a no-op, and a committed file never lacks a row. Rows that cannot be cleaned go to rejected_rows with
// a reason naming the field, and to BATCHES_DIR/rejected/<batch file> (scripts/lib/load/rejects.ts). A file
// that is not a readable batch (truncated, edited, not CSV) is moved to BATCHES_DIR/failed/ with a
// .reason.txt next to it; the other files still load.
//
// With --watch, each group of files loaded gets a line: inserted, duplicate and rejected rows, and the orders
// the table holds now.
//
// A gap file from the consumer (offsets Kafka no longer had when the group reached them) is recorded in
// lost_offsets, with a warning naming topic, partition and offsets, and counted as lost_offsets= in the summary.
//
// A lost connection rolls the group back and loads it again on a fresh connection once PostgreSQL answers
// (--watch waits as long as it takes; a single run gives up after 30 s). A row PostgreSQL refuses during
// COPY makes the loader load that file row by row, so the row costs one rejection and the rest loads.
// Loaders take turns through a row only the loader's role can lock (lib/load/lock.ts): a single run waits 30 s
// for it, --watch as long as it takes, and both name the session that holds it. A database that takes no writes
// (switched read-only, or a hot standby) stops the loader with the database and the file in the message: the
// files wait in the folder, and the next run loads them.
//
// Loaded files stay in the folder (keep), are moved to BATCHES_DIR/loaded/YYYY-MM-DD/ (move), or are deleted
// once their load is N days old (delete, or move with a number of days): lib/load/retention.ts. "Loaded" is
// the ledger's word (the sha256 of the file's content in loaded_files), never a name's. --watch applies it to
// each group once it committed (and the days once an hour); a single run applies it at the end. The summary
// counts moved= and deleted= files.
//
// Env: DATABASE_URL (or PG*), BATCHES_DIR, BATCH_RETENTION, BATCH_RETENTION_DAYS, LOG_LEVEL, LOG_PROGRESS.
// Flags: --dir, --watch, --retention, --retention-days, --help.

import { existsSync } from "node:fs";
import { mkdir, readdir, rename, stat } from "node:fs/promises";
import { join } from "node:path";
import { parseBatchFileName, parseGapFileName, sha256 } from "./lib/batch.ts";
import { fail, parseCli } from "./lib/cli.ts";
import { parseRetentionDays, parseRetentionMode, readConfig, type Config } from "./lib/config.ts";
import {
  DatabaseAccessError,
  describeDatabase,
  explainDatabaseFailure,
  isConnectionError,
  isDataError,
  isRetryable,
  openDatabase,
  type Database,
} from "./lib/db.ts";
import { FolderChanges, RECHECK_ALL, type Recheck } from "./lib/load/changes.ts";
import { BadBatchFileError, checkFile, FileChangedError, type CheckedFile } from "./lib/load/read.ts";
import { writeRejects } from "./lib/load/rejects.ts";
import { LOCK_WAIT_MS, LoaderLockError } from "./lib/load/lock.ts";
import {
  describeRetention,
  expireMoved,
  retainLoaded,
  retentionPolicy,
  sameStamp,
  stampOf,
  type LoadedFile,
  type RetentionPolicy,
  type Stamp,
} from "./lib/load/retention.ts";
import { commitFiles, type FileResult, type SameAs } from "./lib/load/transaction.ts";
import { createLogger, createProgress, formatDuration, rateWhile, type Logger } from "./lib/log.ts";
import { GaveUpError, retryWhile } from "./lib/retry.ts";
import { createShutdown, type Shutdown } from "./lib/shutdown.ts";

const command = {
  script: "scripts/load.ts",
  summary: [
    "Clean the batch files and load users, products and orders; each file is loaded whole or not at all.",
    "Rows that cannot be cleaned go to rejected_rows with a reason naming the field.",
  ].join("\n"),
  flags: {
    dir: { type: "string", short: "d", arg: "DIR", help: "folder of batch files (default $BATCHES_DIR = batches)" },
    watch: { type: "boolean", short: "w", help: "keep running and load new files as they appear" },
    retention: {
      type: "string",
      arg: "MODE",
      help: "what becomes of loaded files: keep, move (to DIR/loaded/YYYY-MM-DD/) or delete (default $BATCH_RETENTION = keep)",
    },
    "retention-days": {
      type: "string",
      arg: "N",
      help: "delete loaded files once their load is N days old, in DIR and DIR/loaded/ (default $BATCH_RETENTION_DAYS)",
    },
  },
  env: ["DATABASE_URL", "BATCHES_DIR", "BATCH_RETENTION", "BATCH_RETENTION_DAYS", "LOG_LEVEL", "LOG_PROGRESS"],
  notes: "Run by: make load (once), make stream (with --watch)",
} as const;

/** Files loaded in one transaction: up to this many bytes of batch files (about 8,000 rows)... */
export const GROUP_BYTES = 4 * 1024 * 1024;
/** ...and at most this many files. */
export const GROUP_FILES = 200;
/** Without --watch, how long the loader waits for PostgreSQL before it gives up. */
const ONE_SHOT_PATIENCE_MS = 30_000;
/** --watch: how often the retention policy goes over the whole folder (files due for deletion by their age). */
const RETENTION_SWEEP_MS = 3_600_000;

/**
 * How long a file must have been left alone before it is judged, when nothing else says it is complete. The
 * consumer renames finished files into place and names them by their content's hash, so its files are ready
 * at once; a file copied in by hand may still be growing.
 */
export const SETTLE_MS = 2000;

export interface PendingFile {
  readonly name: string;
  readonly size: number;
  /** modified within SETTLE_MS: maybe still being written */
  readonly young: boolean;
  readonly stamp: Stamp;
}

/**
 * Which files of the folder are loaded. A name alone does not say: a file can be replaced by another of the
 * same name (a batch written by hand, say). A file counts as loaded while it looks as it did when this run
 * loaded it; a name the ledger knows from an earlier run is checked once, by the hash of its content.
 */
export class LoadedFiles {
  private readonly seen = new Map<string, { readonly stamp: Stamp; readonly hash: string }>();

  /** `ledger`: file name -> the sha256 of every content loaded under that name. */
  constructor(private readonly ledger: ReadonlyMap<string, ReadonlySet<string>>) {}

  /** `name`, as it looked (`stamp`), was loaded with the content `hash` (or that content was loaded before). */
  loaded(name: string, stamp: Stamp, hash: string): void {
    this.seen.set(name, { stamp, hash });
  }

  async has(dir: string, name: string, stamp: Stamp): Promise<boolean> {
    const seen = this.seen.get(name);
    if (seen) return sameStamp(seen.stamp, stamp);
    const hashes = this.ledger.get(name);
    if (!hashes) return false;
    const hash = sha256(await Bun.file(join(dir, name)).bytes());
    if (!hashes.has(hash)) return false;
    this.seen.set(name, { stamp, hash });
    return true;
  }

  /** Whether this run loaded `name` (or found it loaded): a pass looks at it again only when it may have changed. */
  loadedHere(name: string): boolean {
    return this.seen.has(name);
  }

  /** The loaded content of `name` while it looks as it did when it was judged loaded; undefined otherwise. */
  hashOf(name: string, stamp: Stamp): string | undefined {
    const seen = this.seen.get(name);
    return seen && sameStamp(seen.stamp, stamp) ? seen.hash : undefined;
  }
}

/**
 * Warnings for rows loaded although another source has the same Row ID and values, one per source of such rows:
 * they count twice in every total, and the message says how to remove them if the source is a copy.
 */
export function describeCrossSource(batchFile: string, rows: readonly SameAs[]): string[] {
  const bySource = Map.groupBy(rows, (r) => r.source);
  return [...bySource].map(([source, same]) => {
    const { rowId, line, first } = same[0]!;
    const quoted = `'${source.replaceAll("'", "''")}'`;
    return (
      `${batchFile}: ${same.length} row${same.length === 1 ? "" : "s"} of ${JSON.stringify(source)} ${same.length === 1 ? "has" : "have"} ` +
      `the Row ID and every value of rows loaded before from another source (Row ID ${rowId} at line ${line} = line ${first.line} of ` +
      `${JSON.stringify(first.source)}); they are loaded, and count twice in every total. If ${JSON.stringify(source)} is a copy, ` +
      `remove them: delete from orders where source_file = ${quoted} and same_as_source is not null`
    );
  });
}

/** Batch files waiting in `dir`, oldest name first, with their sizes; dot files (being written) are not ready. */
export async function pendingFiles(dir: string, done: LoadedFiles, now = Date.now(), recheck: Recheck = RECHECK_ALL): Promise<PendingFile[]> {
  const entries = await readdir(dir, { withFileTypes: true });
  const names = entries
    .filter((d) => (d.isFile() || d.isSymbolicLink()) && d.name.endsWith(".csv") && !d.name.startsWith("."))
    .map((d) => d.name)
    // A file this run loaded is looked at again only when it may have changed (lib/load/changes.ts).
    .filter((name) => !done.loadedHere(name) || recheck(name))
    .sort();
  const infos = await Promise.all(names.map((name) => stat(join(dir, name)).catch(() => undefined)));
  const pending: PendingFile[] = [];
  for (const [i, name] of names.entries()) {
    const info = infos[i];
    if (info === undefined) continue; // gone meanwhile (set aside by another loader)
    if (!info.isFile()) continue; // a folder named *.csv; a link is followed to what it points to
    const stamp = stampOf(info);
    if (await done.has(dir, name, stamp).catch(() => false)) continue;
    // Changed a moment ago (the change time cannot be set back, as a copy tool sets the modification time).
    pending.push({ name, size: info.size, young: now - Math.max(info.mtimeMs, info.ctimeMs) < SETTLE_MS, stamp });
  }
  return pending;
}

/** Consecutive files in groups of at most GROUP_BYTES and GROUP_FILES (a bigger file is a group of its own). */
export function groupFiles<T extends { size: number }>(files: readonly T[], maxBytes = GROUP_BYTES, maxFiles = GROUP_FILES): T[][] {
  const groups: T[][] = [];
  let current: T[] = [];
  let bytes = 0;
  for (const file of files) {
    if (current.length > 0 && (bytes + file.size > maxBytes || current.length >= maxFiles)) {
      groups.push(current);
      current = [];
      bytes = 0;
    }
    current.push(file);
    bytes += file.size;
  }
  if (current.length > 0) groups.push(current);
  return groups;
}

/**
 * Moves a bad file to DIR/failed/ with a .reason.txt beside it. A file of the same name set aside before is
 * kept: this one goes in as NAME.2.csv (then .3, ...).
 */
async function setAside(dir: string, file: string, reason: string): Promise<void> {
  const failed = join(dir, "failed");
  await mkdir(failed, { recursive: true });
  let name = file;
  for (let n = 2; existsSync(join(failed, name)) || existsSync(join(failed, `${name}.reason.txt`)); n++) name = file.replace(/(\.csv)?$/, `.${n}$1`);
  await Bun.write(
    join(failed, `${name}.reason.txt`),
    `${reason}\nThe file was not loaded. Its records are still in Kafka: replay them with\n` +
      `  bun scripts/consumer_batch_to_csv.ts --from-beginning --group <new group>\n`,
  );
  await rename(join(dir, file), join(failed, name));
}

interface Totals {
  files: number;
  skipped: number;
  failed: number;
  records: number;
  inserted: number;
  duplicates: number;
  rejected: number;
  warnings: number;
  resolved: number;
  lost: number;
  crossSource: number;
  /** loaded files moved to DIR/loaded/<day>/, and deleted, by the retention policy */
  moved: number;
  deleted: number;
  /** time spent on files found pending (reading, cleaning, loading), not waiting for new ones */
  busyMs: number;
}

interface LoaderOptions {
  readonly db: Database;
  readonly dir: string;
  /** the database's name, and "host:port/name" for messages */
  readonly database: string;
  readonly where: string;
  readonly watch: boolean;
  readonly retention: RetentionPolicy;
  readonly log: Logger;
  readonly shutdown: Shutdown;
}

/** Runs an attempt until it succeeds through lost connections; undefined when a stop was asked for meanwhile. */
type Persist = <T>(what: string, attempt: () => Promise<T>) => Promise<T | undefined>;

/** What the loader's steps share in one run: its options, the counts so far, and how it waits for PostgreSQL. */
interface LoaderRun extends LoaderOptions {
  readonly totals: Totals;
  /** Files that were not judged yet because they may still be being written; looked at again on the next pass. */
  readonly unsettled: Set<string>;
  /** Files modified a moment ago (SETTLE_MS): one that does not read is looked at again, not set aside. */
  readonly young: Set<string>;
  readonly persist: Persist;
  /** How long one attempt waits for the loader lock: a single run its whole patience, --watch a while at a time. */
  readonly lockWaitMs: number;
}

/**
 * Runs `attempt`; a lost connection is waited for (backoff up to 10 s), then the attempt runs again, and so
 * does an attempt the server gave up on for its own reasons (cancelled, deadlock, disk full): the group
 * whose transaction failed is loaded again, which its ledger makes safe. Resolves undefined when a stop was
 * asked for meanwhile.
 */
function createPersist({ db, where, watch, log, shutdown }: LoaderOptions): Persist {
  return <T>(what: string, attempt: () => Promise<T>): Promise<T | undefined> =>
    // A single run waited its whole patience for the loader lock in one attempt (lockWaitMs): no second one.
    retryWhile((error) => isRetryable(error) && (watch || !(error instanceof LoaderLockError)), attempt, {
      backoff: { initialMs: 500, maxMs: 10_000, jitter: 0.2 },
      giveUpAfterMs: watch ? undefined : ONE_SHOT_PATIENCE_MS,
      signal: shutdown.signal,
      onRetry: (error, _n, delay) =>
        log.warn(
          `${isConnectionError(error) ? "waiting for" : "the attempt failed at"} PostgreSQL at ${where} (${(error as Error).message}); ` +
            `${what} again in ${(delay / 1000).toFixed(1)}s`,
        ),
      onRecovered: () => log.info(`PostgreSQL at ${where} answers again; ${what}`),
    }).catch((error: Error) => {
      if (shutdown.requested) return undefined;
      const gaveUp = error instanceof GaveUpError;
      const explained = explainDatabaseFailure(gaveUp ? error.cause : error, db.target);
      if (!explained) throw error;
      throw gaveUp ? new DatabaseAccessError(explained.problem, `${explained.message} (waited ${ONE_SHOT_PATIENCE_MS / 1000} s)`) : explained;
    });
}

/**
 * A failure that stops the loader, said with the files and the database: the loader lock not free within a single
 * run's patience, or a database that takes no writes (switched read-only, or a hot standby).
 */
async function explainStop({ db, dir, database, where }: LoaderOptions, error: unknown, files: readonly CheckedFile[]): Promise<unknown> {
  const what = `${join(dir, files[0]!.name)}${files.length > 1 ? ` and ${files.length - 1} more files` : ""}`;
  if (error instanceof LoaderLockError) return new Error(`cannot load ${what} into ${where}: ${error.message}`);
  if ((error as { code?: string }).code !== "25006") return error;
  const [state] = await db.sql<{ standby: boolean }[]>`select pg_is_in_recovery() as standby`.catch(() => [{ standby: false }]);
  const [why, then] = state?.standby
    ? ["the server is a hot standby (in recovery) and takes no writes", "point DATABASE_URL at the primary and start the loader again"]
    : [
        `the database is read-only (${(error as Error).message})`,
        `start the loader again once it takes writes (alter database "${database}" set default_transaction_read_only = off)`,
      ];
  return new Error(`cannot load ${what} into ${where}: ${why}. Nothing of these files was written; they wait in ${dir}: ${then}`);
}

/**
 * Checks a group's files (lib/load/read.ts checkFile); bad files are set aside (and counted), vanished ones
 * skipped; a file whose records turn out not to read while it loads is set aside then (leaveBad). A file that
 * was modified a moment ago is not judged yet, unless its name holds the hash of its content (the
 * consumer's files, renamed into place complete): it may still be being copied, and a half-copied file can
 * look like a good one.
 */
async function prepareGroup({ dir, log, totals, unsettled, young: youngFiles }: LoaderRun, files: readonly PendingFile[]): Promise<CheckedFile[]> {
  const prepared: CheckedFile[] = [];
  for (const { name, young } of files) {
    if (young) youngFiles.add(name);
    if (young && parseBatchFileName(name) === undefined && parseGapFileName(name) === undefined) {
      log.debug(`${name}: modified a moment ago, looked at again shortly`);
      unsettled.add(name);
      continue;
    }
    try {
      prepared.push(await checkFile(dir, name));
      unsettled.delete(name);
    } catch (error) {
      if ((error as { code?: string }).code === "ENOENT") {
        log.debug(`${name}: gone before it was read (another loader set it aside)`);
      } else if (error instanceof BadBatchFileError && young) {
        log.debug(`${name}: ${error.message}; modified a moment ago, looked at again shortly`);
        unsettled.add(name);
      } else if (error instanceof BadBatchFileError) {
        totals.failed++;
        log.error(`${join(dir, name)}: ${error.message}; moved to ${dir}/failed/`);
        await setAside(dir, name, error.message);
      } else throw error;
    }
  }
  return prepared;
}

/**
 * One group: together; after a refusal of data, file by file; a single file then row by row (loadRowByRow).
 * Any other error stops the loader.
 */
async function loadGroup(run: LoaderRun, files: CheckedFile[]): Promise<FileResult[] | undefined> {
  if (files.length === 0) return [];
  const label = files.length === 1 ? `loading ${files[0]!.name}` : `loading ${files.length} files from ${files[0]!.name}`;
  try {
    return await run.persist(label, () => commitFiles(run.db, files, { lockWaitMs: run.lockWaitMs }));
  } catch (error) {
    if (error instanceof FileChangedError) return await loadGroup(run, leaveChanged(run, files, error));
    if (error instanceof BadBatchFileError && error.file) return await loadGroup(run, await leaveBad(run, files, error));
    if (!isDataError(error)) throw await explainStop(run, error, files);
    if (files.length === 1) return await loadRowByRow(run, files[0]!, error);
    const results: FileResult[] = [];
    for (const file of files) {
      const loaded = await loadGroup(run, [file]);
      if (loaded === undefined) return undefined;
      results.push(...loaded);
    }
    return results;
  }
}

/**
 * The group without a file that changed after it was checked (nothing of the group was kept): the file is
 * looked at again on the next pass, as a file being written.
 */
function leaveChanged({ log, unsettled }: LoaderRun, files: readonly CheckedFile[], error: FileChangedError): CheckedFile[] {
  log.warn(`${error.message}; looked at again shortly`);
  unsettled.add(error.file);
  return files.filter((f) => f.name !== error.file);
}

/**
 * The group without a file whose records turned out not to read while it was loaded (nothing of the group was
 * kept): the file is set aside, or looked at again shortly when it was modified a moment ago.
 */
async function leaveBad(run: LoaderRun, files: readonly CheckedFile[], error: BadBatchFileError): Promise<CheckedFile[]> {
  const { dir, log, totals, unsettled, young } = run;
  const name = error.file!;
  if (young.has(name)) {
    log.debug(`${name}: ${error.message}; modified a moment ago, looked at again shortly`);
    unsettled.add(name);
  } else {
    totals.failed++;
    log.error(`${join(dir, name)}: ${error.message}; moved to ${dir}/failed/`);
    await setAside(dir, name, error.message);
  }
  return files.filter((f) => f.name !== name);
}

/**
 * A file whose COPY PostgreSQL refused (`error`), loaded row by row: the refused row becomes a rejection. A file
 * that PostgreSQL refuses even row by row (a value too large for an index entry, say) is set aside with the
 * reason, so the files after it still load.
 */
async function loadRowByRow(run: LoaderRun, file: CheckedFile, error: unknown): Promise<FileResult[] | undefined> {
  const { db, dir, log, totals, persist } = run;
  const { name } = file;
  log.warn(`${name}: PostgreSQL refused a row (${(error as Error).message}); loading the file row by row to find it`);
  try {
    return await persist(`loading ${name} row by row`, () => commitFiles(db, [file], { isolate: true }));
  } catch (refused) {
    if (refused instanceof FileChangedError) return loadGroup(run, leaveChanged(run, [file], refused));
    if (refused instanceof BadBatchFileError && refused.file) return loadGroup(run, await leaveBad(run, [file], refused));
    if (!isDataError(refused)) throw refused;
    const reason = `PostgreSQL refused the file even row by row: ${(refused as Error).message}`;
    totals.failed++;
    log.error(`${join(dir, name)}: ${reason}; moved to ${dir}/failed/`);
    await setAside(dir, name, reason);
    return [];
  }
}

/** Counts a file's result and says what needs saying: lost offsets, rows of another source, rejected rows. */
async function recordResult({ dir, log, totals }: LoaderRun, result: FileResult): Promise<void> {
  if (result.status === "already-loaded") {
    totals.skipped++;
    return;
  }
  totals.files++;
  totals.records += result.records;
  totals.inserted += result.inserted;
  totals.duplicates += result.duplicates;
  totals.rejected += result.rejected;
  totals.warnings += result.warnings;
  totals.resolved += result.resolved;
  totals.crossSource += result.crossSource.length;
  log.debug(`${result.name}: inserted=${result.inserted} duplicates=${result.duplicates} rejected=${result.rejected}`);
  for (const range of result.lost) {
    totals.lost++;
    log.warn(`${result.name}: recorded in lost_offsets: ${range.reason}`);
  }
  for (const line of describeCrossSource(result.name, result.crossSource)) log.warn(line);
  if (result.rejections.length > 0) {
    log.warn(`${result.name}: ${result.rejected} rows rejected, see ${dir}/rejected/${result.name}`);
    await writeRejects(dir, result.name, result.rejections).catch((error: Error) =>
      log.warn(`could not write ${dir}/rejected/${result.name} (${error.message}); the rows are in rejected_rows`),
    );
  }
}

/**
 * --watch: one line per group it loaded, with what the group's rows became and how many orders the table holds
 * now, e.g. "3 files: inserted=280 duplicates=20 rejected=0 (orders total 10274)". Files whose content was
 * loaded before are not counted; a group of only those says nothing.
 */
async function reportGroup({ db, log, watch }: LoaderRun, results: readonly FileResult[]): Promise<void> {
  const loaded = results.filter((r) => r.status === "loaded");
  if (!watch || loaded.length === 0 || !log.enabled("info")) return;
  const sum = (count: "inserted" | "duplicates" | "rejected") => loaded.reduce((n, r) => n + r[count], 0);
  // The total only informs the reader: when PostgreSQL does not answer now, the line goes without it.
  const [orders] = await db.sql<{ n: string }[]>`select count(*)::text as n from orders`.catch(() => []);
  log.info(
    `${loaded.length} file${loaded.length === 1 ? "" : "s"}: inserted=${sum("inserted")} duplicates=${sum("duplicates")} ` +
      `rejected=${sum("rejected")}${orders ? ` (orders total ${orders.n})` : ""}`,
  );
}

/**
 * Loads what is pending in the folder, group by group. The next group is checked (hashed) while this one's
 * transaction runs, and within a group each chunk is cleaned while PostgreSQL takes the one before it.
 * Returns false when it stopped early (a stop request while waiting for the database).
 */
async function loadPending(run: LoaderRun, done: LoadedFiles, recheck: Recheck): Promise<boolean> {
  const { dir, log, shutdown } = run;
  const began = performance.now();
  // Files left to settle are looked at again whether or not the folder reported them since.
  const unsettled = new Set(run.unsettled);
  run.unsettled.clear();
  run.young.clear();
  const pending = await pendingFiles(dir, done, Date.now(), (name) => unsettled.has(name) || recheck(name));
  if (pending.length === 0) return true;
  const stamps = new Map(pending.map((f) => [f.name, f.stamp]));
  const groups = groupFiles(pending);
  const progress = createProgress(log, "files", pending.length, 100);
  let next = groups[0] === undefined ? undefined : prepareGroup(run, groups[0]);
  let finished = 0;
  try {
    for (const [i, names] of groups.entries()) {
      if (shutdown.requested || !next) return false;
      const files = await next;
      // No collection here: each round of a group's transaction collects when due (lib/load/transaction.ts), which
      // keeps a group of small files and one file of 100,000 rows alike within bounds.
      const after = groups[i + 1];
      next = after === undefined ? undefined : prepareGroup(run, after);
      next?.catch(() => undefined); // awaited in the next round; a failure must not count as unhandled meanwhile
      const results = await loadGroup(run, files);
      if (results === undefined) return false;
      const hashes = new Map(files.map((f) => [f.name, f.hash]));
      const loaded = results.map((r) => ({ name: r.name, hash: hashes.get(r.name)!, stamp: stamps.get(r.name)! }));
      for (const [i, result] of results.entries()) {
        await recordResult(run, result);
        done.loaded(result.name, loaded[i]!.stamp, loaded[i]!.hash);
      }
      await reportGroup(run, results);
      // --watch applies the policy as it goes; the days of `delete` are checked by the hourly sweep.
      if (run.watch && (run.retention.mode === "move" || run.retention.days === 0)) await retain(run, loaded);
      progress.update((finished += names.length));
    }
    return true;
  } finally {
    await next?.catch(() => undefined); // a prefetch left behind by a stop: let it settle before the process ends
    progress.done();
    run.totals.busyMs += performance.now() - began;
  }
}

/**
 * The retention policy applied to loaded files at the top of the folder, counted in the totals. It never fails
 * the load: when it cannot read the ledger or a file, it says so, and the files wait for the next time.
 */
async function retain(run: LoaderRun, files: readonly LoadedFile[]): Promise<void> {
  const { db, dir, retention, log, totals } = run;
  try {
    const counts = await retainLoaded(db.sql, dir, files, retention, log);
    totals.moved += counts.moved;
    totals.deleted += counts.deleted;
  } catch (error) {
    log.warn(`could not apply the retention policy to ${files.length} loaded files in ${dir} (${(error as Error).message}); they stay, tried again later`);
  }
}

/**
 * The retention policy over the whole folder: every loaded file at its top (by what `done` knows of each),
 * then the files of DIR/loaded/ whose load is older than the policy's days.
 */
async function sweepFolder(run: LoaderRun, done: LoadedFiles): Promise<void> {
  const { db, dir, retention, log, totals } = run;
  if (retention.mode === "keep") return;
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
  const loaded: LoadedFile[] = [];
  for (const entry of entries.filter((e) => e.isFile() || e.isSymbolicLink())) {
    const info = await stat(join(dir, entry.name)).catch(() => undefined);
    const hash = info?.isFile() ? done.hashOf(entry.name, stampOf(info)) : undefined;
    if (info && hash) loaded.push({ name: entry.name, hash, stamp: stampOf(info) });
  }
  await retain(run, loaded);
  try {
    totals.deleted += await expireMoved(db.sql, dir, retention, log);
  } catch (error) {
    log.warn(`could not delete the expired files of ${join(dir, "loaded")}/ (${(error as Error).message}); tried again later`);
  }
}

/** The loader's steps for one run: wait out lost connections, read a group, load it, count and report. */
function createLoader(options: LoaderOptions) {
  const run: LoaderRun = {
    ...options,
    totals: {
      files: 0,
      skipped: 0,
      failed: 0,
      records: 0,
      inserted: 0,
      duplicates: 0,
      rejected: 0,
      warnings: 0,
      resolved: 0,
      crossSource: 0,
      lost: 0,
      moved: 0,
      deleted: 0,
      busyMs: 0,
    },
    unsettled: new Set<string>(),
    young: new Set<string>(),
    persist: createPersist(options),
    lockWaitMs: options.watch ? LOCK_WAIT_MS : ONE_SHOT_PATIENCE_MS,
  };
  return {
    totals: run.totals,
    persist: run.persist,
    loadPending: (done: LoadedFiles, recheck: Recheck = RECHECK_ALL) => loadPending(run, done, recheck),
    sweepFolder: (done: LoadedFiles) => sweepFolder(run, done),
    unsettled: run.unsettled,
  };
}

/**
 * The files loaded before, from the ledger, once the loader's tables are known to be there (make migrate creates
 * them; sql/007 and sql/008 added the loader lock and orders.same_as_source).
 */
async function readLedger(persist: Persist, db: Database, where: string): Promise<LoadedFiles> {
  await persist("checking the tables", async () => {
    const [row] = await db.sql<{ ok: string | null; lock: string | null; marks: boolean }[]>`
      select to_regclass('loaded_files')::text as ok, to_regclass('loader_lock')::text as lock,
             exists (
               select from information_schema.columns
               where table_schema = current_schema() and table_name = 'orders' and column_name = 'same_as_source'
             ) as marks
    `;
    if (!row?.ok) throw new Error(`${where} has no loader tables: run "make migrate" first`);
    if (!row.lock) throw new Error(`${where} has no table loader_lock (sql/007): run "make migrate" first`);
    if (!row.marks) throw new Error(`${where} has no column orders.same_as_source (sql/008): run "make migrate" first`);
  });
  const ledger = new Map<string, Set<string>>();
  const rows = await persist("reading the ledger", () => db.sql<{ file_name: string; sha256: string }[]>`select file_name, sha256 from loaded_files`);
  for (const { file_name, sha256 } of rows ?? []) ledger.set(file_name, (ledger.get(file_name) ?? new Set()).add(sha256));
  return new LoadedFiles(ledger);
}

/** The retention policy: the flags win over BATCH_RETENTION and BATCH_RETENTION_DAYS; messages name the one used. */
export function retentionFrom(flags: { retention?: string; "retention-days"?: string }, config: Config): RetentionPolicy {
  const mode = flags.retention === undefined ? config.batchRetention : parseRetentionMode(flags.retention, "--retention");
  const days = flags["retention-days"] === undefined ? config.batchRetentionDays : parseRetentionDays(flags["retention-days"], "--retention-days");
  return retentionPolicy(mode, days, {
    mode: flags.retention === undefined ? "BATCH_RETENTION" : "--retention",
    days: flags["retention-days"] === undefined ? "BATCH_RETENTION_DAYS" : "--retention-days",
  });
}

/**
 * Loads until nothing is left (a single run, then the retention policy over the folder) or until a stop
 * (--watch: the policy over the folder at the start and once an hour, besides each group as it commits).
 */
async function loadUntilDone(loader: ReturnType<typeof createLoader>, done: LoadedFiles, dir: string, watch: boolean, shutdown: Shutdown): Promise<void> {
  let swept = -Infinity;
  // The folder is watched, and also looked at twice a second, since not every filesystem reports changes.
  const changes = new FolderChanges(dir);
  try {
    while (!shutdown.requested) {
      if (!(await loader.loadPending(done, watch ? changes.take() : RECHECK_ALL))) return;
      if (watch && performance.now() - swept >= RETENTION_SWEEP_MS) {
        await loader.sweepFolder(done);
        swept = performance.now();
      }
      // A single run ends when nothing is left; it waits only for files still being written.
      if (!watch && loader.unsettled.size === 0) break;
      await changes.next(500, shutdown.signal);
    }
  } finally {
    changes.close();
  }
  if (!watch && !shutdown.requested) await loader.sweepFolder(done);
}

function summaryLine(totals: Totals, ms: number): string {
  return (
    `done: files=${totals.files} rows=${totals.records} inserted=${totals.inserted} duplicates=${totals.duplicates} ` +
    `rejected=${totals.rejected} already_loaded=${totals.skipped} failed_files=${totals.failed} ` +
    `warnings=${totals.warnings} resolved=${totals.resolved} cross_source=${totals.crossSource} lost_offsets=${totals.lost} ` +
    `moved=${totals.moved} deleted=${totals.deleted} ` +
    // --watch spends most of its time waiting for files, a single run some waiting for PostgreSQL: not in the rate.
    `in ${formatDuration(ms)}${rateWhile(totals.records, totals.busyMs, "while loading files")}`
  );
}

async function main(): Promise<void> {
  const flags = parseCli(command);
  if (!flags) return;
  const config = readConfig();
  const log = createLogger("load", config.logLevel, config.logProgress);
  const dir = flags.dir ?? config.batchesDir;
  const where = describeDatabase(config.database);
  const watch = flags.watch === true;
  const retention = retentionFrom(flags, config);
  await mkdir(dir, { recursive: true });
  // Statements are not prepared: the duplicate check must use the identity index however large orders has grown
  // since it was first planned (a generic plan made while the table was empty scans it whole). Not
  // plan_cache_mode=force_custom_plan: that also re-plans the foreign-key check of every row COPY inserts.
  // No statement timeout from the server's or role's defaults: a big file's COPY is one statement, and a
  // timeout would cancel it on every attempt.
  const db = openDatabase(config.database, log, { max: 1, prepare: false, parameters: { statement_timeout: "0" } });
  const shutdown = createShutdown(log);
  shutdown.onStop("close database connections", () => db.end(5));
  const loader = createLoader({ db, dir, database: config.database.database, where, watch, retention, log, shutdown });

  const started = performance.now();
  try {
    const done = await readLedger(loader.persist, db, where);
    const kept = retention.mode === "keep" ? "" : `; ${describeRetention(retention, dir)}`;
    log.info(`loading ${dir}/*.csv into ${where}${watch ? " (watching for new files, Ctrl-C to stop)" : ""}${kept}`);
    await loadUntilDone(loader, done, dir, watch, shutdown);
  } finally {
    await shutdown.run();
  }
  const { totals } = loader;
  log.info(summaryLine(totals, performance.now() - started));
  if (totals.crossSource > 0) {
    log.warn(`${totals.crossSource} rows loaded repeat rows of another source and count twice in every total: see the warnings above, or make status`);
  }
  if (totals.failed > 0) process.exitCode = 1;
}

if (import.meta.main) main().catch(fail);
