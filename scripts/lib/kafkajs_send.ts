// kafkajs 2.2.4's sendMessages (producer/sendMessages.js), replaced so that a send resolves only once every
// partition it wrote to has acknowledged its messages. Installed by loadKafkajs (lib/kafkajs_fixes.ts).
//
// The loss it fixes (kafkajs issue #1303): kafkajs remembers which *broker* answered a send, not which
// partitions. When a leader moves mid-send (a broker crashes, or stops in a rolling restart) and one of the
// broker's partitions moves to a broker that has already answered, the retry skips that broker, and the
// moved partition's messages are never sent again while the send resolves as a success. The next send then
// reuses the skipped sequence numbers: the broker drops those messages as duplicates of a batch it had, or
// refuses them as out of order. Here:
// - which messages go to which partition is decided once, at the first attempt: a retry sends exactly the
//   same batch to a partition, with the same sequence numbers, so the broker can tell a resend from new data;
// - each partition is done when its own answer says so; a retry sends the partitions not done yet to their
//   leaders of the moment, whichever broker answered before;
// - every request of an attempt is awaited before the next attempt starts, so two requests never carry the
//   same partition at once;
// - if the broker no longer accepts this producer's sequence numbers (OUT_OF_ORDER_SEQUENCE_NUMBER,
//   UNKNOWN_PRODUCER_ID, INVALID_PRODUCER_EPOCH), the producer takes a new producer id and sends the
//   partitions not acknowledged again. A message whose first send was written without an answer may then be
//   in the topic twice; the loader keeps one (rows are keyed by their identity).
// The result lists every partition with `messageCount`, the messages it acknowledged, so the caller can
// count what the cluster holds instead of what it handed over.

import { createRequire } from "node:module";
import type * as KafkaJS from "kafkajs";

const require = createRequire(import.meta.url);

type AnyError = Error & { type?: string; retriable?: boolean; host?: string; port?: number; code?: number };

interface KafkaJSErrors {
  KafkaJSError: new (message: string | Error, options?: { retriable?: boolean; cause?: unknown }) => AnyError;
  KafkaJSMetadataNotLoaded: new (message: string) => AnyError;
}
interface ProtocolErrors {
  staleMetadata(error: AnyError): boolean;
  createErrorFromCode(code: number): AnyError;
}

const { KafkaJSError, KafkaJSMetadataNotLoaded } = require("kafkajs/src/errors.js") as KafkaJSErrors;
const { staleMetadata, createErrorFromCode } = require("kafkajs/src/protocol/error.js") as ProtocolErrors;

/** The produce request versions kafkajs 2.2.4 speaks (3 to 7) answer through these modules. */
export const PRODUCE_RESPONSES = [3, 4, 5, 6, 7].map((v) => `kafkajs/src/protocol/requests/produce/v${v}/response.js`);

/**
 * kafkajs' produce responses throw the first partition's error and drop the other partitions' answers,
 * which may say "written". Patched to return every partition's answer; sendMessages below judges each.
 */
export function keepEveryPartitionsAnswer(): void {
  for (const path of PRODUCE_RESPONSES) (require(path) as { parse: (data: unknown) => Promise<unknown> }).parse = async (data) => data;
}

/** Error codes meaning the broker will not take this producer id's next sequence number. */
const SEQUENCE_LOST = new Set(["OUT_OF_ORDER_SEQUENCE_NUMBER", "UNKNOWN_PRODUCER_ID", "INVALID_PRODUCER_EPOCH"]);
/** The broker already has this batch (older brokers say so instead of answering with its offset). */
const DUPLICATE_SEQUENCE_NUMBER = 46;

/** One partition's share of a send: fixed at the first attempt, resent as it is until acknowledged. */
interface Slot {
  readonly topic: string;
  readonly partition: number;
  readonly messages: KafkaJS.Message[];
  ack?: Acknowledgement;
}

export type Acknowledgement = KafkaJS.RecordMetadata & { messageCount: number };

interface PartitionAnswer {
  topicName: string;
  partition: number;
  errorCode: number;
  baseOffset: string;
  logAppendTime: string;
  logStartOffset?: string;
}

// The parts of kafkajs' internals sendMessages uses (producer/index.js passes them in).
interface Broker {
  nodeId: number;
  produce(request: Record<string, unknown>): Promise<{ topics: { topicName: string; partitions: Omit<PartitionAnswer, "topicName">[] }[] }>;
}
interface Cluster {
  refreshMetadata(): Promise<void>;
  refreshMetadataIfNecessary(): Promise<void>;
  addMultipleTargetTopics(topics: string[]): Promise<void>;
  findTopicPartitionMetadata(topic: string): KafkaJS.PartitionMetadata[];
  findBroker(args: { nodeId: string | number }): Promise<Broker>;
  removeBroker(args: { host?: string; port?: number }): void;
  isConnected(): boolean;
  connect(): Promise<void>;
}
interface EosManager {
  getSequence(topic: string, partition: number): number;
  updateSequence(topic: string, partition: number, increment: number): void;
  acquireBrokerLock(broker: Broker): Promise<void>;
  releaseBrokerLock(broker: Broker): Promise<void>;
  isTransactional(): boolean;
  isInitialized(): boolean;
  getTransactionalId(): string;
  getProducerId(): number;
  getProducerEpoch(): number;
  addPartitionsToTransaction(topicData: unknown): Promise<void>;
  initProducerId(): Promise<void>;
}
type Retrier = <T>(fn: (bail: (error: Error) => void, retryCount: number, retryTime: number) => Promise<T>) => Promise<T>;
type Partitioner = (args: { topic: string; partitionMetadata: KafkaJS.PartitionMetadata[]; message: KafkaJS.Message }) => number;
type GroupMessages = (args: {
  topic: string;
  partitionMetadata: KafkaJS.PartitionMetadata[];
  messages: KafkaJS.Message[];
  partitioner: Partitioner;
}) => Record<number, KafkaJS.Message[]>;

interface SendArgs {
  acks: number;
  timeout?: number;
  compression?: number;
  topicMessages: KafkaJS.TopicMessages[];
}

interface Context {
  readonly logger: KafkaJS.Logger;
  readonly cluster: Cluster;
  readonly eosManager: EosManager;
}

/** kafkajs' module shape: `require("./sendMessages")({ logger, cluster, partitioner, eosManager, retrier })`. */
export function createSendMessages(groupMessagesPerPartition: GroupMessages) {
  return ({ logger, cluster, partitioner, eosManager, retrier }: Context & { partitioner: Partitioner; retrier: Retrier }) =>
    async ({ acks, timeout, compression, topicMessages }: SendArgs): Promise<Acknowledgement[]> => {
      const context = { logger, cluster, eosManager };
      let slots: Slot[] | undefined;
      return retrier(async (bail, retryCount, retryTime) => {
        await cluster.addMultipleTargetTopics(topicMessages.map(({ topic }) => topic));
        try {
          await cluster.refreshMetadataIfNecessary();
          slots ??= assignPartitions(cluster, topicMessages, partitioner, groupMessagesPerPartition);
          await sendOpenSlots(context, slots, { acks, timeout, compression });
          return slots.map((slot) => slot.ack!);
        } catch (error) {
          return recover(context, error as AnyError, slots, bail, { retryCount, retryTime });
        }
      });
    };
}

/** Which messages go to which partition, decided once per send. */
function assignPartitions(cluster: Cluster, topicMessages: KafkaJS.TopicMessages[], partitioner: Partitioner, group: GroupMessages): Slot[] {
  const slots: Slot[] = [];
  for (const { topic, messages } of topicMessages) {
    const partitionMetadata = cluster.findTopicPartitionMetadata(topic);
    if (partitionMetadata.length === 0) throw new KafkaJSMetadataNotLoaded(`Producing to topic ${topic} without metadata`);
    for (const [partition, inPartition] of Object.entries(group({ topic, partitionMetadata, messages, partitioner }))) {
      slots.push({ topic, partition: Number(partition), messages: inPartition });
    }
  }
  return slots;
}

/** Sends every slot not acknowledged yet to its partition's leader of the moment; waits for every request. */
async function sendOpenSlots(context: Context, slots: Slot[], request: Omit<SendArgs, "topicMessages">): Promise<void> {
  const perLeader = new Map<number, Slot[]>();
  for (const slot of slots) {
    if (slot.ack) continue;
    const leader = context.cluster.findTopicPartitionMetadata(slot.topic).find((p) => p.partitionId === slot.partition)?.leader;
    if (leader === undefined || leader === null || leader < 0) {
      throw new KafkaJSMetadataNotLoaded(`no leader known for ${slot.topic} partition ${slot.partition}`);
    }
    const group = perLeader.get(leader) ?? [];
    group.push(slot);
    perLeader.set(leader, group);
  }
  const results = await Promise.allSettled([...perLeader].map(([leader, group]) => produceTo(context, leader, group, request)));
  const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
  if (failed) throw failed.reason;
}

/** One produce request to one leader; marks each of its partitions acknowledged or not by that partition's answer. */
async function produceTo(context: Context, nodeId: number, group: Slot[], request: Omit<SendArgs, "topicMessages">): Promise<void> {
  const { cluster, eosManager } = context;
  const broker = await cluster.findBroker({ nodeId });
  await eosManager.acquireBrokerLock(broker);
  try {
    const topicData = topicDataOf(group);
    if (eosManager.isTransactional()) await eosManager.addPartitionsToTransaction(topicData);
    // Sequence numbers are taken before the request and given back for every partition that is not written.
    for (const { topic, partitions } of topicData) {
      for (const entry of partitions) {
        entry.firstSequence = eosManager.getSequence(topic, entry.partition);
        eosManager.updateSequence(topic, entry.partition, entry.messages.length);
      }
    }
    const giveBack = (slot: Slot) => eosManager.updateSequence(slot.topic, slot.partition, -slot.messages.length);
    let response: Awaited<ReturnType<Broker["produce"]>>;
    try {
      response = await broker.produce({
        transactionalId: eosManager.isTransactional() ? eosManager.getTransactionalId() : undefined,
        producerId: eosManager.getProducerId(),
        producerEpoch: eosManager.getProducerEpoch(),
        acks: request.acks,
        timeout: request.timeout,
        compression: request.compression,
        topicData,
      });
    } catch (error) {
      group.forEach(giveBack);
      throw error;
    }
    judgeAnswers(group, response, request.acks, giveBack);
  } finally {
    await eosManager.releaseBrokerLock(broker);
  }
}

function topicDataOf(group: Slot[]) {
  const topics = new Map<string, { partition: number; messages: KafkaJS.Message[]; firstSequence?: number }[]>();
  for (const slot of group) {
    const partitions = topics.get(slot.topic) ?? [];
    partitions.push({ partition: slot.partition, messages: slot.messages });
    topics.set(slot.topic, partitions);
  }
  return [...topics].map(([topic, partitions]) => ({ topic, partitions }));
}

/** Each partition by its own answer: written (or already written), or an error that sends it again. */
function judgeAnswers(group: Slot[], response: Awaited<ReturnType<Broker["produce"]>>, acks: number, giveBack: (slot: Slot) => void): void {
  const answers = new Map<string, PartitionAnswer>();
  for (const { topicName, partitions } of acks === 0 ? [] : response.topics) {
    for (const p of partitions) answers.set(`${topicName}\u0000${p.partition}`, { topicName, ...p });
  }
  let first: AnyError | undefined;
  for (const slot of group) {
    const answer = answers.get(`${slot.topic}\u0000${slot.partition}`);
    if (acks === 0 || (answer && (answer.errorCode === 0 || answer.errorCode === DUPLICATE_SEQUENCE_NUMBER))) {
      slot.ack = { topicName: slot.topic, partition: slot.partition, ...answer, errorCode: 0, messageCount: slot.messages.length };
      continue;
    }
    giveBack(slot);
    const error = answer ? createErrorFromCode(answer.errorCode) : new KafkaJSError("the broker's answer left this partition out");
    error.message = `${error.message} (topic ${slot.topic} partition ${slot.partition})`;
    first ??= error;
  }
  if (first) throw first;
}

/** After a failed attempt: what kafkajs did (reconnect, refresh metadata, retry or give up), plus a new producer id when the old one is lost. */
async function recover(
  { logger, cluster, eosManager }: Context,
  error: AnyError,
  slots: Slot[] | undefined,
  bail: (error: Error) => void,
  retry: { retryCount: number; retryTime: number },
): Promise<never> {
  if (error.name === "KafkaJSConnectionClosedError") cluster.removeBroker({ host: error.host, port: error.port });
  if (!cluster.isConnected()) {
    logger.debug(`Cluster has disconnected, reconnecting: ${error.message}`, retry);
    await cluster.connect();
    await cluster.refreshMetadata();
    throw error;
  }
  if (error.type && SEQUENCE_LOST.has(error.type) && eosManager.isInitialized() && !eosManager.isTransactional()) {
    const open = (slots ?? []).filter((s) => !s.ack).reduce((n, s) => n + s.messages.length, 0);
    logger.warn(
      `${error.message}: the brokers no longer accept this producer's sequence numbers; taking a new producer id ` +
        `and sending the ${open} messages not acknowledged again (one written without an answer may then be in the topic twice)`,
      retry,
    );
    await eosManager.initProducerId();
    throw new KafkaJSError(error, { retriable: true, cause: error });
  }
  const retriable =
    staleMetadata(error) ||
    ["KafkaJSMetadataNotLoaded", "KafkaJSConnectionError", "KafkaJSConnectionClosedError", "KafkaJSRequestTimeoutError", "KafkaJSBrokerNotFound"].includes(error.name) ||
    (error.name === "KafkaJSProtocolError" && error.retriable === true);
  if (retriable) {
    // A leader may have moved: ask where the partitions are now before the next attempt.
    logger.error(`Failed to send messages: ${error.message}`, retry);
    await cluster.refreshMetadata();
    throw error;
  }
  logger.error(error.message, retry);
  if (error.retriable) throw error;
  bail(error);
  throw error;
}
