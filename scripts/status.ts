// Status of the pipeline at a glance, the same health the live dashboard shows and its /metrics exports
// (scripts/lib/health.ts): what is in Kafka and not yet in a batch file (consumer lag, per partition too),
// batch files not loaded yet or set aside, what PostgreSQL holds (rows, open rejections, warnings, the last
// load, totals, rows that repeat another source's), offsets recorded as lost, and whether the producer,
// consumer and loader look alive.
//
//   Kafka + batches/ + PostgreSQL  ->  a short report on stdout          make status (and the end of make demo)
//
// With --stack (make status), what `make up` started is part of the same report: the mode, the local Kafka nodes
// and their processes, PostgreSQL's version; each service still has one line.
//
// Env: KAFKA_BROKERS, KAFKA_TOPIC, KAFKA_GROUP_ID, KAFKA_SSL*, KAFKA_SASL_*, DATABASE_URL, BATCHES_DIR, LOG_LEVEL.
// Flags: --since SECONDS (adds "took Ns" to the report), --stack, --help.

import { fail, parseCli } from "./lib/cli.ts";
import { KAFKA_SECURITY_ENV, parsePositiveNumber, readConfig, type Config } from "./lib/config.ts";
import { connect, describeDatabase, type Sql } from "./lib/db.ts";
import {
  kafkaTopology,
  lostOffsetsHealth,
  pipelineHealth,
  underReplicated,
  type Alive,
  type BatchFiles,
  type KafkaDetail,
  type KafkaTopology,
  type LostOffsetsHealth,
  type Part,
  type PipelineHealth,
} from "./lib/health.ts";
import type { PartitionLag } from "./lib/kafka.ts";
import { describeBrokers } from "./lib/kafka.ts";
import { createLogger, formatDuration } from "./lib/log.ts";
import { describeStack, type StackFacts } from "./lib/stack/describe.ts";

const command = {
  script: "scripts/status.ts",
  summary: "Report consumer lag, pending batch files, what PostgreSQL holds and whether producer, consumer and loader look alive.",
  flags: {
    since: { type: "string", arg: "EPOCH_SECONDS", help: "start time of a run, to report how long it took" },
    stack: { type: "boolean", help: "also what make up started: the mode, local Kafka nodes, PostgreSQL's version (make status)" },
  },
  env: ["KAFKA_BROKERS", "KAFKA_TOPIC", "KAFKA_GROUP_ID", ...KAFKA_SECURITY_ENV, "DATABASE_URL", "BATCHES_DIR", "LOG_LEVEL"],
  notes: "Run by: make status, make demo",
} as const;

/**
 * Brokers, and each partition's leader, replicas and in-sync replicas:
 *   brokers 1 127.0.0.1:9092, 2 127.0.0.1:9094, 3 127.0.0.1:9096; controller 2
 *   p0 leader 1 replicas 1,2,3 in sync 1,2,3
 *   under-replicated: p1 (in sync 1,3 of 1,2,3)
 */
export function describeTopology(topology: KafkaTopology): string[] {
  const brokers = topology.brokers.map((b) => `${b.id} ${b.address}`).join(", ");
  const lines = [`  brokers ${brokers || "none"}; controller ${topology.controller ?? "none"}`];
  for (const p of topology.partitions) {
    lines.push(`  p${p.partition} leader ${p.leader < 0 ? "NONE" : p.leader} replicas ${p.replicas.join(",")} in sync ${p.isr.join(",")}`);
  }
  const under = underReplicated(topology.partitions);
  if (topology.partitions.length > 0) {
    lines.push(
      `  under-replicated: ${
        under.length === 0 ? "none" : under.map((p) => `p${p.partition} (in sync ${p.isr.join(",") || "none"} of ${p.replicas.join(",")})`).join(", ")
      }`,
    );
  }
  return lines;
}

/**
 * Offsets recorded as lost, and the latest ranges:
 *   lost offsets 2 ranges, 400 records (see lost_offsets)
 *     sales_topic p0 200-399 deleted (group sales-batcher)
 */
export function describeLost(lost: LostOffsetsHealth): string[] {
  if (lost.ranges === 0) return ["  lost offsets none"];
  const unknown = lost.unknownEnds > 0 ? ` and ${lost.unknownEnds} of unknown size` : "";
  const lines = [`  lost offsets ${lost.ranges} range${lost.ranges === 1 ? "" : "s"}, ${lost.records} records${unknown} (see lost_offsets)`];
  for (const r of lost.latest) lines.push(`    ${r.topic} p${r.partition} ${r.first}-${r.last ?? "?"} ${r.kind} (group ${r.group})`);
  return lines;
}

/**
 * Rows loaded although a row of another source has their Row ID and values (orders.same_as_source), by source:
 *   WARNING: 9994 rows repeat rows of another source and count twice in the totals above:
 *     stdin: 9994 rows, the same as Sample-Superstore.csv
 *   if a source is a copy, remove its rows: delete from orders where source_file = '...' and same_as_source is not null
 */
async function crossSourceLines(sql: Sql, count: number): Promise<string[]> {
  const rows = await sql<{ source: string; first: string; n: number }[]>`
    select source_file as source, same_as_source as first, count(*)::int as n
    from orders where same_as_source is not null
    group by 1, 2 order by 3 desc, 1 limit 10
  `;
  return [
    `  WARNING: ${count} rows repeat the Row ID and values of rows of another source and count twice in the totals above:`,
    ...rows.map((r) => `    ${r.source}: ${r.n} rows, the same as ${r.first}`),
    ...(rows.length === 10 ? ["    ..."] : []),
    "  if a source is a copy, remove its rows: delete from orders where source_file = '...' and same_as_source is not null",
  ];
}

/** Each partition's lag: "  lag by partition: p0 3, p1 0"; nothing for a topic without partitions. */
export function describePartitionLag(partitions: readonly PartitionLag[]): string[] {
  return partitions.length === 0 ? [] : [`  lag by partition: ${partitions.map((p) => `p${p.partition} ${p.lag}`).join(", ")}`];
}

/**
 * Whether each process looks alive, and on what grounds:
 *   alive:      producer yes: 20 records appended to sales_topic in the last 60 s
 *               consumer no: group sales-batcher has no member (Empty)
 *               loader yes: no session named load, last load 3.2s ago
 */
export function describeAlive(alive: Alive): string[] {
  const word = (v: boolean | null) => (v === null ? "unknown" : v ? "yes" : "no");
  return (["producer", "consumer", "loader"] as const).map(
    (name, i) => `${i === 0 ? "alive:      " : "            "}${name} ${word(alive[name].alive)}: ${alive[name].why}`,
  );
}

/**
 * Kafka's lines: the topic and the group's lag, or why they cannot be read, then the brokers and partitions and
 * each partition's lag. With `stack` (make status), where it runs and the nodes make up started, on the same
 * line and below it.
 */
async function kafkaLines(config: Config, stack: StackFacts | undefined, kafka: Part<KafkaDetail>): Promise<string[]> {
  const topology = await kafkaTopology(config);
  if (!kafka.ok) process.exitCode = 1;
  const where = stack ? `${describeBrokers(config)}${stack.kafka ? ` (${stack.kafka})` : ""}: ` : "";
  const what = kafka.ok
    ? `topic ${kafka.topic}: ${kafka.messages} messages in ${kafka.partitions} partition${kafka.partitions === 1 ? "" : "s"}; group ${kafka.group} lag ${kafka.lag}`
    : kafka.error;
  return [
    `kafka:      ${where}${what}`,
    ...(stack?.nodes ?? []),
    ...(topology.ok ? describeTopology(topology) : []),
    ...(kafka.ok ? describePartitionLag(kafka.byPartition) : []),
  ];
}

/** "batches:    3 files in batches/, 1 not loaded yet, 0 set aside in failed/" (which are loaded unknown without the ledger). */
function describeFiles(files: BatchFiles): string {
  const pending = files.ledgerError === null ? `${files.pending} not loaded yet` : "not loaded yet unknown (the ledger cannot be read)";
  return `batches:    ${files.total} files in ${files.dir}/, ${pending}, ${files.failed} set aside in failed/`;
}

/** The batch folder, then what PostgreSQL holds (with `stack`, the server's version too), or why it cannot be read. */
async function databaseLines(config: Config, stack: StackFacts | undefined, sql: Sql, health: PipelineHealth): Promise<string[]> {
  const db = health.database;
  const server = stack?.postgres ? ` (PostgreSQL ${stack.postgres})` : "";
  // The server down, the database missing or the login refused carry their own fix; anything else is most
  // likely a database without the pipeline's tables.
  const lines = [
    describeFiles(health.files),
    `postgresql: ${describeDatabase(config.database)}${server}${db.ok ? "" : `: ${db.error}${db.problem ? "" : " (make migrate)"}`}`,
  ];
  if (!db.ok) {
    process.exitCode = 1;
    return lines;
  }
  const [t] = await sql<{ users: string; products: string; sales: string | null }[]>`
    select (select count(*) from users) as users, (select count(*) from products) as products,
           (select sum(sales) from v_sales) as sales
  `;
  lines.push(
    `  orders ${db.rowsLoaded}, users ${t!.users}, products ${t!.products}, open rejections ${db.rejectedOpen}, ` +
      `rows with warnings ${db.rowsWithWarnings}, batch files loaded ${db.filesLoaded}`,
    `  ledger: inserted ${db.ledgerInserted}, duplicates ${db.ledgerDuplicates}, rejected ${db.ledgerRejected}; loader sessions ${db.loaderSessions}`,
    `  total sales ${t!.sales ?? 0}, last load ${db.lastLoadAt ?? "never"}`,
  );
  const lost = await lostOffsetsHealth(sql);
  lines.push(...(lost.ok ? describeLost(lost) : [`  lost offsets: ${lost.error} (make migrate)`]));
  if (db.rowsCrossSource > 0) lines.push(...(await crossSourceLines(sql, db.rowsCrossSource)));
  return lines;
}

/** The whole report: the facts of pipelineHealth (those /metrics exports), then what only status shows. */
async function report(config: Config, stack: StackFacts | undefined): Promise<string[]> {
  const sql = connect(config.database, createLogger("status", "silent"), { max: 1 });
  try {
    const health = await pipelineHealth(config, sql);
    const kafka = await kafkaLines(config, stack, health.kafka);
    const database = await databaseLines(config, stack, sql, health);
    return [...(stack ? [`mode:       ${stack.mode}`] : []), ...kafka, ...database, ...describeAlive(health.alive)];
  } finally {
    await sql.end({ timeout: 5 });
  }
}

async function main(): Promise<void> {
  const flags = parseCli(command);
  if (!flags) return;
  const config = readConfig();
  const since = flags.since ? parsePositiveNumber(flags.since, "--since") : undefined;
  const stack = flags.stack ? await describeStack(config) : undefined;
  const lines = await report(config, stack);
  if (since !== undefined) lines.push(`took:       ${formatDuration(Date.now() - since * 1000)}`);
  process.stdout.write(`${lines.join("\n")}\n`);
}

if (import.meta.main) main().catch(fail);
