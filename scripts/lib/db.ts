// PostgreSQL through postgres.js, configured once: the URL from config (or PG* variables), server notices
// to our logger, an application_name that shows in pg_stat_activity, and helpers to address another
// database on the same server (the migrator creates the target database from `postgres`).

import postgres, { type Sql, type TransactionSql } from "postgres";
import type { Config } from "./config.ts";
import type { Logger } from "./log.ts";

export type { Sql, TransactionSql };

export function connect(
  config: Pick<Config, "databaseUrl">,
  log: Logger,
  options: { max?: number; database?: string } = {},
): Sql {
  const settings = {
    max: options.max ?? 2,
    onnotice: (notice: postgres.Notice) => log.debug(`postgres: ${notice.message}`),
    connection: { application_name: `sales-${log.name}` },
    // Fail fast with a clear message when the server is down, instead of waiting the 30 s default.
    connect_timeout: 5,
    ...(options.database ? { database: options.database } : {}),
  };
  return config.databaseUrl ? postgres(config.databaseUrl, settings) : postgres(settings);
}

/** The database a URL (or PGDATABASE / PGUSER) points at. */
export function databaseName(url: string | undefined, env: Record<string, string | undefined> = process.env): string {
  if (url) {
    const name = decodeURIComponent(new URL(url).pathname.replace(/^\//, ""));
    if (name) return name;
  }
  return env.PGDATABASE || env.PGUSER || "postgres";
}

/** "host:port/db" for messages, without the password. */
export function describeDatabase(url: string | undefined, env: Record<string, string | undefined> = process.env): string {
  if (!url) return `${env.PGHOST ?? "localhost"}:${env.PGPORT ?? "5432"}/${databaseName(url, env)}`;
  const u = new URL(url);
  return `${u.hostname}:${u.port || "5432"}/${databaseName(url, env)}`;
}

/** The same URL pointing at another database on the same server. */
export function withDatabase(url: string, name: string): string {
  const u = new URL(url);
  u.pathname = `/${encodeURIComponent(name)}`;
  return u.toString();
}
