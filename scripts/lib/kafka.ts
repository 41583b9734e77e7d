// The kafkajs client as every script builds it: brokers, client id, TLS and SASL from config, kafkajs' own
// logs routed through our logger at WARN (with the topic and partition a line is about), producers and
// consumers that see partitions added to a topic within seconds, and a helper that creates the topic when it
// is missing. What a failure means (a broker away, or a refusal only a setting fixes) is lib/kafka_errors.ts.

import type { Admin, ConsumerConfig, Kafka, KafkaConfig, LogEntry, logCreator, PartitionerArgs, ProducerConfig, SASLOptions } from "kafkajs";
import type { Config } from "./config.ts";
import { loadKafkajs } from "./kafkajs_fixes.ts";
import { createLogger, type Logger } from "./log.ts";
import { pollUntil } from "./retry.ts";

const { Kafka: KafkaClient, logLevel, CompressionTypes } = loadKafkajs();
/** For scripts, which must not load kafkajs themselves (it would load before the fixes are in place). */
export { CompressionTypes };

/** Kafka's murmur2 (the Java client's), on 32-bit integers: the same hash as kafkajs' Long-based one, many times faster. */
export function murmur2(data: Uint8Array): number {
  const m = 0x5bd1e995;
  const length = data.length;
  let h = 0x9747b28c ^ length;
  const end = length & ~3;
  for (let i = 0; i < end; i += 4) {
    let k = data[i]! | (data[i + 1]! << 8) | (data[i + 2]! << 16) | (data[i + 3]! << 24);
    k = Math.imul(k, m);
    k ^= k >>> 24;
    k = Math.imul(k, m);
    h = Math.imul(h, m) ^ k;
  }
  const rest = length & 3;
  if (rest > 0) {
    if (rest === 3) h ^= data[end + 2]! << 16;
    if (rest >= 2) h ^= data[end + 1]! << 8;
    h ^= data[end]!;
    h = Math.imul(h, m);
  }
  h ^= h >>> 13;
  h = Math.imul(h, m);
  h ^= h >>> 15;
  return h | 0;
}

/**
 * kafkajs' DefaultPartitioner for keyed messages (the Java client's: murmur2 of the key, made positive, modulo
 * the partitions), without its per-message work. Every message we send has a key.
 */
export const keyPartitioner =
  () =>
  ({ partitionMetadata, message }: PartitionerArgs): number => {
    const key = message.key;
    if (key === null || key === undefined) throw new Error("keyPartitioner: a message without a key");
    const bytes = typeof key === "string" ? Buffer.from(key) : key;
    return (murmur2(bytes) & 0x7fffffff) % partitionMetadata.length;
  };

let lastProblem: string | undefined;

/** The last warning or error kafkajs reported (shown or not), for a script that says what it is waiting for. */
export function lastKafkaProblem(): string | undefined {
  return lastProblem;
}

function kafkaLogs(log: Logger): logCreator {
  return () =>
    ({ level, namespace, log: entry }: LogEntry) => {
      const { message, error, topic, partition } = entry;
      // "Offset out of range, resetting to default offset" says which partition only in these fields.
      const about = topic === undefined ? "" : ` [topic ${topic}${partition === undefined ? "" : ` partition ${partition}`}]`;
      const text = `kafkajs ${namespace}: ${message}${about}${error ? ` (${error})` : ""}`;
      if (level === logLevel.ERROR || level === logLevel.WARN) lastProblem = `${message}${about}${error ? ` (${error})` : ""}`;
      // kafkajs logs every error response at ERROR, also the retriable ones it then retries ("coordinator
      // is loading" while a broker starts). A failure that survives the retries reaches us as an exception.
      if (namespace === "Connection" && message.startsWith("Response ")) log.debug(text);
      // While the broker is away, kafkajs logs every failed connection attempt and its own crash/restart;
      // the scripts say once per retry what they are waiting for (whileKafkaUnavailable, the consumer's
      // CRASH handler), so these go to debug.
      else if (/Connection error|Failed to connect to seed broker|^Crash: |^Restarting the consumer/.test(message)) log.debug(text);
      else if (level === logLevel.ERROR || level === logLevel.NOTHING) log.error(text);
      else if (level === logLevel.WARN) log.warn(text);
      else if (level === logLevel.INFO) log.info(text);
      else log.debug(text);
    };
}

export interface KafkaOptions {
  clientId?: string;
  /**
   * quick attempts, for "does Kafka answer?" probes and health reads: one per broker named (kafkajs tries the
   * next one after a failed connection, always starting with the first), so a broker of a cluster that is
   * away does not fail it; a broker that hangs fails it in seconds too
   */
  probe?: boolean;
}

/** kafkajs' `ssl` and `sasl` options from config: TLS that verifies the brokers' certificates, and the login. */
export function kafkaSecurity(config: Config): Pick<KafkaConfig, "ssl" | "sasl"> {
  const options: Pick<KafkaConfig, "ssl" | "sasl"> = {};
  const tls = config.kafkaSsl;
  if (tls) {
    // Without a CA file, node:tls trusts the public CAs it ships with.
    options.ssl = { rejectUnauthorized: true, ...(tls.ca ? { ca: [tls.ca] } : {}), ...(tls.cert && tls.key ? { cert: tls.cert, key: tls.key } : {}) };
  }
  const sasl = config.kafkaSasl;
  // kafkajs types each mechanism apart; ours is one of its three with the same username/password shape.
  if (sasl) options.sasl = { mechanism: sasl.mechanism, username: sasl.username, password: sasl.password } as SASLOptions;
  return options;
}

/**
 * How old a producer's or consumer's picture of the cluster may get before kafkajs asks again (its default is 5
 * minutes). Partitions added to a topic are seen within this: the consumer group then rebalances and reads
 * them, and the producer spreads keys over them.
 */
export const METADATA_MAX_AGE_MS = 5_000;

/** kafkajs' client, with METADATA_MAX_AGE_MS as every producer's and consumer's default. */
class PipelineKafka extends KafkaClient {
  override producer(options: ProducerConfig = {}) {
    return super.producer({ metadataMaxAge: METADATA_MAX_AGE_MS, ...options });
  }

  override consumer(options: ConsumerConfig) {
    return super.consumer({ metadataMaxAge: METADATA_MAX_AGE_MS, ...options });
  }
}

export function createKafka(config: Config, log: Logger, options: KafkaOptions = {}): Kafka {
  return new PipelineKafka({
    clientId: options.clientId ?? config.kafkaClientId,
    brokers: [...config.kafkaBrokers],
    ...kafkaSecurity(config),
    logLevel: log.enabled("debug") ? logLevel.INFO : logLevel.WARN,
    logCreator: kafkaLogs(log),
    // Fail in seconds, not minutes, when nothing listens: the message names the brokers tried.
    connectionTimeout: options.probe ? 1000 : 3000,
    ...(options.probe ? { requestTimeout: 3000 } : {}),
    retry: options.probe
      ? { retries: config.kafkaBrokers.length - 1, initialRetryTime: 100, maxRetryTime: 500 }
      : { retries: 8, initialRetryTime: 300, maxRetryTime: 5000 },
  });
}

/** Does a broker answer at config's address? One quick attempt, no logs. */
export async function kafkaAnswers(config: Config): Promise<boolean> {
  const admin = createKafka(config, createLogger("kafka", "silent"), { probe: true }).admin();
  try {
    await admin.connect();
    await admin.describeCluster();
    return true;
  } catch {
    return false;
  } finally {
    await admin.disconnect().catch(() => undefined);
  }
}

/**
 * Creates `topic` with `partitions` partitions and the cluster's default replication unless it exists, and
 * waits until the broker answering metadata knows a leader for every partition. Returns true when it was
 * created here.
 */
export async function ensureTopic(admin: Admin, topic: string, partitions: number): Promise<boolean> {
  const existing = await admin.listTopics();
  if (existing.includes(topic)) return false;
  // createTopics answers false when another client created it first: either way it exists afterwards.
  // waitForLeaders is kafkajs' default, and gives up on the first "unknown topic": waited for below instead.
  const created = await admin.createTopics({ topics: [{ topic, numPartitions: partitions, replicationFactor: -1 }], waitForLeaders: false });
  // On a cluster the other brokers learn of a new topic a moment later, and until then answer "unknown
  // topic" (kafkajs' waitForLeaders gives up on that): wait until the metadata has it, leaders included.
  await pollUntil(
    async () => {
      const metadata = await admin.fetchTopicMetadata({ topics: [topic] }).catch(() => undefined);
      const found = metadata?.topics[0]?.partitions ?? [];
      return found.length > 0 && found.every((p) => p.leader >= 0);
    },
    { timeout: 30_000, every: 100, what: `the new topic ${topic} to have a leader for every partition` },
  );
  return created;
}

/** One partition of a topic as a consumer group sees it. */
export interface PartitionLag {
  readonly partition: number;
  /** the log start offset: records below it are gone (retention, deleteRecords) */
  readonly low: number;
  /** the end offset: the offset the next record written gets */
  readonly high: number;
  /** the group's committed offset (the next one it reads), null when it has committed none */
  readonly committed: number | null;
  /** records the group has not committed: high minus committed (minus low when it has committed none) */
  readonly lag: number;
}

/**
 * Each partition's offsets and `groupId`'s lag on it, by partition. The committed offsets are asked for before
 * the end offsets, so a commit made between the two answers cannot make a lag negative (only a committed offset
 * past the end of a topic deleted and re-created can).
 */
export async function partitionLags(admin: Admin, groupId: string, topic: string): Promise<PartitionLag[]> {
  const committed = await admin.fetchOffsets({ groupId, topics: [topic] });
  const ends = await admin.fetchTopicOffsets(topic);
  const done = new Map(committed[0]?.partitions.map((p) => [p.partition, Number(p.offset)]) ?? []);
  return ends
    .map(({ partition, high, low }) => {
      const at = done.get(partition) ?? -1;
      return { partition, low: Number(low), high: Number(high), committed: at < 0 ? null : at, lag: Number(high) - (at < 0 ? Number(low) : at) };
    })
    .sort((a, b) => a.partition - b.partition);
}

/** Message lag of `groupId` on `topic`: log end offset minus committed offset, summed over partitions. */
export async function consumerLag(admin: Admin, groupId: string, topic: string): Promise<number> {
  return (await partitionLags(admin, groupId, topic)).reduce((n, p) => n + p.lag, 0);
}

/** "127.0.0.1:9092" style list for messages. */
export function describeBrokers(config: Config): string {
  return config.kafkaBrokers.join(",");
}
