// Migrations: creates the database named in DATABASE_URL if it is missing, then applies sql/NNN_*.sql in
// order, each in its own transaction and recorded in `schema_migrations`, so a second run is a no-op.
// Forward only: an applied file that was edited afterwards stops the run (write a new migration instead).
//
//   sql/*.sql  ->  tables in PostgreSQL                 make migrate
//
// Then the read-only role bi_reader (sql/005), which the dashboard and BI tools log in as, gets its login and
// its first password, once: a role belongs to the whole server, so migrating another database leaves its
// password as it is (and says so when BI_READER_PASSWORD differs from it). The password is BI_READER_PASSWORD,
// else the one stored in BI_READER_PASSWORD_FILE (.local/bi_reader.password), written here with a random one the
// first time (mode 0600). --rotate-bi-reader-password (make rotate-bi-reader) sets a new one on purpose. See
// lib/bi_reader.ts.
//
// Env: DATABASE_URL (or PG*), BI_READER_PASSWORD, BI_READER_PASSWORD_FILE, LOG_LEVEL.
// Flags: --dir, --rotate-bi-reader-password, --help.

import { createHash } from "node:crypto";
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { ensureReaderLogin, rotateReaderPassword } from "./lib/bi_reader.ts";
import { fail, parseCli } from "./lib/cli.ts";
import { projectPath, readConfig, type DatabaseTarget } from "./lib/config.ts";
import { connect, describeDatabase, explainDatabaseFailure, isConnectionError, maintenance, type Sql } from "./lib/db.ts";
import { createLogger, formatDuration, type Logger } from "./lib/log.ts";

export interface Migration {
  readonly id: number;
  readonly name: string;
  readonly path: string;
}

const command = {
  script: "scripts/migrate.ts",
  summary: [
    "Create the database if needed and apply sql/NNN_*.sql migrations that are not applied yet; give the read-only",
    "role bi_reader its login and first password when it has none (once per server), or rotate it on purpose.",
  ].join("\n"),
  flags: {
    dir: { type: "string", arg: "DIR", help: "folder of migration files (default sql)" },
    "rotate-bi-reader-password": {
      type: "boolean",
      help: "set bi_reader's password to BI_READER_PASSWORD (unset: a new random one in BI_READER_PASSWORD_FILE), for every database on the server",
    },
  },
  env: ["DATABASE_URL", "BI_READER_PASSWORD", "BI_READER_PASSWORD_FILE", "LOG_LEVEL"],
  notes: "Run by: make migrate; make rotate-bi-reader (--rotate-bi-reader-password)",
} as const;

/** sql/NNN_verb_noun.sql files in id order; ids must be unique. */
export async function listMigrations(dir: string): Promise<Migration[]> {
  const migrations: Migration[] = [];
  for (const name of (await readdir(dir)).sort()) {
    if (!name.endsWith(".sql")) continue;
    const m = /^(\d+)_[a-z0-9_]+\.sql$/.exec(name);
    if (!m) throw new Error(`${join(dir, name)}: migration files are named NNN_verb_noun.sql`);
    const id = Number(m[1]);
    const twin = migrations.find((x) => x.id === id);
    if (twin) throw new Error(`${join(dir, name)}: number ${id} is also used by ${twin.name}`);
    migrations.push({ id, name, path: join(dir, name) });
  }
  return migrations;
}

/**
 * Creates the database `target` names when the server does not have it yet, and checks that it stores text
 * as UTF-8 (the pipeline's text is Unicode; a LATIN1 database would refuse or change characters).
 */
export async function ensureDatabase(target: DatabaseTarget, log: Logger): Promise<boolean> {
  const name = target.database;
  const admin = maintenance(target, log);
  try {
    const [found] = await admin<{ encoding: string }[]>`
      select pg_encoding_to_char(encoding) as encoding from pg_database where datname = ${name}
    `;
    if (found) {
      if (found.encoding !== "UTF8") {
        throw new Error(`database ${name} stores text as ${found.encoding}; the pipeline needs UTF8 (create it with ENCODING 'UTF8')`);
      }
      return false;
    }
    try {
      await admin`create database ${admin(name)} encoding 'UTF8' template template0`;
    } catch (error) {
      // Two migrators starting together: the other one created it. Anything else is a real failure.
      if ((error as { code?: string }).code !== "42P04") throw error;
      return false;
    }
    log.info(`created database ${name}`);
    return true;
  } finally {
    await admin.end({ timeout: 5 });
  }
}

/** Applies pending migrations; returns the names applied. Safe to run from two processes at once. */
export async function migrate(sql: Sql, dir: string, log: Logger): Promise<string[]> {
  const migrations = await listMigrations(dir);
  await sql`
    create table if not exists schema_migrations (
      id integer primary key,
      name text not null,
      sha256 char(64) not null,
      applied_at timestamptz not null default now()
    )
  `;
  const applied: string[] = [];
  for (const migration of migrations) {
    const text = await Bun.file(migration.path).text();
    const sha256 = createHash("sha256").update(text).digest("hex");
    const done = await sql.begin(async (tx) => {
      // One migrator at a time; the second waits here and then finds the row already written. A lock on the
      // table, not an advisory lock: only roles that may write schema_migrations can take it (sql/007).
      await tx`lock table schema_migrations in share row exclusive mode`;
      const [row] = await tx<{ name: string; sha256: string }[]>`
        select name, sha256 from schema_migrations where id = ${migration.id}
      `;
      if (row) {
        if (row.sha256 !== sha256) {
          throw new Error(
            `${migration.path} changed after it was applied (as ${row.name}); migrations are forward-only, add a new file instead`,
          );
        }
        return true;
      }
      await tx.unsafe(text);
      await tx`
        insert into schema_migrations (id, name, sha256)
        values (${migration.id}, ${migration.name}, ${sha256})
      `;
      return false;
    });
    if (!done) {
      log.info(`applied ${migration.name}`);
      applied.push(migration.name);
    }
  }
  return applied;
}

async function main(): Promise<void> {
  const flags = parseCli(command);
  if (!flags) return;
  const config = readConfig();
  const log = createLogger("migrate", config.logLevel);
  const started = performance.now();
  const dir = flags.dir ?? projectPath("sql");
  await ensureDatabase(config.database, log).catch((error: Error) => {
    // It connects to the server's "postgres" database: a missing one is not the database DATABASE_URL names.
    const explained = explainDatabaseFailure(error, config.database);
    throw explained && explained.problem !== "no-database" ? explained : error;
  });
  const sql = connect(config.database, log, { max: 1 });
  try {
    const applied = await migrate(sql, dir, log);
    if (flags["rotate-bi-reader-password"]) await rotateReaderPassword(sql, config, log);
    else await ensureReaderLogin(sql, config, log);
    log.info(
      `${describeDatabase(config.database)}: ${applied.length} applied, ` +
        `${(await listMigrations(dir)).length - applied.length} already there (${formatDuration(performance.now() - started)})`,
    );
  } finally {
    await sql.end({ timeout: 5 });
  }
}

if (import.meta.main) main().catch(fail);
