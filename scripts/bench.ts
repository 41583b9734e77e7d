// Benchmark: each stage of the pipeline next to a standard tool doing the same job on the same rows, on the
// same broker and server, interleaved, with CPU-seconds and peak memory per run. Timing goals live here, never
// in the tests. Every run checks its row counts: a fast run that loses rows fails the benchmark.
//
//   make_data --copies N -> producer | kcat -P -> consumer | kcat -C -> load | psql \copy -> all three at once
//   -> consumer + loader | Kafka Connect's JDBC sink, topic to table
//
//   make bench                 quick: 99,940 rows (10 copies of the sample), about 2 minutes
//   make bench SIZE=full       999,400 rows (100 copies)
//   make bench STAGES=scale    some stages only (see --stages)
//   make bench SOAK=1          the soak line instead: producer --rate 500, consumer, loader --watch for 10 minutes
//
// Stages: the producer at --rate max beside kcat -P (acks=all, idempotent) sending the same keyed messages, and
// beside Kafka's ProducerPerformance sending as many records of their mean size (in local mode, where make up
// fetched Kafka's jars, tools included); the consumer writing 100-record and 10,000-record files beside kcat -C
// writing the topic to one file, and beside Kafka's ConsumerPerformance reading it; the
// loader on 10,000-row files beside psql \copy of the same cleaned rows into the same schema (users and products
// already there), and on 100-row files beside itself on 10,000-row ones; then producer, consumer (100 per file)
// and loader --watch at once, CSV to table; then consumer and loader --watch at once on a topic already full
// beside Kafka Connect standalone with Debezium's JDBC sink (lib/connect.ts) upserting the same rows, sent as
// schema'd JSON to a topic of its own, into a database of its own: with its defaults, and tuned (batches of
// 2,000, the driver's multi-row inserts). Kafka's tools and Connect need Java and Maven.
// Last, the scale line: consumers and loaders --watch on a topic already full, 3 partitions × 3 consumers × 2
// loaders (consumers writing into two folders, a loader on each) beside 1 × 1 × 1, on the stack's broker and
// again on a three-node cluster the benchmark starts for it (lib/stack/cluster.ts, local mode only).
// Everything runs on topics, groups, databases and folders of its own under .local/bench; the walkthrough's
// data is not touched. The table is printed and written to .local/bench/latest.md.
//
// The soak (--soak MINUTES) runs producer --rate 500 (--soak-rate), consumer and loader --watch together for
// that long and reports each script's resident memory at minute 2 (half-way, for a soak under 4 minutes) and at
// the end, each the median of a minute's samples (memoryMarks), with the row counts checked; it writes
// .local/bench/soak.md.
//
// Env: KAFKA_BROKERS, DATABASE_URL (the server; databases bench_*), LOG_LEVEL.
// Flags: --size, --copies, --runs, --stages, --soak, --soak-rate.

import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { cpus, loadavg, totalmem } from "node:os";
import { basename, join } from "node:path";
import { fail, parseCli, UsageError } from "./lib/cli.ts";
import { parsePositiveInt, projectPath, readConfig, type Config, type DatabaseTarget } from "./lib/config.ts";
import { connectJars, connectValue, DEBEZIUM_VERSION, propertiesText, sinkProperties, workerProperties, type ConnectJars, type SinkRun } from "./lib/connect.ts";
import { connect, databaseUrl, maintenance, withDatabase, type Sql } from "./lib/db.ts";
import { prepareFile } from "./lib/load/read.ts";
import { COPY_COLUMNS, copyChunks } from "./lib/load/transaction.ts";
import type { Admin } from "kafkajs";
import { createKafka, ensureTopic } from "./lib/kafka.ts";
import { createLogger, formatDuration } from "./lib/log.ts";
import { cleanRow, mapHeader, type HeaderMap } from "./lib/record.ts";
import { pollUntil, TimeoutError } from "./lib/retry.ts";
import { readCompose } from "./lib/stack/compose.ts";
import { startPrivateCluster } from "./lib/stack/cluster.ts";
import { kafkaJars, log4jToFile } from "./lib/stack/kafka.ts";
import { tail } from "./lib/stack/process.ts";
import { ensureDatabase, migrate } from "./migrate.ts";

const STAGES = ["producer", "consumer", "loader", "together", "connect", "scale"] as const;
type Stage = (typeof STAGES)[number];

const command = {
  script: "scripts/bench.ts",
  summary: [
    "Measure each stage next to kcat, psql, Kafka's tools and Kafka Connect on the same rows, interleaved, with",
    "CPU and memory per run; or, with --soak, the three scripts together for minutes, their memory over time.",
  ].join("\n"),
  flags: {
    size: { type: "string", arg: "quick|full", help: "quick: 10 copies of the sample (99,940 rows); full: 100 (999,400)" },
    copies: { type: "string", arg: "N", help: "copies of the 9,994 sample rows (overrides --size)" },
    runs: { type: "string", arg: "N", help: "runs of each measurement, interleaved with the peer's (default 1)" },
    stages: { type: "string", arg: "LIST", help: `some stages only, comma-separated: ${STAGES.join(",")} (default all; loader needs consumer needs producer, which then run too)` },
    soak: { type: "string", arg: "MINUTES", help: "the soak line instead: producer, consumer and loader --watch together this long" },
    "soak-rate": { type: "string", arg: "N", help: "the soak's producer --rate (default 500 rows/s)" },
    profile: { type: "boolean", help: "run each of our scripts under Bun's CPU profiler: one Markdown profile per run in .local/bench/profiles/ (the figures are then the profiler's, slower)" },
  },
  env: ["KAFKA_BROKERS", "DATABASE_URL", "LOG_LEVEL"],
  notes: [
    "Run by: make bench (SIZE=full for a million rows; SOAK=1 for the soak). Needs kcat and psql (apt-get install kcat",
    "postgresql-client); Kafka's tools and Kafka Connect need Java 17 and Maven, and are left out without them.",
  ].join("\n"),
} as const;

const ROOT = projectPath(".local/bench");

/** The stages --stages names, with what they need: the consumer reads the producer's topic, the loader its files. */
export function parseStages(list: string | undefined): ReadonlySet<Stage> {
  if (list === undefined) return new Set(STAGES);
  const wanted = new Set<Stage>();
  for (const name of list.split(",").map((s) => s.trim())) {
    if (!(STAGES as readonly string[]).includes(name)) throw new UsageError(`--stages: unknown stage "${name}" (stages: ${STAGES.join(", ")})`);
    wanted.add(name as Stage);
  }
  if (wanted.has("loader")) wanted.add("consumer");
  if (wanted.has("consumer")) wanted.add("producer");
  return wanted;
}
const log = createLogger("bench");
const quiet = createLogger("bench", "silent");

/** What one process cost: wall time, CPU time (user + system) and peak resident memory. */
interface Cost {
  readonly ms: number;
  readonly cpuMs: number;
  readonly rssBytes: number;
}

/** The peak resident memory ("VmHWM") in a /proc/<pid>/status text, in bytes. */
export function highWaterMark(status: string): number | undefined {
  const kb = /^VmHWM:\s+(\d+) kB$/m.exec(status)?.[1];
  return kb === undefined ? undefined : Number(kb) * 1024;
}

/**
 * Each child's own peak memory, read from /proc every 100 ms while it runs (and once more as it is stopped).
 * Not the exit's rusage: a child spawned from this process starts in its memory (Bun spawns with vfork), so
 * its maxRSS is at least this process's own peak, a few hundred MB once the bench has prepared a million rows.
 */
const peaks = new WeakMap<Bun.Subprocess, { bytes: number; timer: Timer }>();

function trackPeak<P extends Bun.Subprocess>(proc: P): P {
  const peak = { bytes: 0, timer: setInterval(() => samplePeak(proc), 100) };
  peaks.set(proc, peak);
  samplePeak(proc);
  return proc;
}

function samplePeak(proc: Bun.Subprocess): void {
  const peak = peaks.get(proc);
  if (!peak || proc.exitCode !== null || proc.signalCode !== null) return;
  try {
    peak.bytes = Math.max(peak.bytes, highWaterMark(readFileSync(`/proc/${proc.pid}/status`, "latin1")) ?? 0);
  } catch {
    // gone between the check and the read
  }
}

/** The child's peak memory as sampled; its rusage's only when no sample was taken (a child of under 100 ms). */
function peakOf(proc: Bun.Subprocess): number {
  const peak = peaks.get(proc);
  if (peak) clearInterval(peak.timer);
  return peak && peak.bytes > 0 ? peak.bytes : proc.resourceUsage()!.maxRSS;
}

/** Runs a command to completion; throws with its output when it fails. */
async function measure(cmd: string[], env: Record<string, string> = {}, stdoutFile?: string): Promise<Cost> {
  const started = performance.now();
  const child = trackPeak(
    Bun.spawn(cmd, {
      env: { ...process.env, LOG_LEVEL: "warn", ...env },
      stdout: stdoutFile ? Bun.file(stdoutFile) : "ignore",
      stderr: "pipe",
    }),
  );
  const [code, stderr] = await Promise.all([child.exited, new Response(child.stderr).text()]);
  const ms = performance.now() - started;
  if (code !== 0) throw new Error(`${cmd.join(" ")} exited ${code}\n${stderr}`);
  const usage = child.resourceUsage()!;
  return { ms, cpuMs: Number(usage.cpuTime.total) / 1000, rssBytes: peakOf(child) };
}

/** Where --profile puts one CPU profile per run of our scripts; undefined: no profiles. */
let profileDir: string | undefined;
let profiles = 0;

/**
 * The command that runs one of our scripts; with a profile folder, under Bun's sampling CPU profiler, which
 * writes the run's profile as Markdown (hot functions, call tree) when the script exits.
 */
export function scriptCommand(name: string, args: readonly string[], profile?: { dir: string; run: number }): string[] {
  const bun = [process.execPath];
  if (profile) bun.push("--cpu-prof-md", `--cpu-prof-dir=${profile.dir}`, `--cpu-prof-name=${String(profile.run).padStart(2, "0")}-${basename(name, ".ts")}.md`);
  return [...bun, join(import.meta.dir, name), ...args];
}

function script(name: string, args: string[]): string[] {
  if (profileDir === undefined) return scriptCommand(name, args);
  const cmd = scriptCommand(name, args, { dir: profileDir, run: ++profiles });
  log.info(`profiling ${name} ${args.join(" ")}: ${profileDir}/${cmd[3]!.slice("--cpu-prof-name=".length)}`);
  return cmd;
}

interface Row {
  readonly stage: string;
  readonly ours: Cost;
  /** what the rate is measured against; `costs`: its CPU-seconds and peak RSS are shown too, and the CPU ratio */
  readonly peer?: { readonly name: string; readonly cost: Cost; readonly costs?: boolean };
  /** printed under the table */
  readonly note?: string;
}

const rate = (rows: number, ms: number) => Math.round((rows * 1000) / ms);
const mb = (bytes: number) => `${Math.round(bytes / 1024 / 1024)} MB`;

/** One benchmark session: a data file, a fresh name per run, databases made from the migrations. */
class Bench {
  private seq = 0;
  readonly id = Date.now().toString(36);
  readonly databases: DatabaseTarget[] = [];

  constructor(
    readonly config: Config,
    readonly rows: number,
    readonly file: string,
    /** the jars of the local Kafka, tools included; undefined when the stack runs in Docker (no peers from Kafka's tools then) */
    readonly kafkaTools: string | undefined,
  ) {}

  /** A Kafka tool on the local Kafka's jars. */
  java(main: string, args: string[]): string[] {
    return ["java", "-cp", `${this.kafkaTools}/*`, main, ...args];
  }

  name(what: string): string {
    return `bench_${this.id}_${what}_${++this.seq}`;
  }

  /** The producer's messages as kcat writes them, key TAB value per line (produce() writes it). */
  get messages(): string {
    return join(ROOT, `${this.id}.messages`);
  }

  /** A fresh database for one load: migrated, or empty for a peer that makes its own table. */
  async database(what: string, migrated = true): Promise<DatabaseTarget> {
    const target = withDatabase(this.config.database, this.name(what));
    await ensureDatabase(target, quiet);
    this.databases.push(target);
    if (!migrated) return target;
    const sql = connect(target, quiet, { max: 1 });
    try {
      await migrate(sql, projectPath("sql"), quiet);
    } finally {
      await sql.end();
    }
    return target;
  }

  env(topic: string, group: string, dir: string, db?: DatabaseTarget): Record<string, string> {
    return {
      KAFKA_BROKERS: this.config.kafkaBrokers.join(","),
      KAFKA_TOPIC: topic,
      KAFKA_GROUP_ID: group,
      BATCHES_DIR: dir,
      ...(db ? { DATABASE_URL: databaseUrl(db) } : {}),
    };
  }

  async count(db: DatabaseTarget): Promise<number> {
    const sql = connect(db, quiet, { max: 1 });
    try {
      const [row] = await sql<{ n: number }[]>`select count(*)::int as n from orders`;
      return row!.n;
    } finally {
      await sql.end();
    }
  }

  private async admin<T>(fn: (admin: Admin) => Promise<T>): Promise<T> {
    const admin = createKafka(this.config, quiet).admin();
    await admin.connect();
    try {
      return await fn(admin);
    } finally {
      await admin.disconnect();
    }
  }

  /** Messages in a topic. */
  topicSize(topic: string): Promise<number> {
    return this.admin(async (admin) => (await admin.fetchTopicOffsets(topic)).reduce((n, p) => n + Number(p.high), 0));
  }

  createTopic(topic: string, partitions = this.config.kafkaPartitions): Promise<boolean> {
    return this.admin((admin) => ensureTopic(admin, topic, partitions));
  }

  /** Brokers in the cluster KAFKA_BROKERS reaches. */
  brokerCount(): Promise<number> {
    return this.admin(async (admin) => (await admin.describeCluster()).brokers.length);
  }

  check(what: string, got: number): void {
    if (got !== this.rows) throw new Error(`${what}: ${got} rows where ${this.rows} were sent; a fast run that loses rows is a failure`);
  }

  /** Drops this session's databases and deletes its topics (the schema'd JSON of a full run is gigabytes). */
  async cleanUp(): Promise<void> {
    const admin = maintenance(this.config.database, quiet);
    try {
      for (const db of this.databases) await admin.unsafe(`drop database if exists "${db.database}" with (force)`);
    } finally {
      await admin.end();
    }
    await this.admin(async (kafka) => {
      const topics = (await kafka.listTopics()).filter((t) => t.startsWith(`bench_${this.id}_`));
      if (topics.length > 0) await kafka.deleteTopics({ topics });
    });
  }
}

function batchRows(dir: string): number {
  // Each batch file name holds its offset range.
  return readdirSync(dir)
    .map((f) => /_(\d{12,})-(\d{12,})_[0-9a-f]{12}\.csv$/.exec(f))
    .reduce((n, m) => n + (m ? Number(m[2]) - Number(m[1]) + 1 : 0), 0);
}

/** Producer vs kcat -P on the same keyed messages. Returns the topic the producer filled (for the consumers). */
async function produce(b: Bench, runs: number, rows: Row[]): Promise<string> {
  let source = "";
  const dump = b.messages;
  for (let r = 0; r < runs; r++) {
    const topic = b.name("produce");
    const ours = await measure(script("producer.ts", ["--file", b.file, "--rate", "max"]), b.env(topic, "-", ROOT));
    b.check("producer", await b.topicSize(topic));
    if (!source) {
      source = topic;
      // The same messages for kcat: key TAB value per line.
      await measure(["kcat", "-C", "-b", b.config.kafkaBrokers[0]!, "-t", topic, "-o", "beginning", "-e", "-q", "-f", "%k\t%s\n"], {}, dump);
    }
    const peerTopic = b.name("kcat");
    await b.createTopic(peerTopic);
    const peer = await measure(["kcat", "-P", "-b", b.config.kafkaBrokers[0]!, "-t", peerTopic, "-K", "\t", "-X", "enable.idempotence=true", "-X", "acks=all", "-X", "linger.ms=5", "-l", dump]);
    b.check("kcat -P", await b.topicSize(peerTopic));
    rows.push({ stage: "producer --rate max", ours, peer: { name: "kcat -P (acks=all, idempotent)", cost: peer } });
    if (b.kafkaTools) {
      const perfTopic = b.name("perf");
      await b.createTopic(perfTopic);
      const size = Math.round(statSync(dump).size / b.rows);
      const perf = await measure(b.java("org.apache.kafka.tools.ProducerPerformance", [
        "--topic", perfTopic, "--num-records", String(b.rows), "--record-size", String(size), "--throughput", "-1",
        "--producer-props", `bootstrap.servers=${b.config.kafkaBrokers.join(",")}`, "acks=all", "enable.idempotence=true",
      ]));
      b.check("ProducerPerformance", await b.topicSize(perfTopic));
      rows.push({ stage: "producer --rate max", ours, peer: { name: `Kafka's ProducerPerformance (${size}-byte records)`, cost: perf } });
    }
  }
  return source;
}

/** Consumer (100 and 10,000 per file) vs kcat -C writing the topic to one file. Returns the folders written. */
async function consume(b: Bench, topic: string, runs: number, rows: Row[]): Promise<{ small: string; large: string }> {
  const dirs = { small: "", large: "" };
  const idle = 1;
  for (let r = 0; r < runs; r++) {
    const peer = await measure(["kcat", "-C", "-b", b.config.kafkaBrokers[0]!, "-t", topic, "-o", "beginning", "-e", "-q"], {}, join(ROOT, `${b.id}.kcat-out`));
    const perf = b.kafkaTools
      ? await measure(b.java("org.apache.kafka.tools.ConsumerPerformance", [
          "--bootstrap-server", b.config.kafkaBrokers.join(","), "--topic", topic, "--messages", String(b.rows), "--group", b.name("perf"),
        ]))
      : undefined;
    for (const size of [100, 10_000]) {
      const dir = join(ROOT, b.name(`files${size}`));
      const cost = await measure(script("consumer_batch_to_csv.ts", ["--until-idle", String(idle), "--batch-size", String(size)]), b.env(topic, b.name("group"), dir));
      b.check(`consumer (${size} per file)`, batchRows(dir));
      // --until-idle waits `idle` seconds after the last message before it exits: not work, so not counted.
      const ours = { ...cost, ms: cost.ms - idle * 1000 };
      rows.push({ stage: `consumer, ${size.toLocaleString("en")} per file`, ours, peer: { name: "kcat -C into a file", cost: peer } });
      if (perf) rows.push({ stage: `consumer, ${size.toLocaleString("en")} per file`, ours, peer: { name: "Kafka's ConsumerPerformance", cost: perf } });
      if (size === 100) dirs.small ||= dir;
      else dirs.large ||= dir;
    }
  }
  return dirs;
}

/** The cleaned rows of a folder of batch files in COPY text format, as the loader would send them. */
async function cleanedRows(dir: string, out: string): Promise<void> {
  const writer = Bun.file(out).writer();
  for (const name of readdirSync(dir).filter((f) => f.endsWith(".csv")).sort()) {
    const file = await prepareFile(dir, name);
    for (const chunk of copyChunks(file.candidates)) writer.write(chunk);
  }
  await writer.end();
}

/** Loader on 10,000-row files vs psql \copy of the same cleaned rows; loader on 100-row files. */
async function load(b: Bench, dirs: { small: string; large: string }, runs: number, rows: Row[]): Promise<void> {
  const copyFile = join(ROOT, `${b.id}.copy`);
  await cleanedRows(dirs.large, copyFile);
  for (let r = 0; r < runs; r++) {
    // The peer gets users and products first (not timed): psql loads orders only.
    const peerDb = await b.database("psql");
    await measure(script("load.ts", ["--dir", dirs.large]), { DATABASE_URL: databaseUrl(peerDb) });
    const sql = connect(peerDb, quiet, { max: 1 });
    await sql`truncate orders`;
    await sql.end();
    const psql = await measure(["psql", "-q", "-v", "ON_ERROR_STOP=1", databaseUrl(peerDb), "-c", `\\copy orders (${COPY_COLUMNS.join(", ")}) from '${copyFile}'`]);
    b.check("psql \\copy", await b.count(peerDb));

    const large = await b.database("load10k");
    const ours = await measure(script("load.ts", ["--dir", dirs.large]), { DATABASE_URL: databaseUrl(large) });
    b.check("loader (10,000-row files)", await b.count(large));
    rows.push({ stage: "loader, 10,000-row files", ours, peer: { name: "psql \\copy of the same cleaned rows", cost: psql } });

    const small = await b.database("load100");
    const oursSmall = await measure(script("load.ts", ["--dir", dirs.small]), { DATABASE_URL: databaseUrl(small) });
    b.check("loader (100-row files)", await b.count(small));
    rows.push({ stage: "loader, 100-row files", ours: oursSmall, peer: { name: "itself on 10,000-row files", cost: ours } });
  }
}

/** A script running in the background, with the name errors give it. */
interface Watched {
  readonly name: string;
  readonly proc: Bun.Subprocess;
  /** exits by itself once done (the producer), with 0; the others run until they are stopped */
  readonly finishes?: boolean;
}

/** Starts a script in the background under the name `name`: its warnings and errors go to this terminal. */
function start(name: string, file: string, args: string[], env: Record<string, string>, finishes = false): Watched {
  const proc = trackPeak(Bun.spawn(script(file, args), { env: { ...process.env, LOG_LEVEL: "warn", ...env }, stdout: "ignore", stderr: "inherit" }));
  return { name, proc, finishes };
}

/**
 * Waits until `count()` reaches `n`, asking every `every` ms; gives up at once when a watched process exits
 * (one that ran until stopped) or fails (one that finishes), since the rows would never come. Returns the time
 * (performance.now()) the first row was counted.
 */
async function untilRows(count: () => Promise<number>, n: number, watched: readonly Watched[], what: string, every = 100): Promise<number> {
  const stop = new AbortController();
  let why = "";
  for (const w of watched) {
    void w.proc.exited.then((code) => {
      if (w.finishes && code === 0) return;
      why ||= `${w.name} exited with code ${code}`;
      stop.abort();
    });
  }
  let first = 0;
  try {
    await pollUntil(
      async () => {
        const got = await count();
        if (got > 0) first ||= performance.now();
        return got >= n;
      },
      { timeout: 1_800_000, every, what: `${n} rows in ${what}`, signal: stop.signal },
    );
  } catch (error) {
    if (why) throw new Error(`${why} before ${n} rows were in ${what}`);
    throw error;
  }
  return first;
}

/** Stops a background process (SIGTERM, SIGKILL after 30 s) and returns what it cost since `started`. */
async function stopAndCost(proc: Bun.Subprocess, started: number): Promise<Cost> {
  if (proc.exitCode === null && proc.signalCode === null) {
    samplePeak(proc);
    proc.kill("SIGTERM");
    try {
      await pollUntil(() => proc.exitCode !== null || proc.signalCode !== null, { timeout: 30_000, every: 50, what: `pid ${proc.pid} to stop` });
    } catch (error) {
      if (!(error instanceof TimeoutError)) throw error;
      proc.kill("SIGKILL");
    }
  }
  await proc.exited;
  const usage = proc.resourceUsage()!;
  return { ms: performance.now() - started, cpuMs: Number(usage.cpuTime.total) / 1000, rssBytes: peakOf(proc) };
}

/** After a failure: the scripts still running are stopped, not left behind. */
function killAll(scripts: readonly Watched[]): void {
  for (const s of scripts) if (s.proc.exitCode === null) s.proc.kill("SIGTERM");
}

/** Rows in orders, on a connection the caller holds (asked many times a second). */
async function ordersIn(sql: Sql): Promise<number> {
  const [row] = await sql<{ n: number }[]>`select count(*)::int as n from orders`;
  return row!.n;
}

/** The consumer (100 per file) and loader --watch on `env`'s topic, folder and database, started now. */
function watchers(env: Record<string, string>): Watched[] {
  return [start("consumer", "consumer_batch_to_csv.ts", ["--batch-size", "100", "--quiet", "1"], env), start("loader --watch", "load.ts", ["--watch"], env)];
}

/** The scripts' costs together: CPU summed, the largest peak memory, over `ms`. */
function combined(costs: readonly Cost[], ms: number): Cost {
  return { ms, cpuMs: costs.reduce((n, c) => n + c.cpuMs, 0), rssBytes: Math.max(...costs.map((c) => c.rssBytes)) };
}

/**
 * Runs `scripts` (consumer and loader --watch, maybe the producer) into `db` until orders holds every row,
 * then stops them. Returns their costs together, from the start to the last row, and when the first row came.
 */
async function runUntilLoaded(b: Bench, db: DatabaseTarget, scripts: readonly Watched[], started: number): Promise<{ cost: Cost; firstMs: number }> {
  const sql = connect(db, quiet, { max: 1 });
  let first: number;
  try {
    first = await untilRows(() => ordersIn(sql), b.rows, scripts, `orders of ${db.database}`);
  } catch (error) {
    killAll(scripts);
    throw error;
  } finally {
    await sql.end();
  }
  const ms = performance.now() - started;
  const costs = await Promise.all(scripts.map((s) => stopAndCost(s.proc, started)));
  return { cost: combined(costs, ms), firstMs: first - started };
}

/** Producer, consumer (100 per file) and loader --watch at once: from the CSV file to the last row in orders. */
async function together(b: Bench, rows: Row[]): Promise<void> {
  const db = await b.database("together");
  const env = b.env(b.name("together"), b.name("group"), join(ROOT, b.name("together")), db);
  const started = performance.now();
  const scripts = [...watchers(env), start("producer --rate max", "producer.ts", ["--file", b.file, "--rate", "max"], env, true)];
  const { cost } = await runUntilLoaded(b, db, scripts, started);
  b.check("all three at once", await b.count(db));
  rows.push({ stage: "all three at once, CSV to table (100 per file)", ours: cost, note: "CPU is the three scripts' sum" });
}

/** Reads a file line by line without holding it whole (the messages of a full run are hundreds of MB). */
async function* lines(path: string): AsyncGenerator<string> {
  let rest = "";
  for await (const chunk of Bun.file(path).stream().pipeThrough(new TextDecoderStream())) {
    const parts = (rest + chunk).split("\n");
    rest = parts.pop()!;
    yield* parts;
  }
  if (rest) yield rest;
}

/**
 * The producer's messages (b.messages) as Connect's schema'd JSON, key TAB value per line: each row cleaned as
 * the loader cleans it, so the sink gets typed fields. Returns the file and the sum of the Row IDs written.
 */
async function connectMessages(b: Bench): Promise<{ file: string; rowIdSum: number }> {
  const file = join(ROOT, `${b.id}.connect`);
  const writer = Bun.file(file).writer();
  let header: HeaderMap | undefined;
  let rowIdSum = 0;
  let line = 0;
  for await (const text of lines(b.messages)) {
    line++;
    const tab = text.indexOf("\t");
    const source = JSON.parse(text.slice(tab + 1)) as Record<string, string>;
    header ??= mapHeader(Object.keys(source));
    const clean = cleanRow(source, header);
    if (!clean.ok) throw new Error(`${b.messages}, line ${line}: the row does not clean (${clean.reason})`);
    writer.write(`${text.slice(0, tab)}\t${connectValue(clean.row)}\n`);
    rowIdSum += clean.row.rowId ?? 0;
  }
  await writer.end();
  return { file, rowIdSum };
}

/** The table the sink makes and fills. */
const SINK_TABLE = "sales_rows";

/** Rows in the sink's table and the sum of their Row IDs (no table yet: nothing). */
async function sinkRows(sql: Sql): Promise<{ n: number; sum: number }> {
  const [row] = await sql<{ n: number; sum: string }[]>`select count(*)::int as n, coalesce(sum(row_id), 0)::text as sum from ${sql(SINK_TABLE)}`;
  return { n: row!.n, sum: Number(row!.sum) };
}

/** Writes the worker's and the connector's settings and its log settings into the run's folder. */
function writeConnectFiles(sink: SinkRun): { worker: string; connector: string; log4j: string; log: string } {
  const files = {
    worker: join(sink.dir, "worker.properties"),
    connector: join(sink.dir, "connector.properties"),
    log4j: join(sink.dir, "log4j2.properties"),
    log: join(sink.dir, "connect.log"),
  };
  const by = "Written by scripts/bench.ts for one run of Kafka Connect standalone";
  writeFileSync(files.worker, propertiesText(workerProperties(sink), by));
  // It holds the database password: readable by its owner only, and deleted with the run's folder.
  writeFileSync(files.connector, propertiesText(sinkProperties(sink), by), { mode: 0o600 });
  writeFileSync(files.log4j, log4jToFile(files.log)); // everything at INFO, Connect's default
  return files;
}

/**
 * One run of Kafka Connect standalone with Debezium's JDBC sink on `topic`, into a database of its own, from
 * the JVM's start to the last row in the table; then it is stopped. The table must hold exactly the rows sent.
 */
async function runConnect(b: Bench, jars: ConnectJars, topic: string, tuned: boolean, rowIdSum: number): Promise<{ cost: Cost; firstMs: number }> {
  const dir = join(ROOT, b.name(tuned ? "connect_tuned" : "connect"));
  mkdirSync(dir, { recursive: true });
  const db = await b.database("connect", false);
  const sink: SinkRun = { name: basename(dir), topic, table: SINK_TABLE, database: db, brokers: b.config.kafkaBrokers, dir, plugins: jars.plugins, tuned };
  const files = writeConnectFiles(sink);
  const output = openSync(join(dir, "console.log"), "a");
  const started = performance.now();
  // The heap connect-standalone.sh gives the worker.
  const java = trackPeak(
    Bun.spawn(
      ["java", "-Xms256M", "-Xmx2G", `-Dlog4j2.configurationFile=${files.log4j}`, "-cp", `${jars.libs}/*`, "org.apache.kafka.connect.cli.ConnectStandalone", files.worker, files.connector],
      { stdout: output, stderr: output },
    ),
  );
  closeSync(output);
  const what = `Kafka Connect (${tuned ? "tuned" : "defaults"})`;
  const sql = connect(db, quiet, { max: 1 });
  let first: number;
  try {
    first = await untilRows(async () => (await sinkRows(sql)).n, b.rows, [{ name: what, proc: java }], `${SINK_TABLE} of ${db.database}`);
  } catch (error) {
    java.kill("SIGKILL");
    throw new Error(`${(error as Error).message}\n${tail(files.log)}\n${tail(join(dir, "console.log"), 10)}`);
  } finally {
    await sql.end();
  }
  const ms = performance.now() - started;
  const cost = { ...(await stopAndCost(java, started)), ms };
  const check = connect(db, quiet, { max: 1 });
  try {
    const got = await sinkRows(check);
    b.check(what, got.n);
    if (got.sum !== rowIdSum) throw new Error(`${what}: the Row IDs in ${SINK_TABLE} add up to ${got.sum}, where the rows sent add up to ${rowIdSum}`);
  } finally {
    await check.end();
  }
  return { cost, firstMs: first - started };
}

/** The topics of the topic-to-table stage, filled before anything is timed: the producer's, and Connect's. */
async function fillTopics(b: Bench): Promise<{ ours: string; peer: string; rowIdSum: number }> {
  const ours = b.name("totable");
  await measure(script("producer.ts", ["--file", b.file, "--rate", "max"]), b.env(ours, "-", ROOT));
  b.check("producer (topic to table)", await b.topicSize(ours));
  const { file, rowIdSum } = await connectMessages(b);
  const peer = b.name("connect");
  await b.createTopic(peer);
  await measure(["kcat", "-P", "-b", b.config.kafkaBrokers[0]!, "-t", peer, "-K", "\t", "-X", "enable.idempotence=true", "-X", "acks=all", "-l", file]);
  b.check("kcat -P (schema'd JSON)", await b.topicSize(peer));
  return { ours, peer, rowIdSum };
}

const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`;

/** The rate from the first row in the table to the last: the pace once running, start-up left out. */
const steady = (b: Bench, ms: number, firstMs: number) => `${rate(b.rows, Math.max(1, ms - firstMs)).toLocaleString("en")}/s`;

/**
 * Topic to table: consumer and loader --watch at once on a topic already full, beside Kafka Connect's JDBC sink
 * with its defaults and tuned, on the same rows, interleaved.
 */
async function topicToTable(b: Bench, jars: ConnectJars, runs: number, rows: Row[]): Promise<void> {
  const topics = await fillTopics(b);
  const stage = "consumer + loader --watch at once, topic to table (100 per file)";
  for (let r = 0; r < runs; r++) {
    const db = await b.database("totable");
    const started = performance.now();
    const { cost: ours, firstMs } = await runUntilLoaded(b, db, watchers(b.env(topics.ours, b.name("group"), join(ROOT, b.name("totable")), db)), started);
    b.check("consumer + loader (topic to table)", await b.count(db));
    for (const tuned of [false, true]) {
      const peer = await runConnect(b, jars, topics.peer, tuned, topics.rowIdSum);
      const name = tuned ? "Kafka Connect + Debezium JDBC sink, tuned (batches of 2,000, reWriteBatchedInserts)" : "Kafka Connect + Debezium JDBC sink, defaults";
      const note =
        `ours: first row at ${seconds(firstMs)}, ${steady(b, ours.ms, firstMs)} from there (CPU: the two scripts' sum); ` +
        `Connect: first row at ${seconds(peer.firstMs)} (the JVM's start), ${steady(b, peer.cost.ms, peer.firstMs)} from there`;
      rows.push({ stage, ours, peer: { name, cost: peer.cost, costs: true }, note });
    }
  }
}

/** How the work is split: partitions of the topic, consumers in the group, loaders (each with a folder of its own). */
interface Shape {
  readonly partitions: number;
  readonly consumers: number;
  readonly loaders: number;
}

const SHAPES = { one: { partitions: 1, consumers: 1, loaders: 1 }, wide: { partitions: 3, consumers: 3, loaders: 2 } } as const;
const shapeName = (s: Shape) =>
  `${s.partitions} partition${s.partitions > 1 ? "s" : ""} × ${s.consumers} consumer${s.consumers > 1 ? "s" : ""} × ${s.loaders} loader${s.loaders > 1 ? "s" : ""}`;

/** A topic of `partitions` filled by the producer with the benchmark's rows, before anything is timed. */
async function filledTopic(b: Bench, partitions: number): Promise<string> {
  const topic = b.name(`scale${partitions}`);
  await b.createTopic(topic, partitions);
  await measure(script("producer.ts", ["--file", b.file, "--rate", "max"]), b.env(topic, "-", ROOT));
  b.check(`producer (topic of ${partitions} partitions)`, await b.topicSize(topic));
  return topic;
}

/**
 * `shape.consumers` consumers in one group on `topic`, consumer i writing into folder i mod `shape.loaders`,
 * and a loader --watch on each folder, all into one fresh database: from the start to the last row in orders.
 */
async function runShape(b: Bench, topic: string, shape: Shape): Promise<Cost> {
  const db = await b.database("scale");
  const group = b.name("group");
  const dirs = Array.from({ length: shape.loaders }, () => join(ROOT, b.name("scale")));
  const started = performance.now();
  const scripts = [
    ...Array.from({ length: shape.consumers }, (_, i) =>
      start(`consumer ${i + 1}`, "consumer_batch_to_csv.ts", ["--batch-size", "100", "--quiet", "1"], b.env(topic, group, dirs[i % dirs.length]!, db)),
    ),
    ...dirs.map((dir, i) => start(`loader --watch ${i + 1}`, "load.ts", ["--watch"], b.env(topic, group, dir, db))),
  ];
  const { cost } = await runUntilLoaded(b, db, scripts, started);
  b.check(`${shapeName(shape)} (topic to table)`, await b.count(db));
  return cost;
}

/** The scale line on `b`'s brokers: 3 partitions × 3 consumers × 2 loaders beside 1 × 1 × 1, interleaved. */
async function scaleLine(b: Bench, where: string, runs: number, rows: Row[]): Promise<void> {
  const topics = { one: await filledTopic(b, SHAPES.one.partitions), wide: await filledTopic(b, SHAPES.wide.partitions) };
  for (let r = 0; r < runs; r++) {
    const one = await runShape(b, topics.one, SHAPES.one);
    const wide = await runShape(b, topics.wide, SHAPES.wide);
    rows.push({
      stage: `scale: ${shapeName(SHAPES.wide)}, topic to table (100 per file, ${where})`,
      ours: wide,
      peer: { name: `itself at ${shapeName(SHAPES.one)}`, cost: one, costs: true },
    });
  }
}

/**
 * The scale line on the stack's brokers, and, when the stack is one local broker, again on a three-node cluster
 * of its own (lib/stack/cluster.ts: replication 3, min.insync.replicas 2), started here and removed after.
 */
async function scale(b: Bench, runs: number, rows: Row[]): Promise<void> {
  const brokers = await b.brokerCount();
  await scaleLine(b, brokers === 1 ? "one broker" : `the stack's ${brokers} brokers`, runs, rows);
  if (brokers > 1) return;
  if (!b.kafkaTools) {
    log.warn("the scale line on a three-broker cluster is left out: it needs local mode's Kafka jars (make up without Docker)");
    return;
  }
  log.info("starting a three-broker cluster of its own for the scale line");
  const cluster = await startPrivateCluster(join(ROOT, `${b.id}-cluster`), quiet);
  const onCluster = new Bench({ ...b.config, kafkaBrokers: cluster.brokers.split(",") }, b.rows, b.file, b.kafkaTools);
  try {
    await scaleLine(onCluster, "three-broker cluster", runs, rows);
  } finally {
    await onCluster.cleanUp().catch((error) => log.warn(`cleaning up after the cluster's scale line: ${(error as Error).message}`));
    await cluster.stopAll();
  }
}

/** Connect's jars and Debezium's sink (fetched once), or undefined when Kafka's own are not at hand. */
function localConnectJars(kafkaTools: string | undefined): ConnectJars | undefined {
  if (!kafkaTools) return undefined;
  try {
    return connectJars(readCompose(readFileSync(projectPath("docker-compose.yml"), "utf8")).kafkaVersion, log);
  } catch (error) {
    log.warn(`Kafka Connect with Debezium's JDBC sink ${DEBEZIUM_VERSION} is left out of the comparison: ${(error as Error).message}`);
    return undefined;
  }
}

/** A peer's cell: its rate, and with `costs` its CPU-seconds and peak memory too. */
function peerCell(b: Bench, peer: NonNullable<Row["peer"]>): string {
  const costs = peer.costs ? `, ${(peer.cost.cpuMs / 1000).toFixed(1)} CPU-s, ${mb(peer.cost.rssBytes)}` : "";
  return `${peer.name}: ${rate(b.rows, peer.cost.ms).toLocaleString("en")}/s${costs}`;
}

/** Ours over the peer's rate; with `costs`, ours over the peer's CPU-seconds too. */
function ratioCell(row: Row): string {
  if (!row.peer) return "—";
  const speed = (row.peer.cost.ms / row.ours.ms).toFixed(2);
  return row.peer.costs ? `${speed}; CPU ${(row.ours.cpuMs / row.peer.cost.cpuMs).toFixed(2)}` : speed;
}

function table(b: Bench, rows: Row[], started: Date, load: number[]): string {
  const lines = [
    `${b.rows.toLocaleString("en")} rows, ${started.toISOString().slice(0, 16).replace("T", " ")} UTC, ${cpus().length} cores, ` +
      `${Math.round(totalmem() / 2 ** 30)} GiB, load average at start ${load.map((l) => l.toFixed(2)).join(" ")}`,
    "",
    "| stage | this project | peer | ratio | CPU-seconds | peak RSS |",
    "|---|---|---|---|---|---|",
  ];
  for (const row of rows) {
    const ours = row.stage.startsWith("all three") ? formatDuration(row.ours.ms) : `${rate(b.rows, row.ours.ms).toLocaleString("en")}/s`;
    const peer = row.peer ? peerCell(b, row.peer) : "—";
    lines.push(`| ${row.stage} | ${ours} | ${peer} | ${ratioCell(row)} | ${(row.ours.cpuMs / 1000).toFixed(1)} | ${mb(row.ours.rssBytes)} |`);
  }
  const notes = rows.filter((r) => r.note).map((r) => `- ${r.stage}${r.peer ? `, beside ${r.peer.name}` : ""}: ${r.note}`);
  return `${[...lines, ...(notes.length > 0 ? ["", ...notes] : [])].join("\n")}\n`;
}

/** Resident memory of a running process, in bytes (ps), or undefined once it is gone. */
function rssNow(pid: number): number | undefined {
  const ps = Bun.spawnSync(["ps", "-o", "rss=", "-p", String(pid)], { stderr: "ignore" });
  const kb = Number(ps.stdout.toString().trim());
  return ps.exitCode === 0 && kb > 0 ? kb * 1024 : undefined;
}

/** One script's memory over the soak: a sample every 2 s while it runs, and its whole cost. */
interface Memory {
  readonly samples: { readonly at: number; readonly rss: number }[];
  cost?: Cost;
}

/** m:ss */
const clock = (ms: number) => `${Math.floor(ms / 60_000)}:${String(Math.floor((ms % 60_000) / 1000)).padStart(2, "0")}`;

/** The median of the samples taken from `from` to `to` (ms since the start), or undefined when there are none. */
export function medianRss(samples: Memory["samples"], from: number, to: number): number | undefined {
  const values = samples.filter((s) => s.at >= from && s.at <= to).map((s) => s.rss).sort((x, y) => x - y);
  if (values.length === 0) return undefined;
  const mid = values.length >> 1;
  return values.length % 2 === 1 ? values[mid] : (values[mid - 1]! + values[mid]!) / 2;
}

/**
 * Memory early and at the end, as medians over a minute: resident memory saws up and down with each garbage
 * collection, so one sample at each mark would measure where in the saw it fell, not growth.
 */
export function memoryMarks(samples: Memory["samples"], earlyMs: number): { early?: number; end?: number; endMs?: number } {
  const endMs = samples.at(-1)?.at;
  if (endMs === undefined) return {};
  return { early: medianRss(samples, earlyMs - 30_000, earlyMs + 30_000), end: medianRss(samples, endMs - 60_000, endMs), endMs };
}

/** Samples each script's memory every 2 s while it runs, and logs the figures once a minute. Returns the stop function. */
function sampleMemory(scripts: readonly Watched[], memory: Memory[], started: number): () => void {
  let ticks = 0;
  const timer = setInterval(() => {
    const at = performance.now() - started;
    scripts.forEach((s, i) => {
      const rss = s.proc.exitCode === null ? rssNow(s.proc.pid) : undefined;
      if (rss !== undefined) memory[i]!.samples.push({ at, rss });
    });
    if (++ticks % 30 === 0) log.info(`${clock(at)}: resident ${scripts.map((s, i) => `${s.name.split(" ")[0]} ${mb(memory[i]!.samples.at(-1)?.rss ?? 0)}`).join(", ")}`);
  }, 2000);
  return () => clearInterval(timer);
}

/** The soak's table: each script's memory early and at the end (medians over a minute), their ratio, its peak and CPU. */
function soakTable(b: Bench, scripts: readonly Watched[], memory: readonly Memory[], facts: { minutes: number; rate: number; earlyMs: number; lagMs: number; started: Date; load: number[] }): string {
  const early = clock(facts.earlyMs);
  const lines = [
    `Soak: ${b.rows.toLocaleString("en")} rows at ${facts.rate}/s for ${facts.minutes} min, producer, consumer and loader --watch at once; ` +
      `${facts.started.toISOString().slice(0, 16).replace("T", " ")} UTC, ${cpus().length} cores, load average at start ${facts.load.map((l) => l.toFixed(2)).join(" ")}`,
    `Every row in orders ${seconds(facts.lagMs)} after the producer's last; topic and orders hold ${b.rows.toLocaleString("en")} rows each.`,
    `RSS is sampled every 2 s; each mark is the median of a minute's samples: ${early} ± 30 s, and the script's last minute.`,
    "",
    `| script | RSS at ${early} | RSS at the end | end ÷ ${early} | peak RSS | CPU-seconds |`,
    "|---|---|---|---|---|---|",
  ];
  scripts.forEach((s, i) => {
    const m = memoryMarks(memory[i]!.samples, facts.earlyMs);
    const ratio = m.early && m.end ? (m.end / m.early).toFixed(2) : "—";
    const end = m.end === undefined ? "—" : `${mb(m.end)} (to ${clock(m.endMs!)})`;
    lines.push(`| ${s.name} | ${m.early === undefined ? "—" : mb(m.early)} | ${end} | ${ratio} | ${mb(memory[i]!.cost!.rssBytes)} | ${(memory[i]!.cost!.cpuMs / 1000).toFixed(1)} |`);
  });
  return `${lines.join("\n")}\n`;
}

/**
 * The soak line: producer --rate `rate` (for `minutes`' worth of rows), consumer and loader --watch together
 * until orders holds every row; each script's resident memory at minute 2 (or half-way, for a shorter soak)
 * and at the end (memoryMarks). The topic and orders must hold exactly the rows sent.
 */
async function soak(config: Config, minutes: number, rate: number): Promise<string> {
  const total = minutes * 60 * rate;
  const copies = Math.ceil(total / 9994);
  const file = join(ROOT, `superstore-x${copies}.csv`);
  if (!existsSync(file)) await measure(script("make_data.ts", ["--out", file, "--copies", String(copies)]));
  const b = new Bench(config, total, file, undefined);
  const facts = { minutes, rate, earlyMs: Math.min(120_000, (minutes * 60_000) / 2), lagMs: 0, started: new Date(), load: loadavg() };
  log.info(`soak: ${total} rows at ${rate}/s for ${minutes} min; load average ${facts.load.map((l) => l.toFixed(2)).join(" ")}`);
  try {
    const db = await b.database("soak");
    const topic = b.name("soak");
    const env = b.env(topic, b.name("group"), join(ROOT, b.name("soak")), db);
    const started = performance.now();
    const scripts = [start(`producer --rate ${rate}`, "producer.ts", ["--file", file, "--rate", String(rate), "--limit", String(total)], env, true), ...watchers(env)];
    const producerDone = scripts[0]!.proc.exited.then(() => performance.now());
    const memory: Memory[] = scripts.map(() => ({ samples: [] }));
    const stopSampling = sampleMemory(scripts, memory, started);
    const sql = connect(db, quiet, { max: 1 });
    try {
      // Once a second: counting a growing orders table ten times a second would weigh on what is measured.
      await untilRows(() => ordersIn(sql), total, scripts, `orders of ${db.database}`, 1000);
      const loaded = performance.now();
      facts.lagMs = Math.max(0, loaded - (await producerDone));
    } catch (error) {
      killAll(scripts);
      throw error;
    } finally {
      stopSampling();
      await sql.end();
    }
    // The consumer's and the loader's last sample is taken now, with every row loaded, before they stop.
    scripts.forEach((s, i) => {
      const rss = s.proc.exitCode === null ? rssNow(s.proc.pid) : undefined;
      if (rss !== undefined) memory[i]!.samples.push({ at: performance.now() - started, rss });
    });
    const costs = await Promise.all(scripts.map((s) => stopAndCost(s.proc, started)));
    costs.forEach((c, i) => (memory[i]!.cost = c));
    b.check("soak: the topic", await b.topicSize(topic));
    b.check("soak: orders", await b.count(db));
    return soakTable(b, scripts, memory, facts);
  } finally {
    await b.cleanUp();
    for (const entry of readdirSync(ROOT)) if (entry.startsWith(`bench_${b.id}`)) rmSync(join(ROOT, entry), { recursive: true, force: true });
  }
}

/** The local Kafka's jars (make up fetched them, tools included), or undefined without Java and Maven. */
function localKafkaJars(): string | undefined {
  if (!Bun.which("java")) return undefined;
  try {
    return kafkaJars(readCompose(readFileSync(projectPath("docker-compose.yml"), "utf8")).kafkaVersion, quiet);
  } catch (error) {
    log.warn(`Kafka's own tools are left out of the comparison: ${(error as Error).message}`);
    return undefined;
  }
}

async function main(): Promise<void> {
  const flags = parseCli(command);
  if (!flags) return;
  const config = readConfig();
  mkdirSync(ROOT, { recursive: true });
  if (flags["soak-rate"] && !flags.soak) throw new UsageError("--soak-rate is the soak's: give --soak MINUTES too");
  if (flags.soak && (flags.size || flags.copies || flags.runs || flags.stages)) throw new UsageError("--soak runs the soak alone: leave out --size, --copies, --runs and --stages");
  if (flags.soak) {
    const minutes = parsePositiveInt(flags.soak, "--soak", 1440);
    const soakRate = flags["soak-rate"] ? parsePositiveInt(flags["soak-rate"], "--soak-rate", 100_000) : 500;
    const text = await soak(config, minutes, soakRate);
    writeFileSync(join(ROOT, "soak.md"), text);
    process.stdout.write(`\n${text}`);
    return;
  }
  const size = flags.size ?? "quick";
  if (size !== "quick" && size !== "full") throw new UsageError(`--size must be quick or full, got "${size}"`);
  const copies = flags.copies ? parsePositiveInt(flags.copies, "--copies", 1000) : size === "full" ? 100 : 10;
  const runs = flags.runs ? parsePositiveInt(flags.runs, "--runs", 10) : 1;
  const stages = parseStages(flags.stages);
  if (flags.profile) {
    profileDir = join(ROOT, "profiles");
    rmSync(profileDir, { recursive: true, force: true });
    mkdirSync(profileDir, { recursive: true });
  }
  for (const tool of ["kcat", "psql"]) {
    if (!Bun.which(tool)) throw new UsageError(`make bench compares with ${tool}: apt-get install ${tool === "psql" ? "postgresql-client" : tool}`);
  }
  const file = join(ROOT, `superstore-x${copies}.csv`);
  if (!existsSync(file)) await measure(script("make_data.ts", ["--out", file, "--copies", String(copies)]));
  const load0 = loadavg();
  const started = new Date();
  const b = new Bench(config, copies * 9994, file, localKafkaJars());
  const jars = stages.has("connect") ? localConnectJars(b.kafkaTools) : undefined;
  const rows: Row[] = [];
  log.info(`${b.rows} rows, ${runs} run(s) of each stage; load average ${load0.map((l) => l.toFixed(2)).join(" ")}`);
  try {
    const topic = stages.has("producer") ? await produce(b, runs, rows) : undefined;
    const dirs = topic && stages.has("consumer") ? await consume(b, topic, runs, rows) : undefined;
    if (dirs && stages.has("loader")) await load(b, dirs, runs, rows);
    if (stages.has("together")) await together(b, rows);
    if (jars && stages.has("connect")) await topicToTable(b, jars, runs, rows);
    if (stages.has("scale")) await scale(b, runs, rows);
  } finally {
    await b.cleanUp();
    for (const entry of readdirSync(ROOT)) if (entry.startsWith(`bench_${b.id}`) || entry.startsWith(b.id)) rmSync(join(ROOT, entry), { recursive: true, force: true });
  }
  const text = table(b, rows, started, load0);
  if (profileDir) {
    writeFileSync(join(ROOT, "profiled.md"), text);
    process.stdout.write(`\n${text}\nProfiled (figures slower than a plain run; latest.md is left as it was). One CPU profile per run: ${profileDir}/\n`);
    return;
  }
  writeFileSync(join(ROOT, "latest.md"), text);
  process.stdout.write(`\n${text}`);
}

if (import.meta.main) main().catch(fail);
