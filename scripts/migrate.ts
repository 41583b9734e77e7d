// Migrations: creates the database named in DATABASE_URL if it is missing, then applies sql/NNN_*.sql in
// order, each in its own transaction and recorded in `schema_migrations`, so a second run is a no-op.
// Forward only: an applied file that was edited afterwards stops the run (write a new migration instead).
//
//   sql/*.sql  ->  tables in PostgreSQL                 make migrate
//
// When BI_READER_PASSWORD is set, the read-only role bi_reader (sql/005) gets a login with that password, sent
// as a SCRAM verifier so the password itself never reaches the server's logs.
//
// Env: DATABASE_URL (or PG*), BI_READER_PASSWORD, LOG_LEVEL. Flags: --dir, --help.

import { createHash, createHmac, pbkdf2Sync, randomBytes } from "node:crypto";
import { readdir } from "node:fs/promises";
import { join } from "node:path";
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
  summary: "Create the database if needed and apply sql/NNN_*.sql migrations that are not applied yet.",
  flags: {
    dir: { type: "string", arg: "DIR", help: "folder of migration files (default sql)" },
  },
  env: ["DATABASE_URL", "BI_READER_PASSWORD", "LOG_LEVEL"],
  notes: "Run by: make migrate",
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

/**
 * A SCRAM-SHA-256 verifier for `password` (RFC 5802, as PostgreSQL stores it). Sending the verifier instead of
 * the password keeps the password itself out of the wire, the server's statement log and pg_stat_activity.
 */
export function scramVerifier(password: string, salt: Buffer = randomBytes(16), iterations = 4096): string {
  const salted = pbkdf2Sync(password.normalize("NFKC"), salt, iterations, 32, "sha256");
  const clientKey = createHmac("sha256", salted).update("Client Key").digest();
  const storedKey = createHash("sha256").update(clientKey).digest();
  const serverKey = createHmac("sha256", salted).update("Server Key").digest();
  return `SCRAM-SHA-256$${iterations}:${salt.toString("base64")}$${storedKey.toString("base64")}:${serverKey.toString("base64")}`;
}

/** Gives the read-only role bi_reader (made by sql/005) a login with this password, or leaves it without one. */
export async function setReaderPassword(sql: Sql, password: string | undefined, log: Logger): Promise<void> {
  if (!password) {
    log.info("bi_reader has no login yet: set BI_READER_PASSWORD and run make migrate to let Tableau connect");
    return;
  }
  // ALTER ROLE takes no parameters; the verifier holds only base64 and "$:" characters, nothing to escape.
  await sql.unsafe(`alter role bi_reader with login password '${scramVerifier(password)}'`);
  log.info("bi_reader can log in with the password in BI_READER_PASSWORD");
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
    await setReaderPassword(sql, config.biReaderPassword, log);
    log.info(
      `${describeDatabase(config.database)}: ${applied.length} applied, ` +
        `${(await listMigrations(dir)).length - applied.length} already there (${formatDuration(performance.now() - started)})`,
    );
  } finally {
    await sql.end({ timeout: 5 });
  }
}

if (import.meta.main) main().catch(fail);
