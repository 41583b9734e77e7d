// The loaders' turn: a load's transaction first locks the one row of loader_lock (sql/007) and holds it until it
// commits, so two loaders never decide "is this row new?" at the same time. Locking that row needs UPDATE on the
// table, which only its owner (the loader's role) and superusers have: no other role can make loaders wait. (It
// was an advisory lock before, which any role could take, and the loaders then waited without end.)
//
// The wait is bounded: a load that does not get the row within its patience gives up with a message that names
// the session holding it (pid, user, application, since when), found through the row's lock and pg_locks.

import type { Sql, TransactionSql } from "../db.ts";

/** How long one attempt of `load.ts --watch` waits for the lock before it says who holds it and tries again. */
export const LOCK_WAIT_MS = 10_000;

/** Raised inside the transaction when the lock was not free in time; turned into LoaderLockError after rollback. */
export class LoaderLockTimeout extends Error {
  override name = "LoaderLockTimeout";
}

/**
 * The loader lock was not free within `waitMs`. Carries lock_not_available (55P03), so `--watch` waits on; the
 * message names the holder.
 */
export class LoaderLockError extends Error {
  override name = "LoaderLockError";
  readonly code = "55P03";
}

export interface LockHolder {
  readonly pid: number;
  readonly user: string | null;
  readonly application: string | null;
  readonly client: string | null;
  readonly xactStart: Date | null;
  readonly state: string | null;
}

/**
 * Locks the loader's row for the rest of the transaction, waiting at most `waitMs`; returns the transaction's id.
 * lock_timeout bounds this wait alone: the statements after it wait as the server's own settings say.
 */
export async function takeLoaderLock(tx: TransactionSql, waitMs: number): Promise<string> {
  await tx.unsafe(`set local lock_timeout = ${Math.max(1, Math.round(waitMs))}`);
  let rows: { xid: string }[];
  try {
    rows = await tx<{ xid: string }[]>`select pg_current_xact_id()::text as xid from loader_lock where id = 1 for update`;
  } catch (error) {
    if ((error as { code?: string }).code === "55P03") throw new LoaderLockTimeout(`loader_lock was not free within ${waitMs} ms`);
    throw error;
  }
  if (rows.length === 0) throw new Error("table loader_lock has lost its row: insert into loader_lock (id) values (1)");
  await tx.unsafe("set local lock_timeout to default");
  return rows[0]!.xid;
}

/**
 * The session holding the loader's row: a row locked by a transaction names it in xmax, and that transaction
 * holds a lock on its own id, which pg_locks ties to a backend. Undefined when nobody holds it (any more).
 */
export async function lockHolder(sql: Sql): Promise<LockHolder | undefined> {
  const [row] = await sql<{ pid: number; user: string | null; application: string | null; client: string | null; xact_start: Date | null; state: string | null }[]>`
    select a.pid, a.usename as user, a.application_name as application, host(a.client_addr) as client, a.xact_start, a.state
    from loader_lock l
    join pg_locks k on k.locktype = 'transactionid' and k.transactionid = l.xmax and k.granted
    join pg_stat_activity a on a.pid = k.pid
    where l.id = 1 and a.pid <> pg_backend_pid()
    limit 1
  `;
  if (!row) return undefined;
  return { pid: row.pid, user: row.user, application: row.application, client: row.client, xactStart: row.xact_start, state: row.state };
}

/** "pid 4242 (user postgres, application "psql", from 127.0.0.1, transaction open since 2026-...Z, 41 s, idle in transaction)" */
export function describeHolder(holder: LockHolder, now = new Date()): string {
  const parts = [
    `user ${holder.user ?? "?"}`,
    `application ${JSON.stringify(holder.application ?? "")}`,
    holder.client ? `from ${holder.client}` : "on the server's own socket",
    holder.xactStart
      ? `transaction open since ${holder.xactStart.toISOString()}, ${Math.round((now.getTime() - holder.xactStart.getTime()) / 1000)} s`
      : undefined,
    holder.state ?? undefined,
  ].filter((p) => p !== undefined);
  return `pid ${holder.pid} (${parts.join(", ")})`;
}

/** The error for a lock that was not free within `waitMs`, naming who holds it now. */
export async function loaderLockError(sql: Sql, waitMs: number): Promise<LoaderLockError> {
  const holder = await lockHolder(sql).catch(() => undefined);
  const who = holder
    ? `held by ${describeHolder(holder)}: another loader, or a session that locked it by hand. It is free when that ` +
      `transaction ends; select pg_terminate_backend(${holder.pid}) ends it now`
    : "its holder ended meanwhile, or is a session this role cannot see";
  return new LoaderLockError(`the loader lock (the row of table loader_lock) was not free within ${Math.round(waitMs / 1000)} s: ${who}`);
}
