// The places where kafkajs 2.2.4 needs help, kept in one place so they are easy to drop when a release fixes
// them. lib/kafka.ts is the only module that loads kafkajs, through loadKafkajs() below.
//
// 0. Its sendMessages can resolve a send while a partition whose leader moved was never written (kafkajs
//    issue #1303): replaced by lib/kafkajs_send.ts, which acknowledges partition by partition.
// 1. groupMessagesPerPartition copies the partition's whole array for every message (`[...current, message]`):
//    quadratic in the batch, the producer's largest cost at 2,000 messages per send. The replacement groups the
//    same messages into the same partitions in one pass, in the same order.
// 2. kafkajs schedules timers with negative delays, which Bun runs after 1 ms but warns about: clamped to 0.
// 3. The protocol Encoder makes an array and a Buffer for every varint (several per record) and zero-fills
//    each buffer it grows into. Patched to write varints in place and to grow without zero-filling (only the
//    written bytes are ever read): the same bytes, tested against kafkajs' own Encoder.
// 4. CRC-32C of each record batch is computed a byte at a time; ours takes eight bytes at a time (same values).
// 5. The record encoder makes a zero-filled 512-byte Encoder per record and per header, and the batch encoder
//    copies each into the batch: replaced by lib/kafkajs_records.ts, which writes each record once, straight into
//    a batch buffer of its exact size (the same bytes).
// 6. The record decoder sums each record's offset and timestamp as 64-bit integers parsed from text, and copies
//    the headers object for every header: replaced by lib/kafkajs_records.ts, with numbers while they are exact.
// 7. The consumer's offset manager keeps the group coordinator it was given at the join. When that broker dies or
//    stops being the coordinator (a crash, a rolling restart), commits keep going to it ("This is not the correct
//    coordinator", connection refused) until the consumer happens to join again, and a stop's last commit fails.
//    Patched to ask the cluster which broker coordinates the group after such an answer or a lost connection, as
//    Kafka's Java client does; the membership stays (the new coordinator knows the group's members).
// 8. A produce request copies every record batch five times on its way to the socket (partition, topic, request,
//    header, size, each an Encoder of its own): replaced by lib/kafkajs_records.ts, with one copy (the same bytes).
import { createRequire } from "node:module";
import type * as KafkaJS from "kafkajs";
import { createProduceRequest, createRecordBatch, createRecordDecoder, createRecordEncoder, createRequestFraming, type EncoderClass as RecordEncoderClass } from "./kafkajs_records.ts";
import { createSendMessages, keepEveryPartitionsAnswer } from "./kafkajs_send.ts";

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

/** kafkajs' protocol Encoder module, patched in place by loadKafkajs (every kafkajs module shares it). */
export const ENCODER = "kafkajs/src/protocol/encoder.js";

interface KafkaEncoder {
  buf: Buffer;
  offset: number;
  ensureAvailable(length: number): void;
  writeBufferInternal(buffer: Buffer): void;
  writeUVarInt(value: number): KafkaEncoder;
  writeVarInt(value: number): KafkaEncoder;
  writeVarLong(value: unknown): KafkaEncoder;
}

type EncoderClass = { prototype: KafkaEncoder; nextPowerOfTwo(n: number): number; encodeZigZag(n: number): number };

/** Marks an Encoder class as patched, so a test can see that kafkajs' own is. */
export const PATCHED = Symbol("patched by kafkajs_fixes");

function patchEncoder(Encoder: EncoderClass & { [PATCHED]?: true }): void {
  if (Encoder[PATCHED]) return;
  Encoder[PATCHED] = true;
  const proto = Encoder.prototype;
  const writeVarLong = proto.writeVarLong;
  proto.ensureAvailable = function (this: KafkaEncoder, length: number) {
    if (this.offset + length > this.buf.length) {
      const grown = Buffer.allocUnsafe(Encoder.nextPowerOfTwo(this.offset + length));
      grown.set(this.buf.subarray(0, this.offset));
      this.buf = grown;
    }
  };
  proto.writeBufferInternal = function (this: KafkaEncoder, buffer: Buffer) {
    this.ensureAvailable(buffer.length);
    this.buf.set(buffer, this.offset);
    this.offset += buffer.length;
  };
  proto.writeUVarInt = function (this: KafkaEncoder, value: number) {
    this.ensureAvailable(5);
    while ((value & 0xffffff80) !== 0) {
      this.buf[this.offset++] = (value & 0x7f) | 0x80;
      value >>>= 7;
    }
    this.buf[this.offset++] = value & 0x7f;
    return this;
  };
  // Small numbers (record timestamp deltas) zigzag the same in 32 and 64 bits; anything else goes to kafkajs.
  proto.writeVarLong = function (this: KafkaEncoder, value: unknown) {
    if (typeof value === "number" && Number.isInteger(value) && value >= -(2 ** 30) && value < 2 ** 30) {
      return this.writeUVarInt(Encoder.encodeZigZag(value));
    }
    return writeVarLong.call(this, value);
  };
}

const CRC_TABLES = (() => {
  const tables = Array.from({ length: 8 }, () => new Int32Array(256));
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    tables[0]![n] = c;
  }
  for (let n = 0; n < 256; n++) {
    let c = tables[0]![n]!;
    for (let t = 1; t < 8; t++) {
      c = tables[0]![c & 0xff]! ^ (c >>> 8);
      tables[t]![n] = c;
    }
  }
  return tables;
})();

/** CRC-32C (Castagnoli), eight bytes at a time. */
export function crc32c(buffer: Uint8Array): number {
  const [t0, t1, t2, t3, t4, t5, t6, t7] = CRC_TABLES as [Int32Array, Int32Array, Int32Array, Int32Array, Int32Array, Int32Array, Int32Array, Int32Array];
  let crc = -1;
  let i = 0;
  const end8 = buffer.length - (buffer.length % 8);
  for (; i < end8; i += 8) {
    const a = crc ^ (buffer[i]! | (buffer[i + 1]! << 8) | (buffer[i + 2]! << 16) | (buffer[i + 3]! << 24));
    crc =
      t7[a & 0xff]! ^ t6[(a >>> 8) & 0xff]! ^ t5[(a >>> 16) & 0xff]! ^ t4[a >>> 24]! ^
      t3[buffer[i + 4]!]! ^ t2[buffer[i + 5]!]! ^ t1[buffer[i + 6]!]! ^ t0[buffer[i + 7]!]!;
  }
  for (; i < buffer.length; i++) crc = t0[(crc ^ buffer[i]!) & 0xff]! ^ (crc >>> 8);
  return (crc ^ -1) >>> 0;
}

let loaded: typeof KafkaJS | undefined;

/** kafkajs' sendMessages module, replaced by lib/kafkajs_send.ts. */
export const SEND_MESSAGES = "kafkajs/src/producer/sendMessages.js";
/** Ours, as kafkajs' producer finds it in the module cache. */
export const sendMessages = createSendMessages(groupMessagesPerPartition);

/** kafkajs' record encoder module, replaced by lib/kafkajs_records.ts. */
export const RECORD_ENCODER = "kafkajs/src/protocol/recordBatch/record/v0/index.js";
/** kafkajs' record batch encoder module, whose RecordBatch is replaced by lib/kafkajs_records.ts'. */
export const RECORD_BATCH = "kafkajs/src/protocol/recordBatch/v0/index.js";

/** kafkajs' produce request v3 (which v4 to v7 reuse) and request framing, replaced by lib/kafkajs_records.ts' (fix 8). */
export const PRODUCE_REQUEST = "kafkajs/src/protocol/requests/produce/v3/request.js";
export const REQUEST_FRAMING = "kafkajs/src/protocol/request.js";

/** kafkajs' record decoder module, replaced by lib/kafkajs_records.ts (which falls back on it past 2^53). */
export const RECORD_DECODER = "kafkajs/src/protocol/recordBatch/record/v0/decoder.js";

/** Puts `exports` in the module cache as kafkajs module `specifier`, unless it is loaded already; returns its path. */
function replaceModule(specifier: string, exports: unknown): string {
  const path = require.resolve(specifier);
  if (require.cache[path] === undefined) {
    require.cache[path] = { id: path, filename: path, loaded: true, exports } as unknown as NodeJS.Module;
  }
  return path;
}

/** Records written straight into their batch, and read with numbers (lib/kafkajs_records.ts); the batch module is patched in place. */
function patchRecords(replaced: Map<string, unknown>): void {
  const Encoder = require(ENCODER) as RecordEncoderClass;
  const encodeRecord = createRecordEncoder(Encoder);
  replaced.set(replaceModule(RECORD_ENCODER, encodeRecord), encodeRecord);
  replaceKeeping(replaced, RECORD_DECODER, (original: Parameters<typeof createRecordDecoder>[0]) => createRecordDecoder(original));
  const batchModule = require(RECORD_BATCH) as { RecordBatch: Parameters<typeof createRecordBatch>[1] & { [PATCHED]?: true } };
  if (!batchModule.RecordBatch[PATCHED]) {
    batchModule.RecordBatch = Object.assign(createRecordBatch(Encoder, batchModule.RecordBatch, crc32c), { [PATCHED]: true as const });
  }
  // After the record and batch encoders: kafkajs' produce request takes both at its load, and ours falls back on it.
  replaceKeeping(replaced, PRODUCE_REQUEST, (original: Parameters<typeof createProduceRequest>[1]) =>
    createProduceRequest(Encoder, original, encodeRecord, batchModule.RecordBatch),
  );
  const framing = createRequestFraming(Encoder);
  replaced.set(replaceModule(REQUEST_FRAMING, framing), framing);
}

/** Puts `make(kafkajs' own module)` in its place in the module cache: kafkajs' own is loaded first, for ours to fall back on. */
function replaceKeeping<T>(replaced: Map<string, unknown>, specifier: string, make: (original: T) => unknown): void {
  const path = require.resolve(specifier);
  if (require.cache[path] !== undefined) return;
  const original = require(specifier) as T;
  delete require.cache[path];
  const ours = make(original);
  replaced.set(replaceModule(specifier, ours), ours);
}

/** kafkajs' consumer offset manager, patched in place (fix 7). */
export const OFFSET_MANAGER = "kafkajs/src/consumer/offsetManager/index.js";

/** Answers meaning the broker asked is not (or not yet) the group's coordinator: ask the cluster which one is. */
const COORDINATOR_MOVED = new Set(["NOT_COORDINATOR_FOR_GROUP", "GROUP_COORDINATOR_NOT_AVAILABLE"]);
const STALE = Symbol("coordinator to be found again");

interface OffsetManager {
  groupId: string;
  coordinator: { isConnected(): boolean };
  cluster: { findGroupCoordinator(args: { groupId: string }): Promise<OffsetManager["coordinator"]> };
  getCoordinator(): Promise<OffsetManager["coordinator"]>;
  commitOffsets(...args: unknown[]): Promise<unknown>;
  [STALE]?: boolean;
}

/** Commits follow the group's coordinator when it moves (fix 7). */
export function patchOffsetManager(OffsetManagerClass: { prototype: OffsetManager; [PATCHED]?: true }): void {
  if (OffsetManagerClass[PATCHED]) return;
  OffsetManagerClass[PATCHED] = true;
  const proto = OffsetManagerClass.prototype;
  const commitOffsets = proto.commitOffsets;
  proto.getCoordinator = async function (this: OffsetManager) {
    if (this[STALE] || !this.coordinator.isConnected()) {
      this.coordinator = await this.cluster.findGroupCoordinator({ groupId: this.groupId });
      this[STALE] = false;
    }
    return this.coordinator;
  };
  proto.commitOffsets = async function (this: OffsetManager, ...args: unknown[]) {
    try {
      return await commitOffsets.apply(this, args);
    } catch (error) {
      if (COORDINATOR_MOVED.has((error as { type?: string }).type ?? "")) this[STALE] = true;
      throw error;
    }
  };
}

/** kafkajs with the fixes in place. Replaced modules must be in the module cache before kafkajs loads. */
export function loadKafkajs(): typeof KafkaJS {
  if (loaded) return loaded;
  const replaced = new Map<string, unknown>([
    [replaceModule("kafkajs/src/producer/groupMessagesPerPartition.js", groupMessagesPerPartition), groupMessagesPerPartition],
    [replaceModule("kafkajs/src/protocol/recordBatch/crc32C/crc32C.js", crc32c), crc32c],
    [replaceModule(SEND_MESSAGES, sendMessages), sendMessages],
  ]);
  patchRecords(replaced);
  patchEncoder(require(ENCODER));
  patchOffsetManager(require(OFFSET_MANAGER));
  keepEveryPartitionsAnswer();
  clampNegativeTimeouts();
  loaded = require("kafkajs") as typeof KafkaJS;
  if ([...replaced].some(([path, ours]) => require(path) !== ours)) {
    throw new Error("kafkajs was loaded before lib/kafkajs_fixes.ts could patch it: import kafkajs values only through lib/kafka.ts");
  }
  return loaded;
}
