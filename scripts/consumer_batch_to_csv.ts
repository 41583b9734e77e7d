// Consumer: reads the topic in a consumer group and writes batches of BATCH_SIZE records (default 100) as CSV
// files into BATCHES_DIR, so the stream can be inspected before it is transformed.
//
//   Kafka topic sales_topic  ->  batches/sales_topic_p0_000000000000-000000000099_<hash>.csv    make consume
//
// At-least-once: a batch file is written to a temporary name, flushed to disk and renamed, and only then are
// its offsets committed. A crash before the commit means the records are read again and written again
// (same records, same file name); a crash never loses a record. The loader skips rows it already has.
//
// A partial batch is closed after BATCH_QUIET_SECONDS without new messages (so a slow stream is still near
// real time), and on shutdown. SIGINT/SIGTERM: write what is buffered, commit, disconnect, exit 0.
//
// Env: KAFKA_BROKERS, KAFKA_TOPIC, KAFKA_GROUP_ID, KAFKA_CLIENT_ID, KAFKA_PARTITIONS, BATCHES_DIR, BATCH_SIZE,
// BATCH_QUIET_SECONDS, LOG_LEVEL. Flags: --topic, --group, --batch-size, --dir, --quiet, --until-idle,
// --from-beginning, --help.
// Test hook, off by default: SALES_CRASH_AT=before-write | before-rename | before-commit kills the process
// with SIGKILL at that point of its first batch file, as a power cut would (tests/faults.test.ts).

import { mkdir } from "node:fs/promises";
import type { EachBatchPayload, IHeaders, KafkaMessage } from "kafkajs";
import { batchFileName, META_COLUMNS, writeFileDurably, type MetaColumn } from "./lib/batch.ts";
import { fail, parseCli } from "./lib/cli.ts";
import { parsePositiveInt, parsePositiveNumber, readConfig } from "./lib/config.ts";
import { writeCsv } from "./lib/csv.ts";
import { createKafka, describeBrokers, ensureTopic, isKafkaUnavailable, KAFKA_OUTAGE_MS } from "./lib/kafka.ts";
import { createLogger, createProgress, formatDuration, formatRate } from "./lib/log.ts";
import { createShutdown } from "./lib/shutdown.ts";

/** One row of a batch file: the source fields as received, then where the row came from. */
export type BatchRow = Record<string, string | null> & Partial<Record<MetaColumn, string | null>>;

const command = {
  script: "scripts/consumer_batch_to_csv.ts",
  summary: [
    "Read the topic in a consumer group and write every BATCH_SIZE records as a CSV file.",
    "Offsets are committed only after the file is safely on disk (at-least-once).",
  ].join("\n"),
  flags: {
    topic: { type: "string", short: "t", arg: "TOPIC", help: "topic (default $KAFKA_TOPIC)" },
    group: { type: "string", short: "g", arg: "GROUP", help: "consumer group (default $KAFKA_GROUP_ID)" },
    "batch-size": { type: "string", short: "b", arg: "N", help: "records per file (default $BATCH_SIZE = 100)" },
    dir: { type: "string", short: "d", arg: "DIR", help: "output folder (default $BATCHES_DIR = batches)" },
    quiet: { type: "string", arg: "SECONDS", help: "close a partial batch after this long without messages (default 5)" },
    "until-idle": { type: "string", arg: "SECONDS", help: "exit once nothing has arrived for this long" },
    "from-beginning": { type: "boolean", help: "replay: move the group back to the start of the topic first" },
  },
  env: [
    "KAFKA_BROKERS",
    "KAFKA_TOPIC",
    "KAFKA_GROUP_ID",
    "KAFKA_CLIENT_ID",
    "KAFKA_PARTITIONS",
    "BATCHES_DIR",
    "BATCH_SIZE",
    "BATCH_QUIET_SECONDS",
    "LOG_LEVEL",
  ],
  notes: [
    "Examples:",
    "  bun scripts/consumer_batch_to_csv.ts                    # run until Ctrl-C",
    "  bun scripts/consumer_batch_to_csv.ts --until-idle 5     # exit when the topic is drained",
    "  bun scripts/consumer_batch_to_csv.ts --from-beginning --group replay-1",
  ].join("\n"),
} as const;

function header(headers: IHeaders | undefined, name: string): string | undefined {
  const value = headers?.[name];
  if (value === undefined) return undefined;
  const one = Array.isArray(value) ? value[0] : value;
  return one === undefined ? undefined : one.toString();
}

function text(value: unknown): string | null {
  if (value === null || value === undefined) return null;
  if (typeof value === "string") return value;
  if (typeof value === "number" || typeof value === "boolean" || typeof value === "bigint") return String(value);
  return JSON.stringify(value);
}

/**
 * The batch row for one message. A message that is not a JSON object (a record the producer could not
 * split, or something another producer wrote) keeps its raw text in _raw and says why in _error.
 */
export function messageToRow(message: KafkaMessage, topic: string, partition: number): BatchRow {
  const value = message.value?.toString("utf8") ?? null;
  const row: BatchRow = {};
  const meta: Record<MetaColumn, string | null> = {
    _source_file: header(message.headers, "source_file") ?? null,
    _source_line: header(message.headers, "source_line") ?? null,
    _source_lines: header(message.headers, "source_lines") ?? null,
    _topic: topic,
    _partition: String(partition),
    _offset: message.offset,
    _timestamp: new Date(Number(message.timestamp)).toISOString(),
    _error: header(message.headers, "parse_error") ?? null,
    _raw: null,
  };
  if (meta._error === null) {
    let parsed: unknown;
    try {
      parsed = value === null ? undefined : JSON.parse(value);
    } catch {
      parsed = undefined;
    }
    if (parsed !== null && typeof parsed === "object" && !Array.isArray(parsed)) {
      for (const [key, field] of Object.entries(parsed)) {
        // A source column named like one of ours would be overwritten below; keep it under a safe name.
        row[(META_COLUMNS as readonly string[]).includes(key) ? `source${key}` : key] = text(field);
      }
    } else {
      meta._error = value === null ? "message has no value" : "message value is not a JSON object";
    }
  }
  if (meta._error !== null) meta._raw = value;
  return Object.assign(row, meta);
}

/** Source columns in order of first appearance, then the meta columns. */
export function batchColumns(rows: readonly BatchRow[]): string[] {
  const columns = new Set<string>();
  for (const row of rows) for (const key of Object.keys(row)) columns.add(key);
  for (const meta of META_COLUMNS) columns.delete(meta);
  return [...columns, ...META_COLUMNS];
}

export const CRASH_POINTS = ["before-write", "before-rename", "before-commit"] as const;

/** The test hook: die like a power cut at `point` when SALES_CRASH_AT names it. */
function crashPoint(point: (typeof CRASH_POINTS)[number]): void {
  if (process.env.SALES_CRASH_AT === point) process.kill(process.pid, "SIGKILL");
}

interface PartitionBuffer {
  rows: BatchRow[];
  first: bigint;
  last: bigint;
  /** performance.now() of the last message added */
  touched: number;
}

/** Runs async sections one at a time (eachBatch, the quiet-period timer and shutdown share the buffers). */
function createLock() {
  let tail: Promise<unknown> = Promise.resolve();
  return <T>(section: () => Promise<T>): Promise<T> => {
    const run = tail.then(section);
    tail = run.catch(() => undefined);
    return run;
  };
}

async function main(): Promise<void> {
  const flags = parseCli(command);
  if (!flags) return;
  const config = readConfig();
  const log = createLogger("consumer", config.logLevel);
  const topic = flags.topic ?? config.kafkaTopic;
  const groupId = flags.group ?? config.kafkaGroupId;
  const batchSize = flags["batch-size"] ? parsePositiveInt(flags["batch-size"], "--batch-size", 1_000_000) : config.batchSize;
  const dir = flags.dir ?? config.batchesDir;
  const quietMs = 1000 * (flags.quiet ? parsePositiveNumber(flags.quiet, "--quiet") : config.batchQuietSeconds);
  const idleMs = flags["until-idle"] ? 1000 * parsePositiveNumber(flags["until-idle"], "--until-idle") : undefined;
  await mkdir(dir, { recursive: true });

  const kafka = createKafka(config, log);
  const admin = kafka.admin();
  await admin.connect().catch((error: Error) => {
    throw new Error(`cannot reach Kafka at ${describeBrokers(config)}: ${error.message} (is it up? make up)`);
  });
  try {
    // The consumer may start before the producer: create the topic so subscribing works either way.
    if (await ensureTopic(admin, topic, config.kafkaPartitions)) log.info(`created topic ${topic}`);
    if (flags["from-beginning"]) {
      // Only possible while no member of the group is running; kafkajs says so if one is.
      await admin.resetOffsets({ groupId, topic, earliest: true });
      log.info(`group ${groupId} moved to the start of ${topic}`);
    }
  } finally {
    await admin.disconnect();
  }

  const consumer = kafka.consumer({
    groupId,
    maxWaitTimeInMs: 1000,
    allowAutoTopicCreation: false,
    // A consumer that died (kill -9, power cut) holds its partitions until its session times out; 10 s
    // instead of kafkajs' 30 s lets the restarted one take over sooner. Writing a batch takes milliseconds.
    sessionTimeout: 10_000,
    heartbeatInterval: 3_000,
  });
  const shutdown = createShutdown(log);
  const buffers = new Map<number, PartitionBuffer>();
  const locked = createLock();
  const progress = createProgress(log, "received", undefined, 1000);
  let received = 0;
  let files = 0;
  let written = 0;
  let unreadable = 0;
  let joined = false;
  let lastActivity = performance.now();
  let lastFetch = 0;
  let failure: Error | undefined;

  const writeBatch = async (partition: number) => {
    const buffer = buffers.get(partition);
    if (!buffer || buffer.rows.length === 0) return;
    buffers.delete(partition);
    const content = writeCsv(buffer.rows, batchColumns(buffer.rows));
    const name = batchFileName(topic, partition, buffer.first, buffer.last, content);
    crashPoint("before-write");
    await writeFileDurably(dir, name, content, () => crashPoint("before-rename"));
    crashPoint("before-commit");
    files++;
    written += buffer.rows.length;
    log.debug(`wrote ${dir}/${name} (${buffer.rows.length} records)`);
    // THE COMMIT POINT. The file is complete on disk (fsync + rename) before Kafka hears that these offsets
    // are done. In the other order, a crash between the two would leave offsets committed for records that
    // are in no file: lost for good. In this order a crash leaves a file whose offsets are not committed:
    // the records are read and written again, and the loader's ledger and row identity make that harmless.
    // commitOffsets takes the next offset to read, hence last + 1.
    try {
      await consumer.commitOffsets([{ topic, partition, offset: (buffer.last + 1n).toString() }]);
    } catch (error) {
      // A rebalance took the partition away: the new owner reads these records again from the last commit.
      log.warn(
        `${name} written but its offsets were not committed (${(error as Error).message}); ` +
          "the records will be read again and the loader will skip the repeats",
      );
    }
  };

  consumer.on(consumer.events.GROUP_JOIN, ({ payload }) => {
    // A new assignment restarts every partition at its committed offset (kafkajs' fetch position follows
    // the new offset manager), so buffered, uncommitted records will arrive again: drop them here.
    buffers.clear();
    joined = true;
    outageSince = undefined;
    restartDelay = 0;
    lastActivity = performance.now();
    const partitions = payload.memberAssignment[topic] ?? [];
    log.info(`joined group ${groupId}: ${topic} partitions [${partitions.join(", ")}]`);
  });
  // "Idle" means fetches succeed and bring nothing, not that the broker is unreachable.
  consumer.on(consumer.events.FETCH, () => (lastFetch = performance.now()));
  // A crash kafkajs does not restart by itself (the broker away longer than its retries) is retried here
  // until the broker is back, for up to KAFKA_OUTAGE_MS; then, or for any other error, the run fails.
  let outageSince: number | undefined;
  let restartDelay = 0;
  const restart = () => {
    restartDelay = Math.min(Math.max(restartDelay * 2, 500), 5000);
    setTimeout(async () => {
      if (shutdown.requested) return;
      try {
        await consumer.connect();
        await consumer.run(runOptions);
      } catch (error) {
        if (!isKafkaUnavailable(error) || performance.now() - outageSince! > KAFKA_OUTAGE_MS) {
          failure = new Error(`consumer stopped: Kafka has not come back (${(error as Error).message})`);
          shutdown.request("Kafka is unavailable");
        } else restart();
      }
    }, restartDelay);
  };
  consumer.on(consumer.events.CRASH, ({ payload }) => {
    buffers.clear(); // not committed: these records arrive again once the consumer is back
    if (shutdown.requested) return;
    const message = payload.error.message;
    if (payload.restart) {
      log.warn(`Kafka error (${message}); the consumer restarts`);
    } else if (isKafkaUnavailable(payload.error)) {
      outageSince ??= performance.now();
      log.warn(`Kafka unavailable (${message}); reconnecting`);
      restart();
    } else {
      failure = new Error(`consumer stopped: ${message}`);
      shutdown.request("the consumer crashed");
    }
  });

  const eachBatch = async ({ batch, resolveOffset, heartbeat, isRunning, isStale }: EachBatchPayload) => {
    if (shutdown.requested) return; // stop intake: these records stay uncommitted for the next run
    await locked(async () => {
      const partition = batch.partition;
      for (const message of batch.messages) {
        if (!isRunning() || isStale() || shutdown.requested) break;
        const offset = BigInt(message.offset);
        let buffer = buffers.get(partition);
        if (buffer && offset <= buffer.last) {
          // Fetched again from the committed offset (after a rebalance or a failed commit): start over.
          buffers.delete(partition);
          buffer = undefined;
        }
        if (!buffer) {
          buffer = { rows: [], first: offset, last: offset, touched: 0 };
          buffers.set(partition, buffer);
        }
        const row = messageToRow(message, batch.topic, partition);
        if (row._error !== null) unreadable++;
        buffer.rows.push(row);
        buffer.last = offset;
        buffer.touched = lastActivity = performance.now();
        received++;
        // resolveOffset moves kafkajs' fetch position past this record. With autoCommit off it commits
        // nothing: the commit happens in writeBatch, after the file is on disk.
        resolveOffset(message.offset);
        if (buffer.rows.length >= batchSize) await writeBatch(partition);
        if (received % 200 === 0) await heartbeat();
      }
      const left = buffers.get(partition);
      if (left) log.debug(`partition ${partition}: ${left.rows.length} records buffered (offsets ${left.first}-${left.last})`);
      progress.update(received);
    });
  };

  const runOptions = { autoCommit: false, eachBatchAutoResolve: false, eachBatch };

  const timer = setInterval(() => {
    const now = performance.now();
    for (const [partition, buffer] of buffers) {
      if (now - buffer.touched >= quietMs) {
        locked(() => writeBatch(partition)).catch((error: Error) => {
          failure = error;
          shutdown.request(`cannot write a batch file: ${error.message}`);
        });
      }
    }
    const fetching = now - lastFetch < 3000;
    if (idleMs !== undefined && joined && fetching && buffers.size === 0 && now - lastActivity >= idleMs) {
      shutdown.request(`nothing new for ${idleMs / 1000}s (--until-idle)`);
    }
  }, 200);

  shutdown.onStop("stop the quiet-period timer", () => clearInterval(timer));
  shutdown.onStop("write partial batches and commit", () =>
    locked(async () => {
      for (const partition of [...buffers.keys()]) await writeBatch(partition);
    }),
  );
  shutdown.onStop("disconnect consumer", () => consumer.disconnect());

  const started = performance.now();
  try {
    await consumer.connect();
    await consumer.subscribe({ topics: [topic], fromBeginning: true });
    await consumer.run(runOptions);
    log.info(`reading ${topic} as group ${groupId} into ${dir}/ (${batchSize} per file)`);
    await shutdown.whenRequested;
  } catch (error) {
    failure ??= error as Error;
  } finally {
    progress.done();
    await shutdown.run();
  }
  if (failure) throw failure;
  const ms = performance.now() - started;
  log.info(
    `done: received=${received} files=${files} rows_written=${written} unreadable=${unreadable} ` +
      `in ${formatDuration(ms)} (${formatRate(received, ms)})`,
  );
}

if (import.meta.main) main().catch(fail);
