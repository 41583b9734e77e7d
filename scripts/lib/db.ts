// PostgreSQL through postgres.js, configured once: the target from config, server notices to our logger, the
// script's own name as application_name (load, dashboard, migrate, ...: pg_stat_activity shows who is who, and
// a check for a running loader looks for application_name = 'load'), and the few things the driver does not do
// safely by itself:
//
// - openDatabase: a pool that is thrown away and opened afresh after a connection error, and transactions
//   whose statements cannot reach a later session once their own connection is gone;
// - copyIn: COPY FROM STDIN that settles when the server refuses the data instead of hanging;
// - isConnectionError: "the server is not there right now" (wait and retry) versus everything else;
// - explainDatabaseFailure: why PostgreSQL cannot be used at all (the server does not answer, the database does
//   not exist, the login is refused), in words that name the setting, the address and the fix.

import { basename } from "node:path";
import postgres, { type PendingQuery, type Row, type Sql, type TransactionSql } from "postgres";
import type { DatabaseTarget } from "./config.ts";
import type { Logger } from "./log.ts";

export type { Sql, TransactionSql };

export interface ConnectOptions {
  /** pool size (default 2) */
  readonly max?: number;
  /** another database on the same server */
  readonly database?: string;
  /** startup parameters (statement_timeout, ...) */
  readonly parameters?: Readonly<Record<string, string>>;
  /**
   * false: no named prepared statements, so every statement is planned for its own values (default true). A
   * statement prepared once is planned generically after five runs; a generic plan made while a table was small
   * may scan it whole once it is large.
   */
  readonly prepare?: boolean;
  /** told of every NOTIFY on a channel this pool LISTENs to */
  readonly onnotify?: (channel: string, payload: string) => void;
  /** told when one of the pool's connections closes (the server went away, or it was cut) */
  readonly onclose?: () => void;
  /** keep connections open however long they are idle (a LISTEN connection) */
  readonly keepOpen?: boolean;
}

/**
 * The application_name of every session this process opens: the file name of the script it runs, without its
 * extension (scripts/load.ts: "load"; a test file: "bi_reader.test"). Taken from the entry point rather than
 * given by each script, so a script cannot show under another's name; ConnectOptions.parameters may override it.
 */
export function applicationName(main: string = Bun.main): string {
  return basename(main).replace(/\.[cm]?[jt]sx?$/, "").slice(0, 63);
}

export function connect(target: DatabaseTarget, log: Logger, options: ConnectOptions = {}): Sql {
  installDriverGuard(log);
  return postgres({
    host: target.host,
    port: target.port,
    database: options.database ?? target.database,
    user: target.user,
    password: target.password,
    ...(target.ssl ? { ssl: target.ssl as "require" } : {}),
    max: options.max ?? 2,
    ...(options.prepare === false ? { prepare: false } : {}),
    onnotice: (notice: postgres.Notice) => log.debug(`postgres: ${notice.message}`),
    connection: { application_name: applicationName(), ...options.parameters },
    // Fail fast with a clear message when the server is down, instead of waiting the 30 s default.
    connect_timeout: 5,
    ...(options.onnotify ? { onnotify: options.onnotify } : {}),
    ...(options.onclose ? { onclose: options.onclose } : {}),
    ...(options.keepOpen ? { idle_timeout: null as unknown as number, max_lifetime: null as unknown as number } : {}),
  });
}

/** The `postgres` database of the same server, for creating and dropping databases (one connection). */
export function maintenance(target: DatabaseTarget, log: Logger): Sql {
  return connect(target, log, { max: 1, database: "postgres" });
}

/** Drops the database `name` on the server `server` is on, if it is there, closing its sessions first. */
export async function dropDatabase(server: DatabaseTarget, name: string, log: Logger): Promise<void> {
  const admin = maintenance(server, log);
  try {
    await admin`drop database if exists ${admin(name)} with (force)`;
  } finally {
    await admin.end({ timeout: 5 });
  }
}

/** The same server and credentials, another database. */
export function withDatabase(target: DatabaseTarget, database: string): DatabaseTarget {
  return { ...target, database };
}

/** "host:port/db" for messages, without the password. */
export function describeDatabase(target: DatabaseTarget): string {
  return `${target.host}:${target.port}/${target.database}`;
}

/** A connection URL for tools that take one (psql, child processes); holds the password: never log it. */
export function databaseUrl(target: DatabaseTarget): string {
  const auth = `${encodeURIComponent(target.user)}${target.password ? `:${encodeURIComponent(target.password)}` : ""}`;
  const host = target.host.startsWith("/") ? "" : target.host.includes(":") ? `[${target.host}]` : target.host;
  const params = new URLSearchParams();
  if (target.host.startsWith("/")) params.set("host", target.host);
  if (target.ssl) params.set("sslmode", target.ssl);
  const query = params.size > 0 ? `?${params}` : "";
  return `postgres://${auth}@${host}:${target.port}/${encodeURIComponent(target.database)}${query}`;
}

const CONNECTION_CODES = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENOTFOUND",
  "EAI_AGAIN",
  "CONNECTION_CLOSED",
  "CONNECTION_ENDED",
  "CONNECTION_DESTROYED",
  "CONNECT_TIMEOUT",
]);

/**
 * Is this "the server is not there right now" (worth waiting for) rather than a problem with the data?
 * Socket errors, postgres.js connection errors, SQLSTATE class 08 (connection exception) and 57P01-57P03
 * (administrator shutdown or termination, crash shutdown, cannot connect now).
 */
export function isConnectionError(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" && (CONNECTION_CODES.has(code) || code.startsWith("08") || /^57P0[1-3]$/.test(code));
}

/** Why PostgreSQL cannot be used at all: each has its own fix. */
export type DatabaseProblem = "server-down" | "no-database" | "login-refused";

/** PostgreSQL cannot be used at all; the message names the setting, the address and the fix, never a password. */
export class DatabaseAccessError extends Error {
  override name = "DatabaseAccessError";
  constructor(
    readonly problem: DatabaseProblem,
    message: string,
  ) {
    super(message);
  }
}

/**
 * Which of the three `error` is: the server does not answer (a socket error, SQLSTATE class 08, 57P01-57P03), the
 * database does not exist (3D000), or the login is refused (28P01 wrong password, 28000 no such role or no
 * pg_hba.conf entry). Undefined for anything else.
 */
export function databaseProblem(error: unknown): DatabaseProblem | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  if (code === "3D000") return "no-database";
  if (code === "28P01" || code === "28000") return "login-refused";
  return isConnectionError(error) ? "server-down" : undefined;
}

/** The driver's and the kernel's codes for a server that does not answer, in words. */
const UNREACHABLE_REASONS: Readonly<Record<string, string>> = {
  ECONNREFUSED: "connection refused",
  ECONNRESET: "connection reset",
  ETIMEDOUT: "timed out",
  EHOSTUNREACH: "host unreachable",
  ENOTFOUND: "no such host",
  EAI_AGAIN: "the host name cannot be looked up now",
  CONNECT_TIMEOUT: "no answer within 5 s",
  "57P01": "the server is shutting down",
  "57P02": "the server is shutting down",
  "57P03": "the server is starting up or shutting down",
};

/**
 * `error` as a DatabaseAccessError when it means PostgreSQL at `target` cannot be used at all, with what to do:
 *   PostgreSQL at 127.0.0.1:5432/sales is unreachable (connection refused; DATABASE_URL): is it up? make up
 *   the database "sales" does not exist on the PostgreSQL server at 127.0.0.1:5432 (DATABASE_URL): make migrate creates it
 *   PostgreSQL at 127.0.0.1:5432 refused the password of user "sales" (DATABASE_URL): check the user and password there
 * Undefined for any other error. The one place every script turns these failures into words.
 */
export function explainDatabaseFailure(error: unknown, target: DatabaseTarget): DatabaseAccessError | undefined {
  if (error instanceof DatabaseAccessError) return error;
  const problem = databaseProblem(error);
  if (!problem) return undefined;
  const server = `${target.host}:${target.port}`;
  const code = String((error as { code?: unknown }).code);
  const said = (error as Error).message;
  switch (problem) {
    case "no-database":
      return new DatabaseAccessError(problem, `the database "${target.database}" does not exist on the PostgreSQL server at ${server} (${target.setting}): make migrate creates it`);
    case "login-refused":
      if (target.loginHelp) {
        // A role whose password the pipeline gives (bi_reader): the fix is the pipeline's, not DATABASE_URL's.
        return new DatabaseAccessError(
          problem,
          code === "28P01"
            ? `PostgreSQL at ${server} refused the password of role "${target.user}": ${target.loginHelp}`
            : `PostgreSQL at ${server} refused role "${target.user}" (${said}): ${target.loginHelp}, or check the server's pg_hba.conf`,
        );
      }
      return new DatabaseAccessError(
        problem,
        code === "28P01"
          ? `PostgreSQL at ${server} refused the password of user "${target.user}" (${target.setting}): check the user and password there`
          : `PostgreSQL at ${server} refused user "${target.user}" (${said}; ${target.setting}): check the user there, or the server's pg_hba.conf`,
      );
    default:
      return new DatabaseAccessError(
        problem,
        `PostgreSQL at ${describeDatabase(target)} is unreachable (${UNREACHABLE_REASONS[code] ?? said}; ${target.setting}): is it up? make up`,
      );
  }
}

/** The words for a failed statement: explainDatabaseFailure's when it is one of those, else the error's own. */
export function describeDatabaseFailure(error: unknown, target: DatabaseTarget): string {
  return (explainDatabaseFailure(error, target) ?? (error as Error)).message;
}

/**
 * SQLSTATE classes of errors about the data itself: 22 data exception, 23 integrity constraint violation, 54
 * program limit exceeded (a value too large for an index entry or a row).
 */
export function isDataError(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" && /^(22|23|54)[0-9A-Z]{3}$/.test(code);
}

/**
 * Worth trying again as it was: the server went away (isConnectionError), or it gave up on this attempt for a
 * reason of its own: a cancelled statement (57014), class 40 (serialization failure, deadlock), a lock not
 * available (55P03), class 53 (out of disk, memory or connections).
 */
export function isRetryable(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return isConnectionError(error) || (typeof code === "string" && /^(57014|55P03|40[0-9A-Z]{3}|53[0-9A-Z]{3})$/.test(code));
}

let guardInstalled = false;

/**
 * Two faults of postgres.js 3.4.9 surface where no caller can catch them, when a connection is cut:
 * - a transaction that failed with its connection sends its ROLLBACK to the closed socket, and the driver's
 *   deferred write (connection.js, nextWrite) throws from a timer;
 * - a connection cut while it fetches the server's array types on connect (fetchArrayTypes) rejects a promise
 *   the driver never awaits.
 * Both concern a connection every statement of ours has already been told about (its statements were rejected
 * with the connection error and are retried on a fresh pool), so nothing is lost by ignoring them. Every other
 * uncaught exception or unhandled rejection still ends the process with its message, as it would without this.
 */
function installDriverGuard(log: Logger): void {
  if (guardInstalled) return;
  guardInstalled = true;
  process.on("uncaughtException", (error) => {
    if (error instanceof TypeError && /postgres[\\/]src[\\/]connection\.js/.test(error.stack ?? "") && /nextWrite/.test(error.stack ?? "")) {
      log.debug(`ignored a write to a closed PostgreSQL connection (${error.message})`);
      return;
    }
    log.error(`uncaught: ${error.stack ?? error.message}`);
    process.exit(1);
  });
  process.on("unhandledRejection", (reason) => {
    if (isConnectionError(reason)) {
      log.debug(`ignored a connection error no statement was waiting for (${(reason as Error).message})`);
      return;
    }
    log.error(`unhandled: ${(reason as Error)?.stack ?? String(reason)}`);
    process.exit(1);
  });
}

/** Thrown inside a transaction whose connection is gone: its next statement must not run anywhere. */
function closedTransactionError(): Error {
  return Object.assign(new Error("the transaction's connection was lost; it will be rolled back and run again"), {
    code: "CONNECTION_CLOSED",
  });
}

/**
 * A transaction's `tx` that refuses statements once `alive()` is false. postgres.js keeps the Connection object
 * of a transaction whose socket closed and reconnects it for the next caller: without this, a statement of the
 * failed transaction that was still on its way could run inside a later, unrelated session.
 */
function guarded(tx: TransactionSql, alive: () => boolean): TransactionSql {
  const check = () => {
    if (!alive()) throw closedTransactionError();
  };
  return new Proxy(tx, {
    apply(target, self, args) {
      check();
      return Reflect.apply(target as unknown as (...a: unknown[]) => unknown, self, args);
    },
    get(target, key, receiver) {
      const value = Reflect.get(target, key, receiver);
      if (key === "unsafe" || key === "savepoint") {
        return (...args: unknown[]) => {
          check();
          return (value as (...a: unknown[]) => unknown).apply(target, args);
        };
      }
      return value;
    },
  }) as TransactionSql;
}

export interface Database {
  /** where it connects, for messages */
  readonly target: DatabaseTarget;
  /** the current pool; another one after reset() */
  readonly sql: Sql;
  /**
   * Runs `fn` in a transaction. On a connection error the pool is replaced before the error is rethrown, so
   * the caller's retry starts on a fresh connection and nothing of the failed attempt can run again.
   */
  transaction<T>(fn: (tx: TransactionSql) => Promise<T>): Promise<T>;
  /** Throws the pool away (its connections are cut at once) and opens a new one. */
  reset(): Promise<void>;
  end(timeoutSeconds?: number): Promise<void>;
}

export function openDatabase(target: DatabaseTarget, log: Logger, options: ConnectOptions = {}): Database {
  let sql = connect(target, log, options);
  const reset = async () => {
    const old = sql;
    sql = connect(target, log, options);
    await old.end({ timeout: 0 }).catch(() => undefined);
  };
  return {
    target,
    get sql() {
      return sql;
    },
    async transaction<T>(fn: (tx: TransactionSql) => Promise<T>): Promise<T> {
      let alive = true;
      try {
        return (await sql.begin((tx) => fn(guarded(tx, () => alive)))) as T;
      } catch (error) {
        alive = false;
        if (isConnectionError(error)) await reset();
        throw error;
      }
    },
    reset,
    end: (timeoutSeconds = 5) => sql.end({ timeout: timeoutSeconds }),
  };
}

/**
 * COPY ... FROM STDIN with `chunks` as its data; resolves with the row count the server reports.
 *
 * postgres.js resolves a COPY query with a writable stream as soon as the server is ready for data, and an
 * error the server sends after that (a value it refuses, the session ended) lands nowhere: the stream never
 * finishes and the caller waits forever in an aborted transaction. This wrapper listens for the query's own
 * outcome as well: the second resolve carries the result ("COPY n"), a reject carries the error.
 */
/** How much COPY data copyIn queues for the socket before it waits for it to drain. */
const COPY_BUFFER_BYTES = 2 * 1024 * 1024;

export async function copyIn(query: PendingQuery<Row[]>, chunks: Iterable<string> | AsyncIterable<string>): Promise<number> {
  const q = query as unknown as { resolve: (value: unknown) => void; reject: (error: unknown) => void };
  let settle!: { done: (count: number) => void; failed: (error: unknown) => void };
  const outcome = new Promise<number>((done, failed) => (settle = { done, failed }));
  outcome.catch(() => undefined); // awaited below; a failure before that must not count as unhandled
  const { resolve, reject } = q;
  let streamGiven = false;
  q.resolve = (value) => {
    if (streamGiven) settle.done(Number((value as { count?: number }).count ?? 0));
    else {
      streamGiven = true;
      resolve(value);
    }
  };
  q.reject = (error) => {
    settle.failed(error);
    reject(error);
  };
  const stream = (await query.writable()) as unknown as NodeJS.WritableStream;
  // The driver destroys the stream when the server refuses the data; that error is reported through `outcome`.
  stream.on("error", () => undefined);
  let failure: unknown;
  outcome.catch((error) => (failure = error));
  for await (const chunk of chunks) {
    if (failure !== undefined) break;
    // Back-pressure only past COPY_BUFFER_BYTES: a wait for "drain" is a turn of the event loop, which may be busy
    // preparing the next rows; data queued here keeps the server busy meanwhile.
    if (!stream.write(chunk) && (stream as unknown as { writableLength: number }).writableLength >= COPY_BUFFER_BYTES) {
      // Back-pressure: wait for the socket, or for the server to refuse the data.
      await Promise.race([new Promise((drained) => stream.once("drain", drained)), outcome.catch(() => undefined)]);
    }
  }
  if (failure === undefined) stream.end();
  return outcome;
}
