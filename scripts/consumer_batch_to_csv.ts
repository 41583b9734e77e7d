// Consumer: reads the topic in a consumer group and writes batches of BATCH_SIZE records (default 100) as CSV
// files into BATCHES_DIR, so the stream can be inspected before it is transformed.
//
//   Kafka topic sales_topic  ->  batches/sales_topic_p0_000000000000-000000000099_<hash>.csv    make consume
//
// At-least-once: a batch file is written to a temporary name, flushed to disk and renamed, and only then are
// its offsets committed (together with the other files of the same fetch, after one fsync of the folder). A
// crash before the commit means the records are read again and written again (same records; same file
// names for full batches); a crash never loses a record. The loader skips rows it already has.
// A batch file that cannot be written (disk full, no permission, a path in the way) stops the consumer with
// the reason and exit code 1, and no offset past it is committed.
//
// A partial batch is closed after BATCH_QUIET_SECONDS without new messages (so a slow stream is still near
// real time), and on shutdown. SIGINT/SIGTERM: write what is buffered, commit, disconnect, exit 0.
// The batching itself (which rows form which file) is scripts/lib/batcher.ts.
//
// Env: KAFKA_BROKERS, KAFKA_TOPIC, KAFKA_GROUP_ID, KAFKA_CLIENT_ID, KAFKA_PARTITIONS, KAFKA_SSL*, KAFKA_SASL_*
// (TLS and the SASL login), BATCHES_DIR, BATCH_SIZE, BATCH_QUIET_SECONDS, LOG_LEVEL. Flags: --topic, --group,
// --batch-size, --dir, --quiet, --until-idle, --from-beginning, --help.
// Test hook, off by default: SALES_CRASH_AT=before-write | before-rename | before-commit kills the process
// with SIGKILL at that point of its first batch file (before-commit: of its first offset commit), as a power
// cut would (tests/faults.test.ts).

import { mkdir } from "node:fs/promises";
import type { Consumer, EachBatchPayload, Kafka } from "kafkajs";
import { batchFileName, syncFolder, writeFileDurably } from "./lib/batch.ts";
import { Batcher, batchLayout, messageToRow, type Batch } from "./lib/batcher.ts";
import { fail, parseCli } from "./lib/cli.ts";
import { KAFKA_SECURITY_ENV, parseGroupId, parsePositiveInt, parsePositiveNumber, parseTopic, readConfig, type Config } from "./lib/config.ts";
import { writeCsv } from "./lib/csv.ts";
import { createKafka, ensureTopic } from "./lib/kafka.ts";
import { connectAdmin, explainKafkaFailure, isKafkaUnavailable, KAFKA_OUTAGE_MS } from "./lib/kafka_errors.ts";
import { createLogger, createProgress, formatDuration, formatRate, type Logger } from "./lib/log.ts";
import { collectGarbage } from "./lib/memory.ts";
import { backoffDelay } from "./lib/retry.ts";
import { createShutdown, type Shutdown } from "./lib/shutdown.ts";

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
    ...KAFKA_SECURITY_ENV,
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

export const CRASH_POINTS = ["before-write", "before-rename", "before-commit"] as const;

/** Thrown when a batch file cannot be written: the run stops without committing past it. */
class BatchWriteError extends Error {
  override name = "BatchWriteError";
}

/** Creates the topic if needed (the consumer may start before the producer) and, for a replay, rewinds the group. */
async function prepareTopic(kafka: Kafka, config: Config, topic: string, groupId: string, fromBeginning: boolean, log: Logger) {
  const admin = await connectAdmin(kafka, config);
  try {
    if (await ensureTopic(admin, topic, config.kafkaPartitions)) log.info(`created topic ${topic}`);
    if (fromBeginning) {
      // Only possible while no member of the group is running; kafkajs says so if one is.
      await admin.resetOffsets({ groupId, topic, earliest: true });
      log.info(`group ${groupId} moved to the start of ${topic}`);
    }
  } finally {
    await admin.disconnect();
  }
}

/** Offsets are committed once per fetched batch of messages, or after this many files, whichever comes first. */
export const COMMIT_EVERY_FILES = 100;

/**
 * Writes batch files and commits their offsets, in that order; counts what it wrote. Files are written one by
 * one (each complete on disk before its name appears); their offsets are committed together by commit(),
 * after one fsync of the folder makes every rename durable.
 */
function createBatchWriter(consumer: Consumer, topic: string, dir: string, crashAt: string | undefined, log: Logger) {
  const crash = (point: (typeof CRASH_POINTS)[number]) => {
    if (crashAt === point) process.kill(process.pid, "SIGKILL");
  };
  const counts = { files: 0, rows: 0 };
  /** partition -> the next offset to read once the files written so far are committed */
  const uncommitted = new Map<number, bigint>();
  let files: string[] = [];
  const commit = async () => {
    if (files.length === 0) return;
    const offsets = [...uncommitted].map(([partition, next]) => ({ topic, partition, offset: next.toString() }));
    const names = files;
    uncommitted.clear();
    files = [];
    try {
      await syncFolder(dir);
    } catch (error) {
      throw new BatchWriteError(`cannot sync ${dir}/ (${(error as Error).message}); the offsets of ${names.length} files stay uncommitted and will be read again by the next run`);
    }
    crash("before-commit");
    // THE COMMIT POINT. The files are complete on disk (fsync, rename, fsync of the folder) before Kafka hears
    // that these offsets are done. In the other order, a crash between the two would leave offsets committed
    // for records that are in no file: lost for good. In this order a crash leaves files whose offsets are not
    // committed: the records are read and written again, and the loader's ledger and row
    // identity make that harmless. commitOffsets takes the next offset to read, hence last + 1.
    try {
      await consumer.commitOffsets(offsets);
    } catch (error) {
      // A rebalance took the partition away: the new owner reads these records again from the last commit.
      log.warn(
        `${names.length} files written (${names[0]}${names.length > 1 ? " ..." : ""}) but their offsets were not committed ` +
          `(${(error as Error).message}); the records will be read again and the loader will skip the repeats`,
      );
    }
  };
  const write = async (batch: Batch) => {
    const laid = batchLayout(batch.rows);
    const content = writeCsv(laid.rows, laid.columns);
    const name = batchFileName(topic, batch.partition, batch.first, batch.last, content);
    crash("before-write");
    try {
      await writeFileDurably(dir, name, content, { beforeRename: () => crash("before-rename"), syncFolder: false });
    } catch (error) {
      throw new BatchWriteError(
        `cannot write ${dir}/${name} (${(error as Error).message}); offsets ${batch.first}-${batch.last} of partition ` +
          `${batch.partition} stay uncommitted and will be read again by the next run`,
      );
    }
    counts.files++;
    collectGarbage(content.length); // the batch's rows are garbage now
    counts.rows += batch.rows.length;
    log.debug(`wrote ${dir}/${name} (${batch.rows.length} records)`);
    uncommitted.set(batch.partition, batch.last + 1n);
    files.push(name);
    if (files.length >= COMMIT_EVERY_FILES) await commit();
  };
  return { write, commit, counts };
}

/** Runs async sections one at a time (eachBatch, the quiet-period timer and shutdown share the batcher). */
function createLock() {
  let tail: Promise<unknown> = Promise.resolve();
  return <T>(section: () => Promise<T>): Promise<T> => {
    const run = tail.then(section);
    tail = run.catch(() => undefined);
    return run;
  };
}

/**
 * Keeps the consumer running through broker outages: kafkajs restarts itself after most errors; a crash it
 * does not restart from (the broker away longer than its retries) is retried here with backoff for up to
 * KAFKA_OUTAGE_MS. Any other crash stops the run with its reason.
 */
function superviseConsumer(consumer: Consumer, start: () => Promise<void>, batcher: Batcher, shutdown: Shutdown, log: Logger, onFailure: (e: Error) => void) {
  let outageSince: number | undefined;
  let attempts = 0;
  const restart = () => {
    setTimeout(async () => {
      if (shutdown.requested) return;
      try {
        await start();
      } catch (error) {
        if (!isKafkaUnavailable(error) || performance.now() - outageSince! > KAFKA_OUTAGE_MS) {
          onFailure(new Error(`consumer stopped: Kafka has not come back (${(error as Error).message})`));
        } else restart();
      }
    }, backoffDelay(++attempts));
  };
  consumer.on(consumer.events.GROUP_JOIN, () => {
    outageSince = undefined;
    attempts = 0;
  });
  consumer.on(consumer.events.CRASH, ({ payload }) => {
    batcher.clear(); // not committed: these records arrive again once the consumer is back
    if (shutdown.requested) return;
    const message = payload.error.message;
    if (payload.restart) log.warn(`Kafka error (${message}); the consumer restarts`);
    else if (isKafkaUnavailable(payload.error)) {
      outageSince ??= performance.now();
      log.warn(`Kafka unavailable (${message}); reconnecting`);
      restart();
    } else onFailure(new Error(`consumer stopped: ${message}`));
  });
}

interface RunOptions {
  readonly consumer: Consumer;
  readonly topic: string;
  readonly groupId: string;
  readonly dir: string;
  readonly batchSize: number;
  readonly quietMs: number;
  /** --until-idle: stop once nothing has arrived for this long */
  readonly idleMs: number | undefined;
  readonly crashAt: string | undefined;
  readonly log: Logger;
  readonly shutdown: Shutdown;
}

/**
 * The consuming loop: each fetched batch of messages goes into the batcher, full batches are written (and
 * committed) at once, partial ones after the quiet period and at shutdown. Intake stops on a stop request or
 * a failed write, so nothing after an unwritten batch is ever committed.
 */
function createBatchingRun(o: RunOptions) {
  const { consumer, log, shutdown } = o;
  const batcher = new Batcher(o.batchSize, o.quietMs);
  const writer = createBatchWriter(consumer, o.topic, o.dir, o.crashAt, log);
  const locked = createLock();
  const progress = createProgress(log, "received", undefined, 1000);
  const activity = { received: 0, unreadable: 0, joined: false, last: performance.now(), lastFetch: 0 };
  let failure: Error | undefined;
  const stopWith = (error: Error) => {
    failure ??= error;
    shutdown.request(error.message);
  };
  const write = (batch: Batch) => writer.write(batch).catch((error: Error) => stopWith(error));
  const commit = () => writer.commit().catch((error: Error) => stopWith(error));

  const eachBatch = async ({ batch, resolveOffset, heartbeat, isRunning, isStale }: EachBatchPayload) =>
    locked(async () => {
      for (const message of batch.messages) {
        // Stop intake on a stop request or a failed write: these records stay uncommitted for the next run.
        if (!isRunning() || isStale() || shutdown.requested) break;
        const row = messageToRow(message, batch.topic, batch.partition);
        if (row._error !== null) activity.unreadable++;
        activity.received++;
        activity.last = performance.now();
        const full = batcher.add(batch.partition, BigInt(message.offset), row, activity.last);
        // resolveOffset moves kafkajs' fetch position past this record. With autoCommit off it commits
        // nothing: the commit happens in the writer, after the file is on disk.
        resolveOffset(message.offset);
        if (full) await write(full);
        if (activity.received % 200 === 0) await heartbeat();
      }
      if (!failure) await commit();
      log.debug(`partition ${batch.partition}: ${batcher.buffered(batch.partition)} records buffered`);
      progress.update(activity.received);
    });
  const runOptions = { autoCommit: false, eachBatchAutoResolve: false, eachBatch };

  consumer.on(consumer.events.GROUP_JOIN, ({ payload }) => {
    // A new assignment restarts every partition at its committed offset: buffered, uncommitted records
    // arrive again, so they are dropped here.
    batcher.clear();
    activity.joined = true;
    activity.last = performance.now();
    log.info(`joined group ${o.groupId}: ${o.topic} partitions [${(payload.memberAssignment[o.topic] ?? []).join(", ")}]`);
  });
  // "Idle" means fetches succeed and bring nothing, not that the broker is unreachable.
  consumer.on(consumer.events.FETCH, () => (activity.lastFetch = performance.now()));
  const restart = async () => {
    await consumer.connect();
    await consumer.run(runOptions);
  };
  superviseConsumer(consumer, restart, batcher, shutdown, log, stopWith);

  const timer = setInterval(() => {
    const now = performance.now();
    if (!shutdown.requested) {
      void locked(async () => {
        for (const batch of batcher.due(now)) if (!failure) await write(batch);
        if (!failure) await commit();
      });
    }
    const fetching = now - activity.lastFetch < 3000;
    // Partial batches need not wait for their quiet period: the shutdown below writes them.
    if (o.idleMs !== undefined && activity.joined && fetching && now - activity.last >= o.idleMs) {
      shutdown.request(`nothing new for ${o.idleMs / 1000}s (--until-idle)`);
    }
  }, 200);
  shutdown.onStop("stop the quiet-period timer", () => clearInterval(timer));
  shutdown.onStop("write partial batches and commit", () =>
    locked(async () => {
      for (const batch of batcher.drain()) if (!failure) await write(batch);
      if (!failure) await commit();
    }),
  );
  shutdown.onStop("disconnect consumer", () => consumer.disconnect());

  return {
    async start() {
      await consumer.connect();
      await consumer.subscribe({ topics: [o.topic], fromBeginning: true });
      await consumer.run(runOptions);
    },
    get failure() {
      return failure;
    },
    fail: (error: Error) => void (failure ??= error),
    summary: (ms: number) =>
      `done: received=${activity.received} files=${writer.counts.files} rows_written=${writer.counts.rows} ` +
      `unreadable=${activity.unreadable} in ${formatDuration(ms)} (${formatRate(activity.received, ms)})`,
    stopProgress: () => progress.done(),
  };
}

async function main(): Promise<void> {
  const flags = parseCli(command);
  if (!flags) return;
  const config = readConfig();
  const log = createLogger("consumer", config.logLevel);
  const topic = flags.topic === undefined ? config.kafkaTopic : parseTopic(flags.topic, "--topic");
  const groupId = flags.group === undefined ? config.kafkaGroupId : parseGroupId(flags.group, "--group");
  const batchSize = flags["batch-size"] ? parsePositiveInt(flags["batch-size"], "--batch-size", 1_000_000) : config.batchSize;
  const dir = flags.dir ?? config.batchesDir;
  const quietMs = 1000 * (flags.quiet ? parsePositiveNumber(flags.quiet, "--quiet") : config.batchQuietSeconds);
  const idleMs = flags["until-idle"] ? 1000 * parsePositiveNumber(flags["until-idle"], "--until-idle") : undefined;
  await mkdir(dir, { recursive: true });

  const kafka = createKafka(config, log);
  await prepareTopic(kafka, config, topic, groupId, flags["from-beginning"] === true, log);
  // A consumer that died (kill -9, power cut) holds its partitions until its session times out; 10 s instead
  // of kafkajs' 30 s lets the restarted one take over sooner. Writing a batch takes milliseconds.
  const consumer = kafka.consumer({ groupId, maxWaitTimeInMs: 1000, allowAutoTopicCreation: false, sessionTimeout: 10_000, heartbeatInterval: 3_000 });
  const shutdown = createShutdown(log);
  const run = createBatchingRun({ consumer, topic, groupId, dir, batchSize, quietMs, idleMs, crashAt: config.crashAt, log, shutdown });

  const started = performance.now();
  try {
    await run.start();
    log.info(`reading ${topic} as group ${groupId} into ${dir}/ (${batchSize} per file)`);
    await shutdown.whenRequested;
  } catch (error) {
    run.fail((await explainKafkaFailure(error, config)) ?? (error as Error));
  } finally {
    run.stopProgress();
    await shutdown.run();
  }
  if (run.failure) throw run.failure;
  log.info(run.summary(performance.now() - started));
}

if (import.meta.main) main().catch(fail);
