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
// A partial batch is closed once its first record has waited BATCH_MAX_SECONDS (10 s; make stream: 2 s), so a
// slow, steady stream still lands every few seconds, as Kafka Connect's sinks rotate files by time; after
// BATCH_QUIET_SECONDS without new messages; and on shutdown. SIGINT/SIGTERM: write what is buffered, commit,
// disconnect, exit 0.
// The batching itself (which rows form which file) is scripts/lib/batcher.ts.
//
// Every offset is accounted for (scripts/lib/offsets.ts): offsets Kafka no longer has when the group reaches
// them (retention, deleteRecords, a truncated log, the topic deleted and re-created under the same name) are
// written as a gap file into the batch folder, which the loader records in lost_offsets; then the consumer
// stops with exit code 1 naming topic, partition and offsets, or with --allow-gaps goes on. --until-idle
// exits only once every partition of the topic is read to its end, also partitions added meanwhile.
//
// Env: KAFKA_BROKERS, KAFKA_TOPIC, KAFKA_GROUP_ID, KAFKA_CLIENT_ID, KAFKA_PARTITIONS, KAFKA_SSL*, KAFKA_SASL_*
// (TLS and the SASL login), BATCHES_DIR, BATCH_SIZE, BATCH_QUIET_SECONDS, BATCH_MAX_SECONDS, LOG_LEVEL, LOG_PROGRESS.
// Flags: --topic, --group, --batch-size, --dir, --quiet, --max-age, --until-idle, --from-beginning, --allow-gaps, --help.
// Test hook, off by default: SALES_CRASH_AT=before-write | before-rename | before-commit kills the process
// with SIGKILL at that point of its first batch file (before-commit: of its first offset commit), as a power
// cut would (tests/faults.test.ts).

import { mkdir } from "node:fs/promises";
import type { Admin, Consumer, ConsumerRunConfig, EachBatchPayload, Kafka } from "kafkajs";
import { batchFileName, gapFile, syncFolder, writeFileDurably, type LostRange } from "./lib/batch.ts";
import { Batcher, batchLayout, messageToRow, recordFingerprint, type Batch } from "./lib/batcher.ts";
import { fail, parseCli } from "./lib/cli.ts";
import { KAFKA_SECURITY_ENV, parseGroupId, parsePositiveInt, parsePositiveNumber, parseTopic, readConfig, type Config } from "./lib/config.ts";
import { writeCsv } from "./lib/csv.ts";
import { createKafka, ensureTopic } from "./lib/kafka.ts";
import { connectAdmin, explainKafkaFailure, isKafkaUnavailable, KAFKA_OUTAGE_MS, whileKafkaUnavailable } from "./lib/kafka_errors.ts";
import { createLogger, createProgress, formatDuration, rateWhile, type Logger, type Progress } from "./lib/log.ts";
import { collectGarbage } from "./lib/memory.ts";
import { deletedRange, OffsetAccount, parseCommitted, recreatedRange, type Arrival, type Committed } from "./lib/offsets.ts";
import { backoffDelay, sleep } from "./lib/retry.ts";
import { createShutdown, type Shutdown } from "./lib/shutdown.ts";

const command = {
  script: "scripts/consumer_batch_to_csv.ts",
  summary: [
    "Read the topic in a consumer group and write every BATCH_SIZE records as a CSV file, or fewer once the",
    "first of them has waited BATCH_MAX_SECONDS, whichever comes first.",
    "Offsets are committed only after the file is safely on disk (at-least-once).",
  ].join("\n"),
  flags: {
    topic: { type: "string", short: "t", arg: "TOPIC", help: "topic (default $KAFKA_TOPIC)" },
    group: { type: "string", short: "g", arg: "GROUP", help: "consumer group (default $KAFKA_GROUP_ID)" },
    "batch-size": { type: "string", short: "b", arg: "N", help: "records per file (default $BATCH_SIZE = 100)" },
    dir: { type: "string", short: "d", arg: "DIR", help: "output folder (default $BATCHES_DIR = batches)" },
    quiet: { type: "string", arg: "SECONDS", help: "close a partial batch after this long without messages (default 5)" },
    "max-age": { type: "string", arg: "SECONDS", help: "close a partial batch once its first record has waited this long (default 10)" },
    "until-idle": { type: "string", arg: "SECONDS", help: "exit once nothing has arrived for this long and every partition is read to its end" },
    "from-beginning": { type: "boolean", help: "replay: move the group back to the start of the topic first" },
    "allow-gaps": {
      type: "boolean",
      help: "record offsets Kafka no longer has (retention, a re-created topic) and go on; without it: record them and stop",
    },
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
    "BATCH_MAX_SECONDS",
    "LOG_LEVEL",
    "LOG_PROGRESS",
  ],
  notes: [
    "Examples:",
    "  bun scripts/consumer_batch_to_csv.ts                    # run until Ctrl-C",
    "  bun scripts/consumer_batch_to_csv.ts --until-idle 5     # exit when the topic is drained",
    "  bun scripts/consumer_batch_to_csv.ts --from-beginning --group replay-1",
    "  bun scripts/consumer_batch_to_csv.ts --allow-gaps       # after it stopped at a gap: record it and go on",
  ].join("\n"),
} as const;

export const CRASH_POINTS = ["before-write", "before-rename", "before-commit"] as const;

/** Thrown when a batch file cannot be written: the run stops without committing past it. */
class BatchWriteError extends Error {
  override name = "BatchWriteError";
}

/** Thrown when offsets could not be read and --allow-gaps was not given: the run stops without committing past them. */
export class OffsetGapError extends Error {
  override name = "OffsetGapError";
}

/**
 * Creates the topic if needed (the consumer may start before the producer) and, for a replay, rewinds the
 * group. Returns the admin client, connected: the run asks it for committed offsets and where logs start and end.
 */
async function prepareTopic(kafka: Kafka, config: Config, topic: string, groupId: string, fromBeginning: boolean, log: Logger): Promise<Admin> {
  const admin = await connectAdmin(kafka, config);
  try {
    if (await ensureTopic(admin, topic, config.kafkaPartitions)) log.info(`created topic ${topic}`);
    if (fromBeginning) {
      // Only possible while no member of the group is running; kafkajs says so if one is.
      await admin.resetOffsets({ groupId, topic, earliest: true });
      log.info(`group ${groupId} moved to the start of ${topic}`);
    }
    return admin;
  } catch (error) {
    await admin.disconnect();
    throw error;
  }
}

/** Offsets are committed once per fetched batch of messages, or after this many files, whichever comes first. */
export const COMMIT_EVERY_FILES = 100;

type Offsets = { topic: string; partition: number; offset: string }[];

interface WriterHooks {
  /** before offsets are committed: may write files, and drops the partitions it returns from the commit */
  beforeCommit(partitions: number[]): Promise<number[]>;
  /** after the group took the commit */
  committed(offsets: Offsets): void;
}

/** The test hook SALES_CRASH_AT: dies like a power cut at that point. */
type Crash = (point: (typeof CRASH_POINTS)[number]) => void;

/**
 * Commit errors saying the group no longer knows this member as it is (a coordinator that came back in a rolling
 * restart forgets it, or a rebalance moved on without it; a coordinator that moved is found again by the commit,
 * lib/kafkajs_fixes.ts). Commits keep failing until the member joins
 * again, and kafkajs rejoins only when its own fetch or heartbeat meets such an error: so the next batch of
 * records throws it to kafkajs, which rejoins (the records come again and are skipped as repeats).
 */
const MEMBERSHIP_LOST: ReadonlySet<string> = new Set(["UNKNOWN_MEMBER_ID", "ILLEGAL_GENERATION", "REBALANCE_IN_PROGRESS", "FENCED_INSTANCE_ID"]);

/** The Kafka error in `error` or its causes that says the group no longer knows this member; kafkajs rejoins on it. */
export function membershipLostBy(error: unknown): Error | undefined {
  for (let e = error as (Error & { type?: string; cause?: unknown }) | undefined; e; e = e.cause as typeof e) {
    if (e.type !== undefined && MEMBERSHIP_LOST.has(e.type)) return e;
  }
  return undefined;
}

/** Files written and not committed yet. */
interface Written {
  /** partition -> the next offset to read once the files written so far are committed */
  readonly next: Map<number, bigint>;
  names: string[];
}

/** A batch as a CSV file, complete on disk before its name appears (the folder is synced at the commit). Returns its name. */
async function writeBatchFile(dir: string, topic: string, batch: Batch, crash: Crash): Promise<string> {
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
  collectGarbage(content.length); // the batch's rows are garbage now
  return name;
}

/** A gap file, durable (folder synced) before anything past the gap can be committed. Returns its name. */
async function writeGapFile(dir: string, range: LostRange): Promise<string> {
  const { name, content } = gapFile(range);
  try {
    await writeFileDurably(dir, name, content);
  } catch (error) {
    throw new BatchWriteError(`cannot write ${dir}/${name} (${(error as Error).message}): ${range.reason}`);
  }
  return name;
}

/**
 * The offset checks before a commit (they may write files, and leave out partitions whose log was replaced).
 * False when Kafka cannot answer them: the files' offsets are then committed with the next files.
 */
async function checkBeforeCommitting(hooks: WriterHooks | undefined, written: Written, log: Logger): Promise<boolean> {
  try {
    for (const partition of await (hooks?.beforeCommit([...written.next.keys()]) ?? [])) written.next.delete(partition);
    return true;
  } catch (error) {
    if (!isKafkaUnavailable(error)) throw error;
    // Not checked, not committed: the files' offsets are committed with the next files once Kafka answers.
    log.warn(`Kafka unavailable (${(error as Error).message}); the offsets of ${written.names.length} files are committed later`);
    return false;
  }
}

interface Committer {
  readonly consumer: Consumer;
  readonly dir: string;
  readonly crash: Crash;
  readonly log: Logger;
  readonly hooks: WriterHooks | undefined;
}

/** One fsync of the folder makes the files' renames durable; then their offsets are committed. Returns the commit's error, if any. */
async function commitDurably({ consumer, dir, crash, log, hooks }: Committer, offsets: Offsets, names: readonly string[]): Promise<Error | undefined> {
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
    if (offsets.length > 0) await consumer.commitOffsets(offsets);
    hooks?.committed(offsets);
    return undefined;
  } catch (error) {
    // A rebalance, a coordinator that moved, kafkajs restarting its consumer: the offsets go with the next commit.
    // The files are durable, so a commit of them is right whenever it happens; until then a restart reads these
    // records again and the loader skips the repeats.
    log.warn(
      `${names.length} files written (${names[0]}${names.length > 1 ? " ..." : ""}) but their offsets were not committed ` +
        `(${(error as Error).message}); they go with the next commit`,
    );
    return error as Error;
  }
}

/**
 * Writes batch files and commits their offsets, in that order; counts what it wrote. Files are written one by
 * one (each complete on disk before its name appears); their offsets are committed together by commit(),
 * after one fsync of the folder makes every rename durable.
 */
function createBatchWriter(consumer: Consumer, topic: string, dir: string, crashAt: string | undefined, log: Logger) {
  const crash: Crash = (point) => {
    if (crashAt === point) process.kill(process.pid, "SIGKILL");
  };
  const counts = { files: 0, rows: 0, gaps: 0 };
  const written: Written = { next: new Map(), names: [] };
  let hooks: WriterHooks | undefined;
  /** A commit refused because the group no longer knows this member: kafkajs is to rejoin. */
  let membershipLost: Error | undefined;
  /** This member's partitions since its last assignment (undefined before the first); assignments so far. */
  let mine: ReadonlySet<number> | undefined;
  let assignments = 0;
  const commit = async () => {
    if (written.names.length === 0) return;
    if (!(await checkBeforeCommitting(hooks, written, log))) return;
    const assignment = assignments;
    const offsets = [...written.next].filter(([partition]) => mine?.has(partition) ?? true).map(([partition, next]) => ({ topic, partition, offset: next.toString() }));
    const names = written.names;
    const next = new Map(written.next);
    written.next.clear();
    written.names = [];
    const refused = await commitDurably({ consumer, dir, crash, log, hooks }, offsets, names);
    if (refused === undefined) return;
    // Refused for a membership that a new assignment has replaced meanwhile: that join already happened.
    if (assignment === assignments) membershipLost = membershipLostBy(refused) ?? membershipLost;
    // Not committed: kept for the next commit, unless files written meanwhile moved a partition further, or
    // the partition is no longer this member's.
    for (const [partition, offset] of next) if (!written.next.has(partition) && (mine?.has(partition) ?? true)) written.next.set(partition, offset);
    written.names = [...names, ...written.names];
  };
  const write = async (batch: Batch, options: { commit: boolean } = { commit: true }) => {
    const name = await writeBatchFile(dir, topic, batch, crash);
    counts.files++;
    counts.rows += batch.rows.length;
    log.debug(`wrote ${dir}/${name} (${batch.rows.length} records)`);
    written.next.set(batch.partition, batch.last + 1n);
    written.names.push(name);
    if (options.commit && written.names.length >= COMMIT_EVERY_FILES) await commit();
  };
  return {
    write,
    async writeGap(range: LostRange): Promise<string> {
      const name = await writeGapFile(dir, range);
      counts.gaps++;
      return name;
    },
    commit,
    counts,
    /** How many files written have offsets not committed yet. */
    uncommitted: () => written.names.length,
    /** The partition's written offsets are not to be committed (its log was replaced). */
    forget: (partition: number) => void written.next.delete(partition),
    /**
     * A new assignment: offsets of partitions that are no longer this member's are not committed. Kafka takes a
     * commit of any partition from any member, and a late one would move the partition back behind its new
     * owner; their files are on disk, and the new owner reads those records again (the loader keeps one).
     */
    assigned(partitions: readonly number[]) {
      mine = new Set(partitions);
      assignments++;
      for (const partition of written.next.keys()) if (!mine.has(partition)) written.next.delete(partition);
      membershipLost = undefined;
    },
    /** The error of a commit the group refused for not knowing this member, once; undefined when there was none. */
    takeMembershipLost(): Error | undefined {
      const lost = membershipLost;
      membershipLost = undefined;
      return lost;
    },
    setHooks: (h: WriterHooks) => void (hooks = h),
  };
}

type BatchWriter = ReturnType<typeof createBatchWriter>;

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

interface GuardOptions {
  readonly consumer: Consumer;
  readonly admin: Admin;
  readonly topic: string;
  readonly groupId: string;
  readonly dir: string;
  readonly allowGaps: boolean;
  readonly batcher: Batcher;
  readonly writer: BatchWriter;
  readonly log: Logger;
  readonly shutdown: Shutdown;
  readonly stopWith: (error: Error) => void;
}

/** The group's committed offsets and every partition's log start and end, from the broker. */
async function topicState(admin: Admin, groupId: string, topic: string) {
  const [committed, logs] = await Promise.all([admin.fetchOffsets({ groupId, topics: [topic] }), admin.fetchTopicOffsets(topic)]);
  const byPartition = new Map((committed[0]?.partitions ?? []).map((p) => [p.partition, parseCommitted(p.offset)]));
  return {
    committed: (partition: number): Committed => byPartition.get(partition) ?? "none",
    logs: new Map(logs.map((p) => [p.partition, { low: BigInt(p.low), high: BigInt(p.high) }])),
  };
}

type TopicState = Awaited<ReturnType<typeof topicState>>;

/**
 * The partitions of __consumer_offsets that lack an in-sync replica, or a leader. While there are any, the group
 * coordinator can answer from an old state: Kafka 4 serves committed offsets up to the partition's high
 * watermark, which does not move while fewer than min.insync.replicas replicas are in sync.
 */
async function offsetsLogBehind(admin: Admin): Promise<string> {
  try {
    const { topics } = await admin.fetchTopicMetadata({ topics: ["__consumer_offsets"] });
    const short = (topics[0]?.partitions ?? []).filter((p) => p.leader < 0 || p.isr.length < p.replicas.length);
    return short.length === 0 ? "" : `${short.length} partitions of __consumer_offsets lack in-sync replicas`;
  } catch (error) {
    return `__consumer_offsets cannot be described (${(error as Error).message})`;
  }
}

/**
 * `read`, and read again while it says that a committed offset this process knew of `partitions` is gone: three
 * times (1, 2, 3 s apart), then for as long as __consumer_offsets lacks in-sync replicas, since its answer can be
 * old until then (a coordinator that has just taken over from a killed broker, two of three brokers down).
 * Only an answer that stays "nothing committed" on a healthy offsets log counts as a deleted topic's.
 */
/** The group's committed offsets and the topic's logs, waiting through a Kafka that is away (saying what for). */
function readTopicState(o: GuardOptions, what: string): Promise<TopicState> {
  return whileKafkaUnavailable(what, () => topicState(o.admin, o.groupId, o.topic), o.log, o.shutdown.signal);
}

async function settledState(o: GuardOptions, account: OffsetAccount, partitions: readonly number[], read: () => Promise<TopicState>): Promise<TopicState> {
  let state = await read();
  for (let asked = 1; !o.shutdown.requested; asked++) {
    const vanished = partitions.filter((p) => state.committed(p) === "none" && account.knowsCommitted(p));
    if (vanished.length === 0) break;
    const behind = await offsetsLogBehind(o.admin);
    if (asked > 3 && behind === "") break;
    const delay = Math.min(asked, 5);
    if (asked <= 3 || asked % 12 === 0) {
      o.log.warn(
        `group ${o.groupId} has no committed offset for ${o.topic} partitions [${vanished.join(", ")}], which had one` +
          `${behind ? ` (${behind}: the answer may be old)` : ""}; their records are not read until it is settled; asking again in ${delay}s`,
      );
    }
    await sleep(1000 * delay, o.shutdown.signal);
    state = await read();
  }
  return state;
}

/** What the offset checks share: the options, the account, and recording a lost range. */
interface Gaps {
  readonly o: GuardOptions;
  readonly account: OffsetAccount;
  /** Writes the gap file for `range`; returns the error to stop with, or undefined with --allow-gaps. */
  record(range: LostRange): Promise<OffsetGapError | undefined>;
}

/**
 * Writes what the partition has buffered (read before the gap), then the gap file. Returns the error to stop
 * with, or undefined with --allow-gaps. Offsets written from a log that was replaced are never committed.
 */
async function recordGap(o: GuardOptions, range: LostRange): Promise<OffsetGapError | undefined> {
  const buffered = o.batcher.take(range.partition);
  if (buffered) await o.writer.write(buffered, { commit: false });
  if (range.kind === "recreated") o.writer.forget(range.partition);
  const name = await o.writer.writeGap(range);
  if (o.allowGaps) {
    o.log.warn(`${range.reason}; recorded in ${o.dir}/${name}, going on (--allow-gaps)`);
    return undefined;
  }
  return new OffsetGapError(
    `${range.reason}. Recorded in ${o.dir}/${name} for the loader; no offset past it is committed. ` +
      "To go on without these records, run again with --allow-gaps",
  );
}

/**
 * Partitions assigned (and paused until this is done): each committed offset against where its log starts, and
 * against the one this process knew. False when the run is to stop.
 */
async function checkAssignment({ o, account, record }: Gaps, partitions: readonly number[]): Promise<boolean> {
  if (partitions.length === 0) return true;
  const { consumer, topic } = o;
  const state = await settledState(o, account, partitions, () => readTopicState(o, "reading committed offsets"));
  for (const partition of partitions) {
    const groupSays = state.committed(partition);
    const range = account.assign(partition, groupSays, state.logs.get(partition) ?? { low: 0n, high: 0n });
    if (range === undefined) continue;
    const stop = await record(range);
    if (stop) {
      // kafkajs had reset the partition (and committed its marker): put the group back where it was, so the
      // next run stops at this gap too.
      if (groupSays === "reset" && range.kind === "deleted") await consumer.commitOffsets([{ topic, partition, offset: range.first.toString() }]);
      o.stopWith(stop);
      return false;
    }
    // Read on from the log's start (a deleted range), or let kafkajs start the new log from its beginning.
    if (range.kind === "deleted") consumer.seek({ topic, partition, offset: String(range.last! + 1n) });
  }
  return true;
}

/**
 * A record arrived at another offset than expected; false when intake must stop. Ahead at the start of a
 * fetch: deleted records if the log now starts past the expected offset (else control records or compacted
 * ones: nothing lost). Inside a fetch the broker sent everything in between: nothing lost. Behind: read again
 * from an older position when the group has committed at least the expected offset and the log still reaches
 * it (kafkajs was given a stale committed offset by a coordinator that had just taken over: the repeats are
 * written again and the loader skips them); otherwise the log was replaced (kafkajs found the position out of
 * range and started the new log from its beginning).
 */
async function checkArrival({ o, account, record }: Gaps, partition: number, offset: bigint, arrival: Arrival, firstOfFetch: boolean): Promise<boolean> {
  const { topic, groupId } = o;
  if (arrival.kind === "expected" || arrival.kind === "again" || (arrival.kind === "ahead" && !firstOfFetch)) return true;
  if (arrival.kind === "behind") {
    const state = await settledState(o, account, [partition], () => readTopicState(o, "reading committed offsets"));
    const committed = state.committed(partition);
    const log = state.logs.get(partition);
    if (typeof committed === "bigint" && committed >= arrival.expected && log !== undefined && log.high >= arrival.expected) {
      o.log.info(`${topic} partition ${partition}: offset ${offset} arrived again (group ${groupId} committed ${committed}); written again, the loader skips the repeats`);
      account.took(partition, offset - 1n);
      return true;
    }
    const range = recreatedRange(topic, groupId, partition, arrival.expected, account.end(partition), `offset ${offset} arrived where ${arrival.expected} was expected`);
    account.restartAt(partition, offset);
    const stop = await record(range);
    if (stop) o.stopWith(stop);
    return stop === undefined;
  }
  const { logs } = await readTopicState(o, "reading where the log starts");
  const start = logs.get(partition)?.low ?? 0n;
  if (start <= arrival.expected) return true;
  const stop = await record(deletedRange(topic, groupId, partition, arrival.expected, start < offset ? start : offset));
  if (stop === undefined) return true;
  // kafkajs committed the earliest offset when it reset the partition: put the group back where it was, so
  // the next run stops at this gap too, until it is run with --allow-gaps.
  await o.consumer.commitOffsets([{ topic, partition, offset: arrival.expected.toString() }]);
  o.stopWith(stop);
  return false;
}

/**
 * Before a commit: a partition whose committed offset vanished from the group (Kafka deletes it with the topic)
 * is being read at the old position in a re-created topic. It is not committed; with --allow-gaps it is read
 * again from the new log's start. Returns the partitions to leave out of the commit.
 */
async function checkBeforeCommit({ o, account, record }: Gaps, partitions: number[]): Promise<number[]> {
  const state = await settledState(o, account, partitions, () => topicState(o.admin, o.groupId, o.topic));
  const vanished: number[] = [];
  for (const partition of partitions) {
    const range = account.checkCommitted(partition, state.committed(partition));
    if (range === undefined) continue;
    vanished.push(partition);
    const stop = await record(range);
    if (stop) {
      o.stopWith(stop);
      continue;
    }
    const start = state.logs.get(partition)?.low ?? 0n;
    o.consumer.seek({ topic: o.topic, partition, offset: start.toString() });
    account.restartAt(partition, start);
  }
  return vanished;
}

/**
 * Offset accounting in the consuming loop (lib/offsets.ts decides, the checks above do the I/O): at an
 * assignment, at each record that arrives elsewhere than expected, and before each commit. A lost range is
 * written as a gap file after the partition's buffered rows; then the run stops (no offset past it is
 * committed), or with --allow-gaps goes on.
 */
function createGapGuard(o: GuardOptions) {
  const account = new OffsetAccount(o.topic, o.groupId);
  const gaps: Gaps = { o, account, record: (range) => recordGap(o, range) };
  o.writer.setHooks({
    beforeCommit: (partitions) => checkBeforeCommit(gaps, partitions),
    committed: (offsets) => offsets.forEach(({ partition, offset }) => account.committedAt(partition, BigInt(offset))),
  });
  return {
    account,
    assign: (partitions: readonly number[]) => checkAssignment(gaps, partitions),
    unexpected: (partition: number, offset: bigint, arrival: Arrival, firstOfFetch: boolean) => checkArrival(gaps, partition, offset, arrival, firstOfFetch),
  };
}

/**
 * --until-idle: the topic is drained when every partition, assigned to this consumer or not (also one added
 * since the group last rebalanced), is read to its end: by this consumer's position or the group's commit.
 * Returns the partitions still behind, with how many records each.
 */
async function partitionsBehind(admin: Admin, groupId: string, topic: string, account: OffsetAccount): Promise<string[]> {
  const state = await topicState(admin, groupId, topic);
  const behind: string[] = [];
  for (const [partition, { low, high }] of state.logs) {
    const committed = state.committed(partition);
    let at = typeof committed === "bigint" && committed > low ? committed : low;
    const position = account.position(partition);
    if (position !== undefined && position > at) at = position;
    if (high > at) behind.push(`p${partition} (${high - at})`);
  }
  return behind;
}

interface RunOptions {
  readonly consumer: Consumer;
  readonly admin: Admin;
  readonly topic: string;
  readonly groupId: string;
  readonly dir: string;
  readonly batchSize: number;
  readonly quietMs: number;
  /** a partial batch is written once its first record has waited this long */
  readonly maxAgeMs: number;
  /** --until-idle: stop once nothing has arrived for this long and every partition is read to its end */
  readonly idleMs: number | undefined;
  readonly allowGaps: boolean;
  readonly crashAt: string | undefined;
  readonly log: Logger;
  readonly shutdown: Shutdown;
}

/** What the intake shares with the rest of the run. */
interface Intake {
  readonly batcher: Batcher;
  readonly account: OffsetAccount;
  readonly activity: Activity;
  readonly locked: Locked;
  readonly progress: Progress;
  /** the offset checks for a record that arrived elsewhere than expected; false when intake must stop */
  readonly unexpected: (partition: number, offset: bigint, arrival: Arrival, firstOfFetch: boolean) => Promise<boolean>;
  readonly write: (batch: Batch) => Promise<void>;
  readonly commit: () => Promise<void>;
  readonly stopWith: (error: Error) => void;
  readonly failed: () => boolean;
  /** a commit's error saying the group no longer knows this member, once */
  readonly membershipLost: () => Error | undefined;
}

/** The error kafkajs rejoins the group on, logged as what it means here. */
function rejoining(error: Error, log: Logger): Error {
  log.warn(`the group refused this member's commit (${error.message}): joining it again; the files written stay, and their offsets are committed after the join for the partitions still this member's`);
  return error;
}

/**
 * kafkajs' eachBatch: each record of a fetch goes into the batcher and a full batch is written at once; after
 * the fetch, what was written is committed.
 */
function createEachBatch(o: RunOptions, s: Intake) {
  const { log, shutdown } = o;
  const { batcher, account, activity } = s;
  return async ({ batch, resolveOffset, heartbeat, isRunning, isStale }: EachBatchPayload) =>
    s.locked(async () => {
      // Thrown to kafkajs, which joins the group again; these records come again after the join.
      const lost = s.membershipLost();
      if (lost) throw rejoining(lost, log);
      for (const [i, message] of batch.messages.entries()) {
        // Stop intake on a stop request or a failed write: these records stay uncommitted for the next run.
        if (!isRunning() || isStale() || shutdown.requested) break;
        const offset = BigInt(message.offset);
        const fingerprint = recordFingerprint(message);
        const arrival = account.arrive(batch.partition, offset, fingerprint);
        // Taken already, from a fetch that overlapped this one (a leader moved): in the batcher or a file.
        if (arrival.kind === "again") {
          activity.repeated++;
          continue;
        }
        if (arrival.kind !== "expected" && !(await s.unexpected(batch.partition, offset, arrival, i === 0).catch((e: Error) => (s.stopWith(e), false)))) break;
        account.took(batch.partition, offset, fingerprint);
        const row = messageToRow(message, batch.topic, batch.partition);
        if (row._error !== null) activity.unreadable++;
        activity.received++;
        activity.last = performance.now();
        activity.firstRecord ||= activity.last;
        activity.lastRecord = activity.last;
        const full = batcher.add(batch.partition, offset, row, activity.last);
        // resolveOffset moves kafkajs' fetch position past this record. With autoCommit off it commits
        // nothing: the commit happens in the writer, after the file is on disk.
        resolveOffset(message.offset);
        if (full) await s.write(full);
        if (activity.received % 200 === 0) await heartbeat();
      }
      // After the records: a fetch from a replaced log says where the new log ends, not the old one.
      account.sawEnd(batch.partition, BigInt(batch.highWatermark));
      if (!s.failed()) await s.commit();
      log.debug(`partition ${batch.partition}: ${batcher.buffered(batch.partition)} records buffered`);
      s.progress.update(activity.received);
      const refused = s.membershipLost();
      if (refused) throw rejoining(refused, log);
    });
}

/**
 * Joins the group and starts consuming. A broker that has not yet heard of a topic just created by another
 * member answers "unknown topic", and kafkajs' subscribe does not retry that: waited through like a broker
 * that is away.
 */
async function startConsuming(o: RunOptions, runOptions: ConsumerRunConfig): Promise<void> {
  const { consumer } = o;
  await whileKafkaUnavailable(
    `subscribing to ${o.topic}`,
    async () => {
      await consumer.connect();
      await consumer.subscribe({ topics: [o.topic], fromBeginning: true });
    },
    o.log,
    o.shutdown.signal,
  );
  await consumer.run(runOptions);
}

/** The run's one-line summary. */
function runSummary(activity: Activity, counts: BatchWriter["counts"], ms: number): string {
  return (
    `done: received=${activity.received} files=${counts.files} rows_written=${counts.rows} ` +
    `unreadable=${activity.unreadable} gaps=${counts.gaps}${activity.repeated > 0 ? ` repeats_skipped=${activity.repeated}` : ""}${activity.drained ? " every_partition_read=yes" : ""} ` +
    // The rate leaves out the waits before the first record and after the last (--until-idle's quiet period):
    // n records arrive over n - 1 intervals.
    `in ${formatDuration(ms)}${rateWhile(activity.received - 1, activity.lastRecord - activity.firstRecord, "while records arrived")}`
  );
}

/**
 * The consuming loop: each fetched batch of messages goes into the batcher, full batches are written (and
 * committed) at once, partial ones at their max age, after the quiet period and at shutdown. Intake stops on a
 * stop request, a failed write or an offset gap without --allow-gaps, so nothing after an unwritten batch is
 * ever committed.
 */
function createBatchingRun(o: RunOptions) {
  const { consumer, log, shutdown } = o;
  const batcher = new Batcher(o.batchSize, o.quietMs, o.maxAgeMs);
  const writer = createBatchWriter(consumer, o.topic, o.dir, o.crashAt, log);
  const locked = createLock();
  const progress = createProgress(log, "received", undefined, 1000);
  const activity: Activity = { received: 0, unreadable: 0, repeated: 0, joined: false, last: performance.now(), lastFetch: 0, drained: false, firstRecord: 0, lastRecord: 0 };
  let failure: Error | undefined;
  const failed = () => failure !== undefined;
  const stopWith = (error: Error) => {
    failure ??= error;
    shutdown.request(error.message);
  };
  const guard = createGapGuard({ ...o, batcher, writer, stopWith });
  const { account } = guard;
  const write = (batch: Batch) => writer.write(batch).catch((error: Error) => stopWith(error));
  const commit = () => writer.commit().catch((error: Error) => stopWith(error));
  const eachBatch = createEachBatch(o, { batcher, account, activity, locked, progress, unexpected: guard.unexpected, write, commit, stopWith, failed, membershipLost: writer.takeMembershipLost });
  const runOptions: ConsumerRunConfig = { autoCommit: false, eachBatchAutoResolve: false, eachBatch };

  watchGroup(o, { batcher, locked, activity, account, assign: guard.assign, assigned: writer.assigned, stopWith, failed });
  const restart = async () => {
    await consumer.connect();
    await consumer.run(runOptions);
  };
  superviseConsumer(consumer, restart, batcher, shutdown, log, stopWith);
  scheduleQuietWork(o, { batcher, locked, activity, account, write, commit, failed, uncommitted: writer.uncommitted });

  return {
    start: () => startConsuming(o, runOptions),
    get failure() {
      return failure;
    },
    fail: (error: Error) => void (failure ??= error),
    summary: (ms: number) => runSummary(activity, writer.counts, ms),
    stopProgress: () => progress.done(),
  };
}

type Activity = { received: number; unreadable: number; repeated: number; joined: boolean; last: number; lastFetch: number; drained: boolean; firstRecord: number; lastRecord: number };
type Locked = ReturnType<typeof createLock>;

/**
 * The group's events: an assignment pauses the partitions until their committed offsets are checked against
 * their logs (before kafkajs fetches, and resets an offset the log no longer has); fetches mark the consumer
 * live; a fetch that held only control records moves the position past them.
 */
function watchGroup(
  o: RunOptions,
  s: {
    batcher: Batcher;
    locked: Locked;
    activity: Activity;
    account: OffsetAccount;
    assign: (p: readonly number[]) => Promise<boolean>;
    /** the writer's: offsets of partitions not in the new assignment are not committed */
    assigned: (p: readonly number[]) => void;
    stopWith: (e: Error) => void;
    failed: () => boolean;
  },
) {
  const { consumer, topic, log } = o;
  consumer.on(consumer.events.GROUP_JOIN, ({ payload }) => {
    // A new assignment restarts every partition at its committed offset: buffered, uncommitted records
    // arrive again, so they are dropped here.
    s.batcher.clear();
    s.activity.joined = true;
    s.activity.last = performance.now();
    const partitions = payload.memberAssignment[topic] ?? [];
    log.info(`joined group ${o.groupId}: ${topic} partitions [${partitions.join(", ")}]`);
    s.assigned(partitions);
    // Synchronous, in kafkajs' own emit: no fetch of these partitions happens before the check below.
    if (partitions.length > 0) consumer.pause([{ topic, partitions }]);
    // After a stop request (a rebalance as the other members leave) the partitions stay paused: nothing of
    // them is read or committed, so their check is skipped, and one cut short by the stop is no failure.
    void s
      .locked(async () => !o.shutdown.requested && (await s.assign(partitions)))
      .then((goOn) => {
        if (goOn && !s.failed() && !o.shutdown.requested) consumer.resume([{ topic, partitions }]);
      })
      .catch((error: Error) => {
        if (o.shutdown.requested) log.info(`the check of partitions [${partitions.join(", ")}] was cut short by the stop (${error.message}); they were not read`);
        else s.stopWith(error);
      });
  });
  // "Idle" means fetches succeed and bring nothing, not that the broker is unreachable.
  consumer.on(consumer.events.FETCH, () => (s.activity.lastFetch = performance.now()));
  consumer.on(consumer.events.END_BATCH_PROCESS, ({ payload }) => {
    if (payload.topic !== topic || payload.batchSize > 0) return;
    const next = BigInt(payload.lastOffset) + 1n;
    const position = s.account.position(payload.partition);
    if (position !== undefined && next > position) s.account.took(payload.partition, next - 1n);
  });
}

/**
 * Every 200 ms: partial batches whose quiet period or max age is over are written and committed; with
 * --until-idle, once nothing has arrived for that long, the topic is checked (at most once a second) and the run
 * stops when every partition is read to its end.
 */
function scheduleQuietWork(
  o: RunOptions,
  s: {
    batcher: Batcher;
    locked: Locked;
    activity: Activity;
    account: OffsetAccount;
    write: (b: Batch) => Promise<void>;
    commit: () => Promise<void>;
    failed: () => boolean;
    uncommitted: () => number;
  },
) {
  const { shutdown, log } = o;
  let checking = false;
  let lastCheck = 0;
  let reported = "";
  const checkDrained = async () => {
    checking = true;
    lastCheck = performance.now();
    try {
      const behind = await partitionsBehind(o.admin, o.groupId, o.topic, s.account);
      if (behind.length === 0) {
        s.activity.drained = true;
        shutdown.request(`nothing new for ${o.idleMs! / 1000}s and every partition read to its end (--until-idle)`);
      } else if (behind.join() !== reported) {
        reported = behind.join();
        log.info(`quiet for ${o.idleMs! / 1000}s, but records are not read yet in ${behind.join(", ")}; going on`);
      }
    } catch (error) {
      log.debug(`could not check the topic's ends (${(error as Error).message}); checking again`);
    } finally {
      checking = false;
    }
  };
  const timer = setInterval(() => {
    const now = performance.now();
    if (!shutdown.requested) {
      void s.locked(async () => {
        for (const batch of s.batcher.due(now)) if (!s.failed()) await s.write(batch);
        if (!s.failed()) await s.commit();
      });
    }
    const fetching = now - s.activity.lastFetch < 3000;
    // Partial batches need not wait for their quiet period: the shutdown below writes them.
    if (o.idleMs !== undefined && s.activity.joined && fetching && now - s.activity.last >= o.idleMs && !checking && now - lastCheck >= 1000) {
      void checkDrained();
    }
  }, 200);
  shutdown.onStop("stop the quiet-period timer", () => clearInterval(timer));
  shutdown.onStop("write partial batches and commit", () =>
    s.locked(async () => {
      for (const batch of s.batcher.drain()) if (!s.failed()) await s.write(batch);
      if (!s.failed()) await s.commit();
      // A commit refused for a moment (kafkajs restarting its consumer, a coordinator that moved) is tried again,
      // 1 s apart, within the stop's deadline; what is still not committed then is read again by the next run.
      for (let attempt = 1; attempt <= 4 && s.uncommitted() > 0 && !s.failed(); attempt++) {
        await sleep(1000);
        await s.commit();
      }
    }),
  );
  shutdown.onStop("disconnect consumer", () => o.consumer.disconnect());
  shutdown.onStop("disconnect the admin client", () => o.admin.disconnect());
}

async function main(): Promise<void> {
  const flags = parseCli(command);
  if (!flags) return;
  const config = readConfig();
  const log = createLogger("consumer", config.logLevel, config.logProgress);
  const topic = flags.topic === undefined ? config.kafkaTopic : parseTopic(flags.topic, "--topic");
  const groupId = flags.group === undefined ? config.kafkaGroupId : parseGroupId(flags.group, "--group");
  const batchSize = flags["batch-size"] ? parsePositiveInt(flags["batch-size"], "--batch-size", 1_000_000) : config.batchSize;
  const dir = flags.dir ?? config.batchesDir;
  const quietMs = 1000 * (flags.quiet ? parsePositiveNumber(flags.quiet, "--quiet") : config.batchQuietSeconds);
  const maxAgeMs = 1000 * (flags["max-age"] ? parsePositiveNumber(flags["max-age"], "--max-age") : config.batchMaxSeconds);
  const idleMs = flags["until-idle"] ? 1000 * parsePositiveNumber(flags["until-idle"], "--until-idle") : undefined;
  await mkdir(dir, { recursive: true });

  const kafka = createKafka(config, log);
  const admin = await prepareTopic(kafka, config, topic, groupId, flags["from-beginning"] === true, log);
  // A consumer that died (kill -9, power cut) holds its partitions until its session times out; 10 s instead
  // of kafkajs' 30 s lets the restarted one take over sooner. Writing a batch takes milliseconds.
  // maxWaitTimeInMs is also how long kafkajs sleeps while every partition is paused (each assignment, until its
  // offsets are checked), and resume() does not wake it: 250 ms, not 1 s, lost per assignment.
  const consumer = kafka.consumer({ groupId, maxWaitTimeInMs: 250, allowAutoTopicCreation: false, sessionTimeout: 10_000, heartbeatInterval: 3_000 });
  const shutdown = createShutdown(log);
  const allowGaps = flags["allow-gaps"] === true;
  const run = createBatchingRun({ consumer, admin, topic, groupId, dir, batchSize, quietMs, maxAgeMs, idleMs, allowGaps, crashAt: config.crashAt, log, shutdown });

  const started = performance.now();
  try {
    await run.start();
    log.info(`reading ${topic} as group ${groupId} into ${dir}/ (${batchSize} per file, or fewer after ${maxAgeMs / 1000}s)`);
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
