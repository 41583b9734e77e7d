// Status of the pipeline at a glance: what is in Kafka and not yet in a batch file (consumer lag), batch files
// not loaded yet, and what PostgreSQL holds (rows per table, rejected rows, totals).
//
//   Kafka + batches/ + PostgreSQL  ->  a short report on stdout          make status (and the end of make demo)
//
// Env: KAFKA_BROKERS, KAFKA_TOPIC, KAFKA_GROUP_ID, DATABASE_URL, BATCHES_DIR, LOG_LEVEL.
// Flags: --since SECONDS (adds "took Ns" to the report), --help.

import { readdir } from "node:fs/promises";
import { fail, parseCli } from "./lib/cli.ts";
import { parsePositiveNumber, readConfig, type Config } from "./lib/config.ts";
import { connect, describeDatabase } from "./lib/db.ts";
import { consumerLag, createKafka } from "./lib/kafka.ts";
import { createLogger, formatDuration, type Logger } from "./lib/log.ts";

const command = {
  script: "scripts/status.ts",
  summary: "Report consumer lag, pending batch files and what PostgreSQL holds.",
  flags: {
    since: { type: "string", arg: "EPOCH_SECONDS", help: "start time of a run, to report how long it took" },
  },
  env: ["KAFKA_BROKERS", "KAFKA_TOPIC", "KAFKA_GROUP_ID", "DATABASE_URL", "BATCHES_DIR", "LOG_LEVEL"],
  notes: "Run by: make status, make demo",
} as const;

async function kafkaLine(config: Config, log: Logger): Promise<string> {
  const admin = createKafka(config, createLogger(log.name, "silent"), { probe: true }).admin();
  try {
    await admin.connect();
    if (!(await admin.listTopics()).includes(config.kafkaTopic)) return `topic ${config.kafkaTopic} does not exist yet`;
    const offsets = await admin.fetchTopicOffsets(config.kafkaTopic);
    const messages = offsets.reduce((n, p) => n + Number(p.high) - Number(p.low), 0);
    const lag = await consumerLag(admin, config.kafkaGroupId, config.kafkaTopic);
    const parts = `${offsets.length} partition${offsets.length === 1 ? "" : "s"}`;
    return `topic ${config.kafkaTopic}: ${messages} messages in ${parts}; group ${config.kafkaGroupId} lag ${lag}`;
  } catch (error) {
    return `Kafka at ${config.kafkaBrokers.join(",")} does not answer (${(error as Error).message})`;
  } finally {
    await admin.disconnect().catch(() => undefined);
  }
}

async function main(): Promise<void> {
  const flags = parseCli(command);
  if (!flags) return;
  const config = readConfig();
  const log = createLogger("status", config.logLevel);
  const since = flags.since ? parsePositiveNumber(flags.since, "--since") : undefined;
  const lines: string[] = [`kafka:      ${await kafkaLine(config, log)}`];

  const files = (await readdir(config.batchesDir).catch(() => [] as string[])).filter((f) => f.endsWith(".csv"));
  const sql = connect(config.database, createLogger(log.name, "silent"), { max: 1 });
  try {
    const [tables] = await sql<{ users: string; products: string; orders: string; rejected: string; files: string; sales: string | null }[]>`
      select
        (select count(*) from users) as users,
        (select count(*) from products) as products,
        (select count(*) from orders) as orders,
        (select count(*) from rejected_rows where status = 'open') as rejected,
        (select count(*) from loaded_files) as files,
        (select sum(sales) from orders) as sales
    `;
    const loaded = new Set((await sql<{ file_name: string }[]>`select file_name from loaded_files`).map((r) => r.file_name));
    const pending = files.filter((f) => !loaded.has(f)).length;
    lines.push(
      `batches:    ${files.length} files in ${config.batchesDir}/, ${pending} not loaded yet`,
      `postgresql: ${describeDatabase(config.database)}`,
      `  orders ${tables!.orders}, users ${tables!.users}, products ${tables!.products}, ` +
        `open rejections ${tables!.rejected}, batch files loaded ${tables!.files}`,
      `  total sales ${tables!.sales ?? 0}`,
    );
  } catch (error) {
    lines.push(
      `batches:    ${files.length} files in ${config.batchesDir}/`,
      `postgresql: ${describeDatabase(config.database)}: ${(error as Error).message} (make up; make migrate)`,
    );
    process.exitCode = 1;
  } finally {
    await sql.end({ timeout: 5 });
  }
  if (since !== undefined) lines.push(`took:       ${formatDuration(Date.now() - since * 1000)}`);
  process.stdout.write(`${lines.join("\n")}\n`);
}

if (import.meta.main) main().catch(fail);
