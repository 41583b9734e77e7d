// Benchmark: each stage of the pipeline next to a standard tool doing the same job on the same rows, on the
// same broker and server, interleaved, with CPU-seconds and peak memory per run. Timing goals live here, never
// in the tests. Every run checks its row counts: a fast run that loses rows fails the benchmark.
//
//   make_data --copies N -> producer | kcat -P -> consumer | kcat -C -> load | psql \copy -> all three at once
//
//   make bench                 quick: 99,940 rows (10 copies of the sample), about 2 minutes
//   make bench SIZE=full       999,400 rows (100 copies)
//
// Stages: the producer at --rate max beside kcat -P (acks=all, idempotent) sending the same keyed messages, and
// beside Kafka's ProducerPerformance sending as many records of their mean size (in local mode, where make up
// fetched Kafka's jars, tools included); the consumer writing 100-record and 10,000-record files beside kcat -C
// writing the topic to one file, and beside Kafka's ConsumerPerformance reading it; the
// loader on 10,000-row files beside psql \copy of the same cleaned rows into the same schema (users and products
// already there), and on 100-row files beside itself on 10,000-row ones; then producer, consumer (100 per file)
// and loader --watch at once, CSV to table. Everything runs on topics, groups, databases and folders of its own
// under .local/bench; the walkthrough's data is not touched. The table is printed and written to
// .local/bench/latest.md.
//
// Env: KAFKA_BROKERS, DATABASE_URL (the server; databases bench_*), LOG_LEVEL. Flags: --size, --copies, --runs.

import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { cpus, loadavg, totalmem } from "node:os";
import { join } from "node:path";
import { fail, parseCli, UsageError } from "./lib/cli.ts";
import { parsePositiveInt, projectPath, readConfig, type Config, type DatabaseTarget } from "./lib/config.ts";
import { connect, databaseUrl, maintenance, withDatabase } from "./lib/db.ts";
import { prepareFile } from "./lib/load/read.ts";
import { COPY_COLUMNS, copyChunks } from "./lib/load/transaction.ts";
import type { Admin } from "kafkajs";
import { createKafka, ensureTopic } from "./lib/kafka.ts";
import { createLogger, formatDuration } from "./lib/log.ts";
import { pollUntil } from "./lib/retry.ts";
import { readCompose } from "./lib/stack/compose.ts";
import { kafkaJars } from "./lib/stack/kafka.ts";
import { ensureDatabase, migrate } from "./migrate.ts";

const command = {
  script: "scripts/bench.ts",
  summary: "Measure each stage next to kcat / psql on the same rows, interleaved, with CPU and memory per run.",
  flags: {
    size: { type: "string", arg: "quick|full", help: "quick: 10 copies of the sample (99,940 rows); full: 100 (999,400)" },
    copies: { type: "string", arg: "N", help: "copies of the 9,994 sample rows (overrides --size)" },
    runs: { type: "string", arg: "N", help: "runs of each measurement, interleaved with the peer's (default 1)" },
  },
  env: ["KAFKA_BROKERS", "DATABASE_URL", "LOG_LEVEL"],
  notes: "Run by: make bench (SIZE=full for a million rows). Needs kcat and psql (apt-get install kcat postgresql-client).",
} as const;

const ROOT = projectPath(".local/bench");
const log = createLogger("bench");
const quiet = createLogger("bench", "silent");

/** What one process cost: wall time, CPU time (user + system) and peak resident memory. */
interface Cost {
  readonly ms: number;
  readonly cpuMs: number;
  readonly rssBytes: number;
}

/** Runs a command to completion; throws with its output when it fails. */
async function measure(cmd: string[], env: Record<string, string> = {}, stdoutFile?: string): Promise<Cost> {
  const started = performance.now();
  const child = Bun.spawn(cmd, {
    env: { ...process.env, LOG_LEVEL: "warn", ...env },
    stdout: stdoutFile ? Bun.file(stdoutFile) : "ignore",
    stderr: "pipe",
  });
  const [code, stderr] = await Promise.all([child.exited, new Response(child.stderr).text()]);
  const ms = performance.now() - started;
  if (code !== 0) throw new Error(`${cmd.join(" ")} exited ${code}\n${stderr}`);
  const usage = child.resourceUsage()!;
  return { ms, cpuMs: Number(usage.cpuTime.total) / 1000, rssBytes: usage.maxRSS };
}

const script = (name: string, args: string[]) => [process.execPath, join(import.meta.dir, name), ...args];

interface Row {
  readonly stage: string;
  readonly ours: Cost;
  /** what the rate is measured against */
  readonly peer?: { readonly name: string; readonly cost: Cost };
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

  /** A fresh, migrated database for one load. */
  async database(what: string): Promise<DatabaseTarget> {
    const target = withDatabase(this.config.database, this.name(what));
    await ensureDatabase(target, quiet);
    const sql = connect(target, quiet, { max: 1 });
    try {
      await migrate(sql, projectPath("sql"), quiet);
    } finally {
      await sql.end();
    }
    this.databases.push(target);
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

  createTopic(topic: string): Promise<boolean> {
    return this.admin((admin) => ensureTopic(admin, topic, this.config.kafkaPartitions));
  }

  check(what: string, got: number): void {
    if (got !== this.rows) throw new Error(`${what}: ${got} rows where ${this.rows} were sent; a fast run that loses rows is a failure`);
  }

  async cleanUp(): Promise<void> {
    const admin = maintenance(this.config.database, quiet);
    try {
      for (const db of this.databases) await admin.unsafe(`drop database if exists "${db.database}" with (force)`);
    } finally {
      await admin.end();
    }
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
  const dump = join(ROOT, `${b.id}.messages`);
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

/** Producer, consumer (100 per file) and loader --watch at once: from the CSV file to the last row in orders. */
async function together(b: Bench, rows: Row[]): Promise<void> {
  const db = await b.database("together");
  const env = b.env(b.name("together"), b.name("group"), join(ROOT, b.name("together")), db);
  const started = performance.now();
  const loader = Bun.spawn(script("load.ts", ["--watch"]), { env: { ...process.env, LOG_LEVEL: "warn", ...env }, stderr: "inherit" });
  const consumer = Bun.spawn(script("consumer_batch_to_csv.ts", ["--batch-size", "100", "--quiet", "1"]), {
    env: { ...process.env, LOG_LEVEL: "warn", ...env },
    stderr: "inherit",
  });
  const producer = measure(script("producer.ts", ["--file", b.file, "--rate", "max"]), env);
  const sql = connect(db, quiet, { max: 1 });
  try {
    await pollUntil(
      async () => {
        if (loader.exitCode !== null || consumer.exitCode !== null) throw Object.assign(new Error("a script exited"), { fatal: true });
        const [row] = await sql<{ n: number }[]>`select count(*)::int as n from orders`;
        return row!.n >= b.rows;
      },
      { timeout: 1_800_000, every: 100, what: `${b.rows} rows in orders` },
    );
  } finally {
    await sql.end();
  }
  const ms = performance.now() - started;
  const produced = await producer;
  consumer.kill("SIGTERM");
  loader.kill("SIGTERM");
  await Promise.all([consumer.exited, loader.exited]);
  b.check("all three at once", await b.count(db));
  const cpuMs = [consumer, loader].reduce((n, p) => n + Number(p.resourceUsage()!.cpuTime.total) / 1000, produced.cpuMs);
  const rssBytes = Math.max(produced.rssBytes, consumer.resourceUsage()!.maxRSS, loader.resourceUsage()!.maxRSS);
  rows.push({ stage: "all three at once, CSV to table (100 per file)", ours: { ms, cpuMs, rssBytes }, note: "CPU is the three scripts' sum" });
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
    const peer = row.peer ? `${row.peer.name}: ${rate(b.rows, row.peer.cost.ms).toLocaleString("en")}/s` : "—";
    const ratio = row.peer ? (row.peer.cost.ms / row.ours.ms).toFixed(2) : "—";
    lines.push(`| ${row.stage} | ${ours} | ${peer} | ${ratio} | ${(row.ours.cpuMs / 1000).toFixed(1)} | ${mb(row.ours.rssBytes)} |`);
  }
  return `${lines.join("\n")}\n`;
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
  const size = flags.size ?? "quick";
  if (size !== "quick" && size !== "full") throw new UsageError(`--size must be quick or full, got "${size}"`);
  const copies = flags.copies ? parsePositiveInt(flags.copies, "--copies", 1000) : size === "full" ? 100 : 10;
  const runs = flags.runs ? parsePositiveInt(flags.runs, "--runs", 10) : 1;
  for (const tool of ["kcat", "psql"]) {
    if (!Bun.which(tool)) throw new UsageError(`make bench compares with ${tool}: apt-get install ${tool === "psql" ? "postgresql-client" : tool}`);
  }
  mkdirSync(ROOT, { recursive: true });
  const file = join(ROOT, `superstore-x${copies}.csv`);
  if (!existsSync(file)) await measure(script("make_data.ts", ["--out", file, "--copies", String(copies)]));
  const load0 = loadavg();
  const started = new Date();
  const b = new Bench(config, copies * 9994, file, localKafkaJars());
  const rows: Row[] = [];
  log.info(`${b.rows} rows, ${runs} run(s) of each stage; load average ${load0.map((l) => l.toFixed(2)).join(" ")}`);
  try {
    const topic = await produce(b, runs, rows);
    const dirs = await consume(b, topic, runs, rows);
    await load(b, dirs, runs, rows);
    await together(b, rows);
  } finally {
    await b.cleanUp();
    for (const entry of readdirSync(ROOT)) if (entry.startsWith(`bench_${b.id}`) || entry.startsWith(b.id)) rmSync(join(ROOT, entry), { recursive: true, force: true });
  }
  const text = table(b, rows, started, load0);
  writeFileSync(join(ROOT, "latest.md"), text);
  process.stdout.write(`\n${text}`);
}

if (import.meta.main) main().catch(fail);
