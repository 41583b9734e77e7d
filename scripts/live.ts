// Live: the pipeline `make stream` runs, beside the demo's. make stream sends the CSV again from its first row;
// in the demo's database every one of those rows is a repeat (the loader skips it) and the dashboard would
// stand still for hours. So the stream gets a database, topic, consumer group and batch folder of its own,
// named after the demo's, and its database and folder are emptied at each start: every streamed row is new there.
//
//   database sales -> sales_live, topic sales_topic -> sales_topic_live,
//   group sales-batcher -> sales-batcher-live, batches/ -> batches/live/                  make stream
//
// The demo's database, topic, group and folder are never touched: its totals stay as make demo left them. The
// live topic and group are kept from run to run (the group reads on where it stopped; whatever it reads is new
// to the emptied database). bi_reader, the dashboard's login, gets its first password here when it has none yet,
// as make migrate does: make stream may be the first thing run after make up.
//
// Prints the live settings as shell assignments on stdout, which make stream evaluates before it starts the
// dashboard, consumer, loader and producer; on a terminal the password is masked. Says on stderr what it emptied.
//
// Env: DATABASE_URL (or PG*), KAFKA_TOPIC, KAFKA_GROUP_ID, BATCHES_DIR, BI_READER_PASSWORD, BI_READER_PASSWORD_FILE,
// LOG_LEVEL. Flags: --help.

import { readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { fail, parseCli } from "./lib/cli.ts";
import { ensureReaderLogin } from "./lib/bi_reader.ts";
import { readConfig, type Config, type DatabaseTarget } from "./lib/config.ts";
import { connect, databaseUrl, describeDatabase, dropDatabase, isConnectionError } from "./lib/db.ts";
import { liveTarget, type LiveTarget } from "./lib/live.ts";
import { createLogger, redact, type Logger } from "./lib/log.ts";
import { ensureDatabase, migrate } from "./migrate.ts";

const command = {
  script: "scripts/live.ts",
  summary: [
    "Empty the live pipeline of make stream (its database and batch folder) and print its settings as shell",
    "assignments. The demo's database, topic, group and folder are left as they are.",
  ].join("\n"),
  flags: {},
  env: ["DATABASE_URL", "KAFKA_TOPIC", "KAFKA_GROUP_ID", "BATCHES_DIR", "BI_READER_PASSWORD", "BI_READER_PASSWORD_FILE", "LOG_LEVEL"],
  notes: 'Run by: make stream (live="$(bun scripts/live.ts)" && eval "$live")',
} as const;

const SQL_DIR = join(import.meta.dir, "..", "sql");

/** `value` in single quotes for a POSIX shell: a quote inside becomes '\''. */
export function shellQuote(value: string): string {
  return `'${value.replaceAll("'", "'\\''")}'`;
}

/** The environment the stream's scripts run with, as one `export` line for `eval`. */
export function shellAssignments(live: LiveTarget): string {
  const env = { DATABASE_URL: databaseUrl(live.database), KAFKA_TOPIC: live.topic, KAFKA_GROUP_ID: live.group, BATCHES_DIR: live.dir };
  return `export ${Object.entries(env)
    .map(([name, value]) => `${name}=${shellQuote(value)}`)
    .join(" ")}\n`;
}

/**
 * Drops the live database (closing its sessions: a dashboard left from an earlier run) and creates it afresh,
 * migrated; gives bi_reader, the dashboard's login, its password when it has none yet, as make migrate does
 * (`loginLog` says so: make stream may be the first thing a newcomer runs after make up).
 */
async function emptyDatabase(target: DatabaseTarget, log: Logger, config: Config, loginLog: Logger): Promise<void> {
  await dropDatabase(target, target.database, log);
  await ensureDatabase(target, log);
  const sql = connect(target, log, { max: 1 });
  try {
    await migrate(sql, SQL_DIR, log);
    await ensureReaderLogin(sql, { ...config, database: target }, loginLog);
  } finally {
    await sql.end({ timeout: 5 });
  }
}

/** Removes the batch files of earlier runs from the live folder, with what the loader set aside, rejected or moved. */
async function emptyFolder(dir: string): Promise<number> {
  const entries = await readdir(dir, { withFileTypes: true }).catch((error: NodeJS.ErrnoException) => {
    if (error.code === "ENOENT") return [];
    throw error;
  });
  const ours = entries.filter((e) => (e.isFile() && e.name.endsWith(".csv")) || (e.isDirectory() && ["failed", "rejected", "loaded"].includes(e.name)));
  await Promise.all(ours.map((e) => rm(join(dir, e.name), { recursive: true, force: true })));
  return ours.filter((e) => e.isFile()).length;
}

async function main(): Promise<void> {
  const flags = parseCli(command);
  if (!flags) return;
  const config = readConfig();
  const log = createLogger("live", config.logLevel);
  const live = liveTarget(config);
  // Quieter for the migrations: every run applies all of them to the new database.
  await emptyDatabase(live.database, createLogger("live", config.logLevel === "debug" ? "debug" : "warn"), config, log).catch((error: Error) => {
    throw isConnectionError(error) ? new Error(`cannot reach PostgreSQL at ${describeDatabase(live.database)}: ${error.message} (is it up? make up)`) : error;
  });
  const removed = await emptyFolder(live.dir);
  log.info(
    `streaming into database ${live.database.database} at ${live.database.host}:${live.database.port} (emptied${removed > 0 ? `, and ${removed} old files removed from ${live.dir}/` : ""}), ` +
      `topic ${live.topic}, group ${live.group}, folder ${live.dir}/; the demo's database ${config.database.database} is left as it is`,
  );
  const assignments = shellAssignments(live);
  process.stdout.write(process.stdout.isTTY ? redact(assignments) : assignments);
}

if (import.meta.main) main().catch(fail);
