// What becomes of a batch file once it is loaded (BATCH_RETENTION and BATCH_RETENTION_DAYS, or load.ts
// --retention and --retention-days):
// - keep (the default): it stays in the batch folder;
// - move: it is moved to DIR/loaded/YYYY-MM-DD/, the local date of its load, once its transaction committed;
// - delete: it is deleted once its load is older than BATCH_RETENTION_DAYS days (0: at once).
// With move, BATCH_RETENTION_DAYS (when set) deletes the moved files once their load is that old.
//
// "Loaded" is the ledger's word, never a name's: a file is loaded when the sha256 of its content is in
// loaded_files, and it is touched only while it still looks as it did when its content was hashed (size, inode,
// times: the loader keeps that for each file it judged). A file written later under a loaded file's name is
// another file, and stays; so does a symbolic link (to a file in loaded/, or elsewhere), which is never followed.
// failed/ and rejected/ are never looked at. The ledger keeps its rows for moved and deleted files, so the same
// file written again (a replay) is still known, and loads nothing twice.
// A move or a delete that fails (disk, permissions) is logged with the file and the error; the load goes on,
// and the file is tried again later.

import { existsSync, type Stats } from "node:fs";
import { lstat, mkdir, readdir, rename, rmdir, unlink } from "node:fs/promises";
import { join } from "node:path";
import { sha256 } from "../batch.ts";
import type { RetentionMode } from "../config.ts";
import type { Sql } from "../db.ts";
import type { Logger } from "../log.ts";

export interface RetentionPolicy {
  readonly mode: RetentionMode;
  /** delete loaded files whose load is older than this many days; undefined: never */
  readonly days: number | undefined;
}

/** The folder of DIR that moved files go to, one subfolder per day of load. */
export const LOADED_DIR = "loaded";

/**
 * How a file looked: a file put in its place, or written over, looks different (size, inode, or a change
 * time, which no tool can set back).
 */
export interface Stamp {
  readonly size: number;
  readonly mtimeMs: number;
  readonly ctimeMs: number;
  readonly ino: number;
}

export function stampOf(info: Stats): Stamp {
  return { size: info.size, mtimeMs: info.mtimeMs, ctimeMs: info.ctimeMs, ino: info.ino };
}

export function sameStamp(a: Stamp, b: Stamp): boolean {
  return a.size === b.size && a.mtimeMs === b.mtimeMs && a.ctimeMs === b.ctimeMs && a.ino === b.ino;
}

/** A file at the top of the batch folder whose content the loader knows to be loaded: its hash and its look then. */
export interface LoadedFile {
  readonly name: string;
  readonly hash: string;
  readonly stamp: Stamp;
}

export interface RetentionCounts {
  moved: number;
  deleted: number;
}

/** The local date of `at` as YYYY-MM-DD: the folder of DIR/loaded/ a file loaded then goes to. */
export function loadDay(at: Date): string {
  const pad = (n: number) => String(n).padStart(2, "0");
  return `${at.getFullYear()}-${pad(at.getMonth() + 1)}-${pad(at.getDate())}`;
}

/** A checked policy: `delete` needs a number of days, `keep` takes none. `names` say where each value came from. */
export function retentionPolicy(mode: RetentionMode, days: number | undefined, names: { mode: string; days: string }): RetentionPolicy {
  // "BATCH_RETENTION=delete" for a variable, "--retention delete" for a flag
  const setting = (value: string) => `${names.mode}${names.mode.startsWith("--") ? " " : "="}${value}`;
  if (mode === "delete" && days === undefined) {
    throw new Error(`${setting("delete")} needs ${names.days}: the number of days a loaded file is kept (0: deleted right after its load)`);
  }
  if (mode === "keep" && days !== undefined) {
    throw new Error(`${names.days} is set, but ${setting("keep")} keeps every file: set ${names.mode} to delete (or move) to delete loaded files after ${days} days`);
  }
  return Object.freeze({ mode, days });
}

/** The policy in words, for the loader's first line: "moved to batches/loaded/<day>/, deleted after 30 days". */
export function describeRetention(policy: RetentionPolicy, dir: string): string {
  const after = policy.days === 0 ? "deleted at once" : `deleted after ${policy.days} day${policy.days === 1 ? "" : "s"}`;
  if (policy.mode === "keep") return "loaded files are kept";
  if (policy.mode === "delete") return `loaded files are ${after}`;
  return `loaded files are moved to ${join(dir, LOADED_DIR)}/<day of load>/${policy.days === undefined ? "" : ` and ${after}`}`;
}

interface LedgerEntry {
  readonly loadedAt: Date;
  /** the load is older than the policy's days (by the database's clock) */
  readonly expired: boolean;
}

/** The ledger's rows for these contents: when each was loaded, and whether that is longer ago than `days`. */
async function ledgerEntries(sql: Sql, hashes: readonly string[], days: number | undefined): Promise<Map<string, LedgerEntry>> {
  if (hashes.length === 0) return new Map();
  const rows = await sql<{ sha256: string; loaded_at: Date; expired: boolean }[]>`
    select sha256, loaded_at, ${days ?? null}::int is not null and loaded_at < now() - make_interval(days => ${days ?? 0}::int) as expired
    from loaded_files
    where sha256 = any(${hashes}::char(64)[])
  `;
  return new Map(rows.map((r) => [r.sha256, { loadedAt: r.loaded_at, expired: r.expired }]));
}

/**
 * Moves `name` from `dir` to DIR/loaded/<day>/. A file of that name already there with other content is kept:
 * this one goes in as NAME.2.csv (then .3, ...); one with the same content (the same file written again) is
 * replaced by it.
 */
async function moveFile(dir: string, name: string, hash: string, day: string): Promise<string> {
  const folder = join(dir, LOADED_DIR, day);
  await mkdir(folder, { recursive: true });
  const source = join(dir, name);
  let target = join(folder, name);
  for (let n = 2; existsSync(target) && sha256(await Bun.file(target).bytes()) !== hash; n++) {
    target = join(folder, name.replace(/(\.csv)?$/, `.${n}$1`));
  }
  // The same file under both names (a hard link back to the top): rename would do nothing; the top name goes.
  const [from, to] = await Promise.all([lstat(source), lstat(target).catch(() => undefined)]);
  if (to && to.ino === from.ino && to.dev === from.dev) await unlink(source);
  else await rename(source, target);
  return target;
}

/**
 * Applies the policy to files at the top of `dir` that the loader knows to be loaded: a file whose load is older
 * than the policy's days is deleted, any other is moved (move) or left (keep, delete). A file that changed since
 * it was hashed, or that the ledger does not hold, is left as it is. Returns what it moved and deleted.
 */
export async function retainLoaded(sql: Sql, dir: string, files: readonly LoadedFile[], policy: RetentionPolicy, log: Logger): Promise<RetentionCounts> {
  const counts = { moved: 0, deleted: 0 };
  if (policy.mode === "keep" || files.length === 0) return counts;
  const failures: { verb: string; path: string; error: NodeJS.ErrnoException }[] = [];
  const ledger = await ledgerEntries(sql, [...new Set(files.map((f) => f.hash))], policy.days);
  for (const file of files) {
    const entry = ledger.get(file.hash);
    if (!entry || (!entry.expired && policy.mode !== "move")) continue;
    const path = join(dir, file.name);
    // Not followed: a link is someone's way to a file (one in loaded/, one elsewhere), and moving or deleting the
    // link would break it, or put it in place of the very file it points to.
    const info = await lstat(path).catch(() => undefined);
    if (info?.isSymbolicLink()) {
      log.debug(`${path}: loaded, but a symbolic link; left as it is`);
      continue;
    }
    if (!info || !sameStamp(stampOf(info), file.stamp)) continue; // gone, or written over since: not the loaded file
    const verb = entry.expired ? "delete" : "move";
    try {
      if (entry.expired) {
        await unlink(path);
        counts.deleted++;
        log.debug(`${path}: loaded ${entry.loadedAt.toISOString()}, deleted`);
      } else {
        const target = await moveFile(dir, file.name, file.hash, loadDay(entry.loadedAt));
        counts.moved++;
        log.debug(`${path}: loaded, moved to ${target}`);
      }
    } catch (error) {
      failures.push({ verb, path, error: error as NodeJS.ErrnoException });
    }
  }
  warnFailures(failures, log);
  return counts;
}

/**
 * One warning per kind of failure (what was tried, and the error's code): a full disk fails every move of a
 * folder of thousands of files alike, and says so once, with the count and the first file.
 */
function warnFailures(failures: readonly { verb: string; path: string; error: NodeJS.ErrnoException }[], log: Logger): void {
  const kinds = Map.groupBy(failures, (f) => `${f.verb} ${f.error.code ?? f.error.message}`);
  for (const [, group] of kinds) {
    const { verb, path, error } = group[0]!;
    if (group.length === 1) log.warn(`could not ${verb} ${path} (${error.message}); it is loaded, stays where it is, and is tried again later`);
    else log.warn(`could not ${verb} ${group.length} loaded files, the first ${path} (${error.message}); they are loaded, stay where they are, and are tried again later`);
  }
}

/**
 * Deletes the files of DIR/loaded/ whose load is older than the policy's days. Only the folders of days that old
 * are read (a file goes to the folder of its day of load), and in them only files whose content the ledger holds
 * as loaded that long ago are deleted; a folder left empty is removed.
 */
export async function expireMoved(sql: Sql, dir: string, policy: RetentionPolicy, log: Logger, now = new Date()): Promise<number> {
  if (policy.days === undefined) return 0;
  const root = join(dir, LOADED_DIR);
  const last = loadDay(new Date(now.getTime() - policy.days * 86_400_000));
  const days = (await readdir(root, { withFileTypes: true }).catch(() => []))
    .filter((d) => d.isDirectory() && /^\d{4}-\d{2}-\d{2}$/.test(d.name) && d.name <= last)
    .map((d) => d.name);
  let deleted = 0;
  for (const day of days) {
    const folder = join(root, day);
    const names = (await readdir(folder, { withFileTypes: true })).filter((d) => d.isFile()).map((d) => d.name);
    const hashes = new Map<string, string>();
    for (const name of names) hashes.set(name, sha256(await Bun.file(join(folder, name)).bytes()));
    const ledger = await ledgerEntries(sql, [...new Set(hashes.values())], policy.days);
    for (const [name, hash] of hashes) {
      if (!ledger.get(hash)?.expired) continue;
      await unlink(join(folder, name)).then(
        () => deleted++,
        (error: Error) => log.warn(`could not delete ${join(folder, name)} (${error.message}); it is tried again later`),
      );
    }
    await rmdir(folder).catch(() => undefined); // not empty: files that are not due yet, or not ours
  }
  return deleted;
}
