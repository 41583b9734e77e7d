// kafkajs 2.2.4's record encoder (protocol/recordBatch/record/v0), record batch encoder (protocol/recordBatch/v0)
// and record decoder (protocol/recordBatch/record/v0/decoder), replaced for speed with the same bytes and the
// same decoded records; and the produce request (requests/produce/v3) and the request framing (protocol/request.js),
// with the same bytes and one copy of each batch. Installed by loadKafkajs (lib/kafkajs_fixes.ts).
//
// - Encoding: kafkajs makes an Encoder per record and one per header, each a zero-filled 512-byte buffer, copies
//   every header into its record and every record into the batch: several small allocations and copies per
//   record, most of the producer's CPU. Here a record only computes its size; the batch is one buffer of the
//   exact size into which each record is written once. A compressed batch, or records that are not ours, go
//   through kafkajs' own batch encoder, each record turned into an Encoder first.
// - Decoding: kafkajs adds each record's deltas to the batch's first offset and timestamp as 64-bit integers
//   parsed from their text, and builds the headers object anew for every header. Here the sums are plain
//   numbers while they are exact (below 2^53); a record past that is decoded by kafkajs' own decoder.

type Bytes = Buffer | string | null | undefined;

interface RecordInput {
  offsetDelta?: number;
  timestampDelta?: number;
  key?: Bytes;
  value?: Bytes;
  headers?: Record<string, Bytes | Bytes[]>;
}

/** The parts of kafkajs' Encoder used here. */
interface Encoder {
  buf: Buffer;
  offset: number;
  readonly buffer: Buffer;
  writeInt8(value: number): Encoder;
  writeInt16(value: number): Encoder;
  writeInt32(value: number): Encoder;
  writeUInt32(value: number): Encoder;
  writeInt64(value: unknown): Encoder;
  writeVarLong(value: unknown): Encoder;
  writeString(value: string | null): Encoder;
  writeEncoder(value: Encoder): Encoder;
}
export type EncoderClass = (new (initialSize?: number) => Encoder) & { prototype: Encoder };

/** kafkajs' RecordBatch arguments (recordBatch/v0). */
interface BatchArgs {
  compression?: number;
  firstOffset?: unknown;
  firstTimestamp?: unknown;
  maxTimestamp?: unknown;
  partitionLeaderEpoch?: number;
  lastOffsetDelta?: number;
  transactional?: boolean;
  producerId?: unknown;
  producerEpoch?: number;
  firstSequence?: number;
  records?: unknown[];
}
type RecordBatchFn = (args: BatchArgs) => Promise<Encoder>;

const MAGIC_BYTE = 2;
const TRANSACTIONAL_MASK = 16;
/** firstOffset, length, partitionLeaderEpoch, magic, CRC: the bytes before those the CRC covers */
const CRC_FROM = 8 + 4 + 4 + 1 + 4;
/** ... then attributes, lastOffsetDelta, two timestamps, producer id and epoch, first sequence, record count */
const HEAD_SIZE = CRC_FROM + 2 + 4 + 8 + 8 + 8 + 2 + 4 + 4;

/** Bytes of a zigzag varint of a 32-bit integer. */
function sizeOfVarInt(value: number): number {
  let zigzag = ((value << 1) ^ (value >> 31)) >>> 0;
  let bytes = 1;
  while (zigzag >= 0x80) {
    bytes++;
    zigzag >>>= 7;
  }
  return bytes;
}

/** Writes a zigzag varint of a 32-bit integer at `at`; returns the offset after it. */
function writeVarInt(buf: Buffer, at: number, value: number): number {
  let zigzag = ((value << 1) ^ (value >> 31)) >>> 0;
  while (zigzag >= 0x80) {
    buf[at++] = (zigzag & 0x7f) | 0x80;
    zigzag >>>= 7;
  }
  buf[at++] = zigzag;
  return at;
}

/** Small timestamp deltas zigzag the same in 32 and 64 bits. */
const smallLong = (value: unknown): value is number => typeof value === "number" && Number.isInteger(value) && value >= -(2 ** 30) && value < 2 ** 30;

/** A key, value or header part as kafkajs writes it: a Buffer's bytes, anything else as UTF-8 text; null is -1. */
class Field {
  readonly length: number;
  readonly size: number;
  constructor(
    readonly text: string | undefined,
    readonly bytes: Buffer | undefined,
  ) {
    this.length = bytes ? bytes.length : text === undefined ? -1 : Buffer.byteLength(text, "utf8");
    this.size = sizeOfVarInt(this.length) + Math.max(this.length, 0);
  }

  static of(value: Bytes): Field {
    if (value === null || value === undefined) return new Field(undefined, undefined);
    return Buffer.isBuffer(value) ? new Field(undefined, value) : new Field(String(value), undefined);
  }

  write(buf: Buffer, at: number): number {
    at = writeVarInt(buf, at, this.length);
    if (this.length <= 0) return at;
    if (this.bytes) buf.set(this.bytes, at);
    else buf.write(this.text!, at, this.length, "utf8");
    return at + this.length;
  }
}

/** A record whose size is known and whose bytes are written straight into its batch. */
export class SizedRecord {
  /** the record's bytes: its length as a varint, then the body */
  readonly size: number;
  private readonly body: number;

  constructor(
    private readonly offsetDelta: number,
    /** the zigzag varint of a delta outside 32 bits, from kafkajs' Encoder; undefined for a small one */
    private readonly longDelta: Buffer | undefined,
    private readonly timestampDelta: number,
    private readonly key: Field,
    private readonly value: Field,
    private readonly headers: Field[],
  ) {
    let body = 1 + (longDelta ? longDelta.length : sizeOfVarInt(timestampDelta)) + sizeOfVarInt(offsetDelta);
    body += key.size + value.size + sizeOfVarInt(headers.length / 2);
    for (const field of headers) body += field.size;
    this.body = body;
    this.size = sizeOfVarInt(body) + body;
  }

  /** Writes the record at `at`; returns the offset after it. */
  writeTo(buf: Buffer, at: number): number {
    at = writeVarInt(buf, at, this.body);
    buf[at++] = 0; // attributes: none used
    if (this.longDelta) {
      buf.set(this.longDelta, at);
      at += this.longDelta.length;
    } else at = writeVarInt(buf, at, this.timestampDelta);
    at = writeVarInt(buf, at, this.offsetDelta);
    at = this.key.write(buf, at);
    at = this.value.write(buf, at);
    at = writeVarInt(buf, at, this.headers.length / 2);
    for (const field of this.headers) at = field.write(buf, at);
    return at;
  }

  /** The record's bytes on their own. */
  get buffer(): Buffer {
    const buf = Buffer.allocUnsafe(this.size);
    this.writeTo(buf, 0);
    return buf;
  }
}

/** kafkajs' record/v0 encoder: same arguments, a record whose bytes are kafkajs' own. */
export function createRecordEncoder(EncoderType: EncoderClass) {
  return ({ offsetDelta = 0, timestampDelta = 0, key, value, headers = {} }: RecordInput): SizedRecord => {
    const fields: Field[] = [];
    for (const name of Object.keys(headers)) {
      const values = headers[name];
      for (const v of Array.isArray(values) ? values : [values]) fields.push(Field.of(name), Field.of(v));
    }
    const longDelta = smallLong(timestampDelta) ? undefined : new EncoderType().writeVarLong(timestampDelta).buffer;
    return new SizedRecord(offsetDelta, longDelta, smallLong(timestampDelta) ? timestampDelta : 0, Field.of(key), Field.of(value), fields);
  };
}

/** An Encoder holding `buf` as written. */
function encoderOf(EncoderType: EncoderClass, buf: Buffer): Encoder {
  const e = Object.create(EncoderType.prototype) as Encoder;
  e.buf = buf;
  e.offset = buf.length;
  return e;
}

/** kafkajs' recordBatch/v0 encoder: an uncompressed batch of our records in one buffer of its exact size. */
export function createRecordBatch(EncoderType: EncoderClass, original: RecordBatchFn, crc32c: (b: Uint8Array) => number): RecordBatchFn {
  return async (args) => {
    const { compression = 0, records = [] } = args;
    if (compression !== 0 || !records.every((r) => r instanceof SizedRecord)) {
      const encoders = records.map((r) => (r instanceof SizedRecord ? encoderOf(EncoderType, r.buffer) : r));
      return original({ ...args, records: encoders });
    }
    const sized = records as SizedRecord[];
    let size = HEAD_SIZE;
    for (const record of sized) size += record.size;
    const now = Date.now();
    const head = new EncoderType(HEAD_SIZE)
      .writeInt64(args.firstOffset ?? 0)
      .writeInt32(size - 12) // the batch's length, after firstOffset and itself
      .writeInt32(args.partitionLeaderEpoch ?? 0)
      .writeInt8(MAGIC_BYTE)
      .writeUInt32(0) // the CRC, once the rest is written
      .writeInt16(args.transactional ? TRANSACTIONAL_MASK : 0)
      .writeInt32(args.lastOffsetDelta ?? 0)
      .writeInt64(args.firstTimestamp ?? now)
      .writeInt64(args.maxTimestamp ?? now)
      .writeInt64(args.producerId ?? -1)
      .writeInt16(args.producerEpoch ?? 0)
      .writeInt32(args.firstSequence ?? 0)
      .writeInt32(sized.length);
    const buf = Buffer.allocUnsafe(size);
    buf.set(head.buffer, 0);
    let at = HEAD_SIZE;
    for (const record of sized) at = record.writeTo(buf, at);
    if (at !== size) throw new Error(`record batch of ${sized.length} records: wrote ${at} bytes of ${size}`);
    buf.writeUInt32BE(crc32c(buf.subarray(CRC_FROM)), CRC_FROM - 4);
    return encoderOf(EncoderType, buf);
  };
}

/** The parts of kafkajs' Decoder the record decoder uses. */
interface Decoder {
  buffer: Buffer;
  offset: number;
  readInt8(): number;
  readVarInt(): number;
  readVarIntBytes(): Buffer | null;
  readVarIntString(): string | null;
}
interface BatchContext {
  firstOffset?: string;
  firstTimestamp?: string;
  magicByte?: number;
  isControlBatch?: boolean;
  timestampType?: number;
  maxTimestamp?: string;
}
type RecordDecoderFn = (decoder: Decoder, batchContext?: BatchContext) => unknown;

const LOG_APPEND_TIME = 1;

/** A zigzag varlong of at most 7 bytes (49 bits: exact as a number), or undefined for a longer one. */
function readSmallVarLong(decoder: Decoder): number | undefined {
  let result = 0;
  for (let shift = 0; shift < 49; shift += 7) {
    const byte = decoder.buffer[decoder.offset++]!;
    result += (byte & 0x7f) * 2 ** shift;
    if (byte < 0x80) return result % 2 === 0 ? result / 2 : -(result + 1) / 2;
  }
  return undefined;
}

/** The record's headers as kafkajs gives them: name -> value, or every value in order when a name repeats. */
function readHeaders(decoder: Decoder): Record<string, Buffer | null | (Buffer | null)[]> {
  const headers: Record<string, Buffer | null | (Buffer | null)[]> = {};
  const count = decoder.readVarInt();
  for (let i = 0; i < count; i++) {
    const name = String(decoder.readVarIntString());
    const value = decoder.readVarIntBytes();
    const seen = Object.hasOwn(headers, name) ? headers[name] : undefined;
    const next = seen === undefined ? value : Array.isArray(seen) ? [...seen, value] : [seen, value];
    // A header named __proto__ is a header like any other, not the object's prototype.
    if (name === "__proto__") Object.defineProperty(headers, name, { value: next, enumerable: true, writable: true, configurable: true });
    else headers[name] = next;
  }
  return headers;
}

/** kafkajs' record/v0 decoder, with the offset and timestamp summed as numbers while exact. */
export function createRecordDecoder(original: RecordDecoderFn): RecordDecoderFn {
  return (decoder, batchContext = {}) => {
    const start = decoder.offset;
    const { firstOffset, firstTimestamp, magicByte, isControlBatch = false, timestampType, maxTimestamp } = batchContext;
    const attributes = decoder.readInt8();
    const timestampDelta = readSmallVarLong(decoder);
    const offsetDelta = timestampDelta === undefined ? 0 : decoder.readVarInt();
    const offsetNumber = Number(firstOffset) + offsetDelta;
    const timestampNumber = Number(firstTimestamp) + (timestampDelta ?? 0);
    if (timestampDelta === undefined || !Number.isSafeInteger(offsetNumber) || !Number.isSafeInteger(timestampNumber) || firstOffset === "" || firstTimestamp === "") {
      decoder.offset = start;
      return original(decoder, batchContext);
    }
    const timestamp = timestampType === LOG_APPEND_TIME && maxTimestamp ? maxTimestamp : String(timestampNumber);
    const key = decoder.readVarIntBytes();
    const value = decoder.readVarIntBytes();
    const headers = readHeaders(decoder);
    return { magicByte, attributes, timestamp, offset: String(offsetNumber), key, value, headers, isControlRecord: isControlBatch, batchContext };
  };
}

/** kafkajs' produce request arguments (requests/produce/v3, which v4 to v7 reuse). */
interface ProduceArgs {
  acks: number;
  timeout: number;
  transactionalId?: string | null;
  producerId?: unknown;
  producerEpoch?: number;
  compression?: number;
  topicData: { topic: string; partitions: { partition: number; firstSequence?: number; messages: (RecordInput & { timestamp?: number | string })[] }[] }[];
}
interface KafkaRequest {
  apiKey: number;
  apiVersion: number;
  encode(): Promise<Encoder>;
}
type ProduceRequestFn = (args: ProduceArgs) => KafkaRequest;
type RecordFn = (input: RecordInput) => unknown;

/** Bytes of a protocol STRING: its length as an int16, then UTF-8 (null: -1 and nothing). */
const stringSize = (value: string | null | undefined): number => 2 + (value == null ? 0 : Buffer.byteLength(value, "utf8"));

/** An empty Encoder with room for `size` bytes, not zero-filled: every byte is written before it is read. */
function encoderFor(EncoderType: EncoderClass, size: number): Encoder {
  const e = encoderOf(EncoderType, Buffer.allocUnsafe(size));
  e.offset = 0;
  return e;
}

/**
 * kafkajs' produce request v3 (and so v4 to v7): the same bytes, with each record batch copied once into a request
 * of its exact size. kafkajs encodes every partition, then every topic, then the request, each into an Encoder of
 * its own that copies the one below, and the framing (protocol/request.js) copies it twice more: five copies of
 * every send, half of the time it takes to encode one. A compressed send goes through kafkajs' own.
 */
export function createProduceRequest(EncoderType: EncoderClass, original: ProduceRequestFn, encodeRecord: RecordFn, recordBatch: RecordBatchFn): ProduceRequestFn {
  const encodePartition = async (args: ProduceArgs, { partition, firstSequence, messages }: ProduceArgs["topicData"][number]["partitions"][number]) => {
    // As kafkajs does: timestamps sorted as it sorts them (as text), deltas from the first.
    const dateNow = Date.now();
    const stamps = messages.map((m) => m.timestamp).filter((t) => t != null).sort();
    const firstTimestamp = stamps.length === 0 ? dateNow : stamps[0]!;
    const maxTimestamp = stamps.length === 0 ? dateNow : stamps[stamps.length - 1]!;
    const records = messages.map((m, i) =>
      encodeRecord({ key: m.key, value: m.value, headers: m.headers, offsetDelta: i, timestampDelta: ((m.timestamp || dateNow) as number) - (firstTimestamp as number) }),
    );
    const batch = await recordBatch({
      compression: 0, records, firstTimestamp, maxTimestamp, producerId: args.producerId, producerEpoch: args.producerEpoch ?? 0,
      firstSequence, transactional: !!args.transactionalId, lastOffsetDelta: records.length - 1,
    });
    return { partition, batch };
  };
  return (args) => {
    const request = original(args);
    if ((args.compression ?? 0) !== 0) return request;
    const encode = async () => {
      const topics = [];
      let size = stringSize(args.transactionalId) + 2 + 4 + 4;
      for (const { topic, partitions } of args.topicData) {
        const encoded = [];
        for (const data of partitions) encoded.push(await encodePartition(args, data));
        size += stringSize(topic) + 4 + encoded.reduce((sum, p) => sum + 8 + p.batch.offset, 0);
        topics.push({ topic, encoded });
      }
      const out = encoderFor(EncoderType, size).writeString(args.transactionalId ?? null).writeInt16(args.acks).writeInt32(args.timeout).writeInt32(topics.length);
      for (const { topic, encoded } of topics) {
        out.writeString(topic).writeInt32(encoded.length);
        for (const { partition, batch } of encoded) out.writeInt32(partition).writeInt32(batch.offset).writeEncoder(batch);
      }
      return out;
    };
    return { ...request, encode };
  };
}

type FramingFn = (args: { correlationId: number; clientId: string; request: KafkaRequest }) => Promise<Encoder>;

/** kafkajs' request framing (protocol/request.js): size, header and payload written into one Encoder (kafkajs copies the payload twice). */
export function createRequestFraming(EncoderType: EncoderClass): FramingFn {
  return async ({ correlationId, clientId, request: { apiKey, apiVersion, encode } }) => {
    const payload = await encode();
    const size = 2 + 2 + 4 + stringSize(clientId) + payload.offset;
    return encoderFor(EncoderType, 4 + size).writeInt32(size).writeInt16(apiKey).writeInt16(apiVersion).writeInt32(correlationId).writeString(clientId).writeEncoder(payload);
  };
}
