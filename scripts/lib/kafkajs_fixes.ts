// The two places where kafkajs 2.2.4 needs help on Bun 1.4.5, kept in one file so they are easy to drop when
// a release fixes them. lib/kafka.ts is the only module that loads kafkajs, through loadKafkajs() below.
//
// 1. groupMessagesPerPartition copies the partition's whole array for every message (`[...current, message]`):
//    quadratic in the batch, the producer's largest cost at 2,000 messages per send. The replacement groups the
//    same messages into the same partitions in one pass, in the same order.
// 2. kafkajs schedules timers with negative delays, which Bun runs after 1 ms but warns about: clamped to 0.

import { createRequire } from "node:module";
import type * as KafkaJS from "kafkajs";

const require = createRequire(import.meta.url);

type Partitioner = (args: { topic: string; partitionMetadata: KafkaJS.PartitionMetadata[]; message: KafkaJS.Message }) => number;

/** Counts calls of the replacement, so a test can see that kafkajs uses it. */
export const grouping = { calls: 0 };

/** kafkajs' groupMessagesPerPartition, linear: partition -> its messages in send order. */
export function groupMessagesPerPartition({
  topic,
  partitionMetadata,
  messages,
  partitioner,
}: {
  topic: string;
  partitionMetadata: KafkaJS.PartitionMetadata[];
  messages: KafkaJS.Message[];
  partitioner: Partitioner;
}): Record<number, KafkaJS.Message[]> {
  grouping.calls++;
  const result: Record<number, KafkaJS.Message[]> = {};
  if (partitionMetadata.length === 0) return result;
  for (const message of messages) {
    const partition = partitioner({ topic, partitionMetadata, message });
    (result[partition] ??= []).push(message);
  }
  return result;
}

let clamped = false;

function clampNegativeTimeouts(): void {
  if (clamped) return;
  clamped = true;
  const runtimeSetTimeout = globalThis.setTimeout;
  globalThis.setTimeout = ((handler: (...args: unknown[]) => void, delay?: number, ...args: unknown[]) =>
    runtimeSetTimeout(handler, delay !== undefined && delay < 0 ? 0 : delay, ...args)) as typeof setTimeout;
}

let loaded: typeof KafkaJS | undefined;

/** kafkajs with both fixes in place. The grouping fix must be in the module cache before kafkajs loads. */
export function loadKafkajs(): typeof KafkaJS {
  if (loaded) return loaded;
  const path = require.resolve("kafkajs/src/producer/groupMessagesPerPartition.js");
  if (require.cache[path] === undefined) {
    require.cache[path] = { id: path, filename: path, loaded: true, exports: groupMessagesPerPartition } as unknown as NodeJS.Module;
  }
  clampNegativeTimeouts();
  loaded = require("kafkajs") as typeof KafkaJS;
  if (require(path) !== groupMessagesPerPartition) {
    throw new Error("kafkajs was loaded before lib/kafkajs_fixes.ts could patch it: import kafkajs values only through lib/kafka.ts");
  }
  return loaded;
}
