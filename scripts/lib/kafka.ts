// The kafkajs client as every script builds it: brokers and client id from config, kafkajs' own logs routed
// through our logger at WARN, and a helper that creates the topic when it is missing.

import type { Admin, Kafka, LogEntry, logCreator, PartitionerArgs } from "kafkajs";
import type { Config } from "./config.ts";
import { loadKafkajs } from "./kafkajs_fixes.ts";
import type { Logger } from "./log.ts";
import { GaveUpError, pollUntil, retryWhile } from "./retry.ts";

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

function kafkaLogs(log: Logger): logCreator {
  return () =>
    ({ level, namespace, log: entry }: LogEntry) => {
      const { message, error } = entry;
      const text = `kafkajs ${namespace}: ${message}${error ? ` (${error})` : ""}`;
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
  /** a single quick attempt, for "does a broker answer?" probes: a broker that hangs fails it in seconds too */
  probe?: boolean;
}

export function createKafka(config: Config, log: Logger, options: KafkaOptions = {}): Kafka {
  return new KafkaClient({
    clientId: options.clientId ?? config.kafkaClientId,
    brokers: [...config.kafkaBrokers],
    logLevel: log.enabled("debug") ? logLevel.INFO : logLevel.WARN,
    logCreator: kafkaLogs(log),
    // Fail in seconds, not minutes, when nothing listens: the message names the brokers tried.
    connectionTimeout: options.probe ? 1000 : 3000,
    ...(options.probe ? { requestTimeout: 3000 } : {}),
    retry: options.probe ? { retries: 0 } : { retries: 8, initialRetryTime: 300, maxRetryTime: 5000 },
  });
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
  const created = await admin.createTopics({ topics: [{ topic, numPartitions: partitions, replicationFactor: -1 }] });
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

/** Message lag of `groupId` on `topic`: log end offset minus committed offset, summed over partitions. */
export async function consumerLag(admin: Admin, groupId: string, topic: string): Promise<number> {
  const [ends, committed] = await Promise.all([
    admin.fetchTopicOffsets(topic),
    admin.fetchOffsets({ groupId, topics: [topic] }),
  ]);
  const done = new Map(committed[0]?.partitions.map((p) => [p.partition, Number(p.offset)]) ?? []);
  let lag = 0;
  for (const { partition, high, low } of ends) {
    const at = done.get(partition) ?? -1;
    lag += Number(high) - (at < 0 ? Number(low) : at);
  }
  return lag;
}

/** kafkajs errors that mean "the broker is not reachable right now", as opposed to a wrong request. */
const UNAVAILABLE = new Set([
  "KafkaJSConnectionError",
  "KafkaJSConnectionClosedError",
  "KafkaJSRequestTimeoutError",
  "KafkaJSGroupCoordinatorNotFound",
  "KafkaJSBrokerNotFound",
  "KafkaJSNumberOfRetriesExceeded",
]);

export function isKafkaUnavailable(error: unknown): boolean {
  for (let e = error as { name?: string; retriable?: boolean; cause?: unknown } | undefined; e; e = e.cause as typeof e) {
    if ((e.name && UNAVAILABLE.has(e.name)) || e.retriable === true) return true;
  }
  return false;
}

/** How long a script waits for an unreachable broker before it gives up with an error. */
export const KAFKA_OUTAGE_MS = 120_000;

/**
 * Runs `attempt`; while it fails because the broker is unreachable, says so and tries again with backoff, for
 * up to KAFKA_OUTAGE_MS. Other errors, or an abort of `signal`, end it.
 */
export async function whileKafkaUnavailable<T>(what: string, attempt: () => Promise<T>, log: Logger, signal?: AbortSignal): Promise<T> {
  try {
    return await retryWhile(isKafkaUnavailable, attempt, {
      giveUpAfterMs: KAFKA_OUTAGE_MS,
      signal,
      onRetry: (error, _n, delay) => log.warn(`Kafka unavailable (${(error as Error).message}); ${what} again in ${(delay / 1000).toFixed(1)}s`),
      onRecovered: (ms) => log.info(`Kafka answers again after ${(ms / 1000).toFixed(1)}s`),
    });
  } catch (error) {
    if (error instanceof GaveUpError) {
      throw new Error(`Kafka has not answered for ${KAFKA_OUTAGE_MS / 1000}s (${(error.cause as Error).message})`);
    }
    throw error;
  }
}

/** "127.0.0.1:9092" style list for messages. */
export function describeBrokers(config: Config): string {
  return config.kafkaBrokers.join(",");
}
