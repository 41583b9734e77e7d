// Trace: follow one row through the pipeline, step by step, from what each step left behind. For the README's
// tour; any Row ID of any loaded source works.
//
//   orders row (source, Row ID)  ->  its CSV line, its Kafka message, its batch file line, its ledger row,
//                                    its rows in orders, users and products, on stdout
//
// The orders row records where the row came from (source file and line, topic, partition, offset, batch file),
// so every other place is looked up from it. The message is read from Kafka itself, by a consumer of a group of
// its own that commits nothing; a record Kafka no longer holds (retention) is named as such.
//
// Env: DATABASE_URL (or PG*), KAFKA_BROKERS, KAFKA_SSL*, KAFKA_SASL_*, DATA_FILE, BATCHES_DIR, LOG_LEVEL.
// Flags: --row-id, --source, --help.

import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import type { KafkaMessage } from "kafkajs";
import { fail, parseCli } from "./lib/cli.ts";
import { KAFKA_SECURITY_ENV, parsePositiveInt, readConfig, type Config } from "./lib/config.ts";
import { parseCsv } from "./lib/csv.ts";
import { connect, describeDatabase, type Sql } from "./lib/db.ts";
import { detectEncoding } from "./lib/input.ts";
import { createKafka } from "./lib/kafka.ts";
import { createLogger, type Logger } from "./lib/log.ts";
import { sleep } from "./lib/retry.ts";

const command = {
  script: "scripts/trace.ts",
  summary: "Follow one loaded row back through the pipeline: CSV line, Kafka message, batch file, ledger, tables.",
  flags: {
    "row-id": { type: "string", arg: "N", help: "the row's Row ID in its source (default 1)" },
    source: { type: "string", arg: "NAME", help: "the source it came from, as orders.source_file names it (default: $DATA_FILE's name)" },
  },
  env: ["DATABASE_URL", "KAFKA_BROKERS", ...KAFKA_SECURITY_ENV, "DATA_FILE", "BATCHES_DIR", "LOG_LEVEL"],
  notes: "Example, after make demo:\n  bun scripts/trace.ts --row-id 1",
} as const;

/** What the loader wrote for the row, with its ledger row, customer and product. */
interface Traced {
  row_id: string;
  order_id: string;
  order_date: string;
  customer_id: string;
  customer_name: string;
  city: string;
  state: string;
  product_id: string;
  product_name: string;
  sales: string;
  quantity: number;
  discount: string;
  profit: string;
  source_line: number;
  kafka_topic: string | null;
  kafka_partition: number | null;
  kafka_offset: string | null;
  batch_file: string;
  records: number;
  inserted: number;
  duplicates: number;
  rejected: number;
  loaded_at: string;
  user_segment: string;
  user_latest: string;
  product_category: string;
  product_sub_category: string;
}

async function findRow(sql: Sql, source: string, rowId: number): Promise<Traced | undefined> {
  const [row] = await sql<Traced[]>`
    select o.row_id::text, o.order_id, o.order_date::text, o.customer_id, o.customer_name, o.city, o.state,
           o.product_id, o.product_name, o.sales::text, o.quantity, o.discount::text, o.profit::text,
           o.source_line, o.kafka_topic, o.kafka_partition, o.kafka_offset::text, o.batch_file,
           f.records, f.inserted, f.duplicates, f.rejected, to_char(f.loaded_at, 'YYYY-MM-DD HH24:MI:SS') as loaded_at,
           u.segment as user_segment, u.latest_order_date::text as user_latest,
           p.category as product_category, p.sub_category as product_sub_category
    from orders o
    left join loaded_files f on f.file_name = o.batch_file
    left join users u on u.customer_id = o.customer_id
    left join products p on p.product_id = o.product_id
    where o.source_file = ${source} and o.source_row_id = ${rowId}
    order by f.loaded_at
    limit 1
  `;
  return row;
}

/** Line `line` of the source file as it is written there (in its own encoding), when the file is here. */
async function sourceLine(path: string, line: number): Promise<string | undefined> {
  if (!existsSync(path)) return undefined;
  const { encoding } = await detectEncoding(path);
  const text = new TextDecoder(encoding).decode(await readFile(path));
  return text.split(/\r\n|\n|\r/)[line - 1];
}

/** How long the message may take to arrive once the consumer has joined its group. */
const READ_TIMEOUT_MS = 30_000;

/** The record at `offset` of a partition, read by a consumer that commits nothing; undefined when Kafka no longer holds it. */
async function readMessage(config: Config, log: Logger, topic: string, partition: number, offset: string): Promise<KafkaMessage | undefined> {
  const kafka = createKafka(config, log);
  const admin = kafka.admin();
  await admin.connect();
  const ends = await admin.fetchTopicOffsets(topic).finally(() => admin.disconnect());
  const range = ends.find((p) => p.partition === partition);
  if (!range || BigInt(offset) < BigInt(range.low) || BigInt(offset) >= BigInt(range.high)) return undefined;
  const consumer = kafka.consumer({ groupId: `trace-${randomBytes(4).toString("hex")}`, maxWaitTimeInMs: 500 });
  const waited = new AbortController();
  try {
    await consumer.connect();
    await consumer.subscribe({ topic });
    const found = new Promise<KafkaMessage>((resolve) => {
      void consumer.run({
        autoCommit: false,
        eachMessage: async (m) => {
          if (m.partition === partition && m.message.offset === offset) resolve(m.message);
        },
      });
    });
    consumer.seek({ topic, partition, offset });
    const late = sleep(READ_TIMEOUT_MS, waited.signal).then(() => {
      // Aborted: the message arrived and the race is over.
      if (!waited.signal.aborted) throw new Error(`${topic} partition ${partition} offset ${offset} did not arrive within ${READ_TIMEOUT_MS / 1000} s`);
      return undefined;
    });
    return await Promise.race([found, late]);
  } finally {
    waited.abort();
    await consumer.disconnect();
  }
}

/** The line of the batch file that holds the record at `offset`, and the file's line count. */
async function batchLine(dir: string, name: string, offset: string | null): Promise<string> {
  const path = join(dir, name);
  if (!existsSync(path)) return `${path} (not here any more: make clean, or another host's folder)`;
  const parsed = parseCsv(await readFile(path, "utf8"), name);
  const row = parsed.rows.find((r) => r.values._offset === offset);
  return `${path}, line ${row?.line ?? "?"} of ${parsed.rows.length + 1} (the header is line 1)`;
}

const header = (message: KafkaMessage) =>
  Object.entries(message.headers ?? {})
    .map(([name, value]) => `${name}=${String(value)}`)
    .join(" ");

async function describe(config: Config, log: Logger, source: string, t: Traced): Promise<string[]> {
  const csv = await sourceLine(join(dirname(config.dataFile), source), t.source_line);
  const message = t.kafka_topic && t.kafka_offset !== null ? await readMessage(config, log, t.kafka_topic, t.kafka_partition ?? 0, t.kafka_offset) : undefined;
  const where = `topic ${t.kafka_topic}, partition ${t.kafka_partition}, offset ${t.kafka_offset}`;
  return [
    `1. csv       ${source}, line ${t.source_line}:`,
    `             ${csv ?? "(the file is not in the data folder)"}`,
    `2. kafka     ${where}`,
    ...(message
      ? [`             key ${message.key?.toString()}`, `             headers ${header(message)}`, `             value ${message.value?.toString()}`]
      : ["             (Kafka no longer holds this record: retention deleted it, or the topic was re-created)"]),
    `3. batch     ${await batchLine(config.batchesDir, t.batch_file, t.kafka_offset)}`,
    `4. load      loaded_files: ${t.batch_file}, loaded ${t.loaded_at}: ${t.records} records, ${t.inserted} inserted, ` +
      `${t.duplicates} duplicates, ${t.rejected} rejected, in the same transaction as its rows`,
    `5. tables    orders row_id ${t.row_id}: order ${t.order_id} of ${t.order_date}, ${t.customer_name}, ${t.city}, ${t.state}: ` +
      `sales ${t.sales}, quantity ${t.quantity}, discount ${t.discount}, profit ${t.profit}`,
    `             users ${t.customer_id}: ${t.customer_name}, ${t.user_segment}, latest order ${t.user_latest}`,
    `             products ${t.product_id}: ${t.product_name}, ${t.product_category} / ${t.product_sub_category}`,
    `6. views     v_sales line_id ${t.row_id}; month ${t.order_date.slice(0, 7)} of v_monthly_sales; ${t.state} in v_region_sales`,
  ];
}

async function main(): Promise<void> {
  const flags = parseCli(command);
  if (!flags) return;
  const config = readConfig();
  const log = createLogger("trace", config.logLevel);
  const rowId = parsePositiveInt(flags["row-id"] ?? "1", "--row-id");
  const source = flags.source ?? basename(config.dataFile);
  const sql = connect(config.database, log, { max: 1 });
  try {
    const traced = await findRow(sql, source, rowId);
    if (!traced) {
      throw new Error(`Row ID ${rowId} of ${source} is not in orders of ${describeDatabase(config.database)}: run make demo first, or look in rejected_rows`);
    }
    process.stdout.write(`${(await describe(config, log, source, traced)).join("\n")}\n`);
  } finally {
    await sql.end({ timeout: 5 });
  }
}

if (import.meta.main) main().catch(fail);
