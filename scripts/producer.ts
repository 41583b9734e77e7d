// Producer: streams the Superstore CSV into Kafka, one JSON message per row, at a steady pace so people can
// watch data move (the original sent one row per second).
//
//   data/Sample-Superstore.csv  ->  Kafka topic sales_topic          make produce (full speed), make stream (1/s)
//
// - Input is a file, or standard input with --file - (copied to a temporary file first: the encoding is known
//   only at the end). Encoding is detected (UTF-8 with or without BOM, UTF-16 with BOM, else Windows-1252) or
//   forced with --encoding. Input that cannot be read correctly, a header that is not a Superstore export or
//   names one field twice, and input without rows are refused before anything is sent, naming file, line and
//   column, with a non-zero exit.
// - The pace is scheduled against the clock: message i goes out at start + i/rate, so a slow send does not
//   push every later message back (no drift). --rate max sends as fast as the broker takes it, in batches.
// - Each message: key "<source>:<Row ID>" (the row's identity), value the row as JSON with the header's names,
//   headers source_file / source_line saying where it came from. The source is the file's path relative to
//   the data folder (or its absolute path outside it, or --source), so two files never share an identity.
// - A record the CSV parser cannot split is not dropped and does not stop the run: it is sent with its raw
//   text and a parse_error header, and the loader records it as rejected with its line number.
// - acks from all in-sync replicas and the idempotent producer. A row counts as sent once the cluster has
//   acknowledged it, partition by partition (lib/kafkajs_send.ts); the run exits 0 only when every row is
//   acknowledged. If sending cannot go on, it exits 1 naming the first line not acknowledged: every line
//   before it is in Kafka, and --from-line resumes there.
//
// Env: KAFKA_BROKERS, KAFKA_TOPIC, KAFKA_CLIENT_ID, KAFKA_PARTITIONS, KAFKA_SSL*, KAFKA_SASL_* (TLS and the
// SASL login), DATA_FILE, PRODUCER_RATE, LOG_LEVEL, LOG_PROGRESS.
// Flags: --file, --topic, --rate, --limit, --from-line, --encoding, --source, --help.

import { dirname, isAbsolute, relative, resolve } from "node:path";
import type { Message, Producer, RecordMetadata } from "kafkajs";
import { fail, parseCli, UsageError, type FlagValues } from "./lib/cli.ts";
import { KAFKA_SECURITY_ENV, parsePositiveInt, parseRate, parseTopic, readConfig, type Config } from "./lib/config.ts";
import { byColumn, readCsv, type CsvRecord } from "./lib/csv.ts";
import { countLines, detectEncoding, KEPT_CHARS, openInput, UnreadableInputError, type Encoding } from "./lib/input.ts";
import { CompressionTypes, createKafka, ensureTopic, keyPartitioner, lastKafkaProblem } from "./lib/kafka.ts";
import { connectAdmin, whileKafkaUnavailable } from "./lib/kafka_errors.ts";
import { createLogger, createProgress, formatDuration, formatRate, type Logger } from "./lib/log.ts";
import { findRowIdColumn, headerProblem } from "./lib/record.ts";
import { sleep } from "./lib/retry.ts";
import { createShutdown, type Shutdown } from "./lib/shutdown.ts";

/** One source row as sent: header name -> value exactly as read (the loader trims and parses). */
export type SourceRow = Record<string, string>;

/** Headers on every message; values are strings (Kafka headers are bytes). */
export interface SourceHeaders {
  source_file: string;
  source_line: string;
  /** lines the record spans, when more than one */
  source_lines?: string;
  /** set when the record could not be split into fields; the value is then the raw text */
  parse_error?: string;
}

const command = {
  script: "scripts/producer.ts",
  summary: [
    "Stream a Superstore CSV into Kafka, one JSON message per row, at --rate rows per second.",
    "Ctrl-C stops after the messages in flight are acknowledged.",
  ].join("\n"),
  flags: {
    file: { type: "string", short: "f", arg: "FILE", help: 'CSV to send, "-" for standard input (default $DATA_FILE)' },
    topic: { type: "string", short: "t", arg: "TOPIC", help: "topic (default $KAFKA_TOPIC); created if missing" },
    rate: { type: "string", short: "r", arg: "N|max", help: "messages per second (default $PRODUCER_RATE = 1)" },
    limit: { type: "string", short: "n", arg: "N", help: "stop after N records" },
    "from-line": { type: "string", arg: "LINE", help: "skip the records before this line of the file (resume where a stopped run says)" },
    encoding: { type: "string", arg: "ENC", help: "auto (default), utf-8, windows-1252, utf-16le or utf-16be" },
    source: { type: "string", arg: "NAME", help: "name of the source in lineage (default: path relative to the data folder; stdin: \"stdin\")" },
  },
  env: ["KAFKA_BROKERS", "KAFKA_TOPIC", "KAFKA_CLIENT_ID", "KAFKA_PARTITIONS", ...KAFKA_SECURITY_ENV, "DATA_FILE", "PRODUCER_RATE", "LOG_LEVEL", "LOG_PROGRESS"],
  notes: [
    "Examples:",
    "  bun scripts/producer.ts                      # the seed's pace, 1 row per second",
    "  bun scripts/producer.ts --rate max           # as fast as the broker takes it",
    "  bun scripts/producer.ts --rate 50 --limit 500",
    "  curl -s https://example.org/sales.csv | bun scripts/producer.ts --file - --source sales-2017.csv",
  ].join("\n"),
} as const;

/** The most messages in one send at high rates. */
export const MAX_SEND_BATCH = 2000;
/** The most bytes of records in one send (values, keys, headers): well under the broker's 1 MB message.max.bytes. */
export const MAX_SEND_BYTES = 768 * 1024;
/** What a record costs beside its key, value and headers, at most: lengths, deltas and attributes as varints. */
const RECORD_OVERHEAD = 32;

/** A message's size in a record batch, rounded up: its key, value and headers with their lengths. */
export function recordBytes(message: Message): number {
  const size = (data: unknown) => (data === null || data === undefined ? 0 : Buffer.byteLength(data as string | Buffer));
  let bytes = RECORD_OVERHEAD + size(message.key) + size(message.value);
  for (const [name, value] of Object.entries(message.headers ?? {})) bytes += 10 + Buffer.byteLength(name) + size(value);
  return bytes;
}
/** A single value larger than this cannot be sent (broker limit 1 MB with overhead); it travels as a reject. */
export const MAX_MESSAGE_BYTES = 900 * 1024;

export function parseEncoding(value: string | undefined): Encoding | "auto" {
  const v = (value ?? "auto").toLowerCase().replace(/[_\s]/g, "-");
  if (v === "auto") return "auto";
  if (v === "utf-8" || v === "utf8") return "utf-8";
  if (["windows-1252", "cp1252", "win-1252"].includes(v)) return "windows-1252";
  if (v === "utf-16le" || v === "utf-16be") return v;
  throw new UsageError(`--encoding must be auto, utf-8, windows-1252, utf-16le or utf-16be, got "${value}"`);
}

/**
 * The source's name in lineage (message keys, orders.source_file): the path relative to the data folder, so
 * data/2017/a.csv and data/2018/a.csv stay apart and re-sending a file keeps its identity; a file outside the
 * data folder is named by its absolute path; standard input is "stdin".
 */
export function sourceName(file: string, dataDir: string): string {
  if (file === "-") return "stdin";
  const path = resolve(file);
  const inside = relative(resolve(dataDir), path);
  return inside !== "" && !inside.startsWith("..") && !isAbsolute(inside) ? inside : path;
}

/** Header names as JSON keys: unnamed columns get "column_N"; a repeated name would lose a value, so it stops the run. */
export function jsonKeys(header: readonly string[], file: string): string[] {
  const keys = header.map((name, i) => (name.trim() === "" ? `column_${i + 1}` : name));
  const seen = new Set<string>();
  for (const key of keys) {
    if (seen.has(key)) throw new Error(`${file}: line 1: the header names column "${key}" twice`);
    seen.add(key);
  }
  return keys;
}

/** The message for one record of the source named `source` (its identity in keys and headers). */
export function toMessage(record: CsvRecord, keys: readonly string[], source: string, rowIdColumn: number): Message {
  const headers: SourceHeaders = { source_file: source, source_line: String(record.line) };
  if (record.lines > 1) headers.source_lines = String(record.lines);
  if (record.kind === "broken") {
    headers.parse_error = record.reason;
    return { key: `${source}:line:${record.line}`, value: record.raw, headers: { ...headers } };
  }
  const row: SourceRow = byColumn<string>();
  keys.forEach((key, i) => (row[key] = record.fields[i] ?? ""));
  const value = JSON.stringify(row);
  const bytes = Buffer.byteLength(value);
  if (bytes > MAX_MESSAGE_BYTES) {
    // Too big for one Kafka message: send it on as a rejected record, with as much raw text as fits.
    headers.parse_error = `record is ${bytes} bytes as JSON, more than the ${MAX_MESSAGE_BYTES} one message can carry`;
    return { key: `${source}:line:${record.line}`, value: value.slice(0, KEPT_CHARS), headers: { ...headers } };
  }
  const rowId = rowIdColumn >= 0 ? record.fields[rowIdColumn]?.trim() : "";
  return {
    key: rowId ? `${source}:${rowId}` : `${source}:line:${record.line}`,
    value,
    headers: { ...headers },
  };
}

/** When message `index` (0-based) is due, for a run that started at `start` (ms) at `rate` per second. */
export function dueAt(start: number, index: number, rate: number): number {
  return rate === Infinity ? start : start + (index * 1000) / rate;
}

/** Messages the cluster acknowledged in a send's answer (lib/kafkajs_send.ts counts them per partition). */
export function acknowledgedCount(answer: readonly RecordMetadata[]): number {
  return answer.reduce((n, partition) => n + ((partition as { messageCount?: number }).messageCount ?? 0), 0);
}

/** Sending stopped for good: names the first line not acknowledged, where a rerun resumes. */
export class SendStoppedError extends Error {
  override name = "SendStoppedError";
}

/** Where a rerun resumes when the send of `messages` (the first not acknowledged) failed with `cause`. */
export function stoppedAt(messages: readonly Message[], file: string, cause: Error): SendStoppedError {
  const line = String(messages[0]?.headers?.source_line ?? "?");
  return new SendStoppedError(
    `${cause.message}\n${file}: line ${line} is the first line not acknowledged by Kafka; every line before it is ` +
      `in the topic. Run again with --from-line ${line} to resume (or send the whole file again: rows already ` +
      "loaded count as duplicates).",
    { cause },
  );
}

/** How often a send that has not been acknowledged yet says so. */
export const WAITING_NOTICE_MS = 10_000;

/**
 * While a send waits for its acknowledgement (leaders being elected, too few replicas in sync, brokers away),
 * say so every WAITING_NOTICE_MS with kafkajs' last complaint: a producer that waits must not look hung.
 */
function sayWhileWaiting(messages: readonly Message[], file: string, log: Logger): ReturnType<typeof setInterval> {
  const since = performance.now();
  const line = String(messages[0]?.headers?.source_line ?? "?");
  return setInterval(() => {
    const problem = lastKafkaProblem();
    log.warn(
      `waiting ${formatDuration(performance.now() - since)} for Kafka to acknowledge ${messages.length} messages from ` +
        `line ${line} of ${file}${problem ? ` (last: ${problem})` : ""}; none of them counts as sent until it does`,
    );
  }, WAITING_NOTICE_MS);
}

/**
 * Batches messages and keeps one send in flight (the idempotent producer allows no more) while the next batch
 * is built. acks -1: the broker answers once every in-sync replica has the messages. While the broker is away
 * (a restart), the same messages are sent again when it is back: at worst twice, never lost. Only messages the
 * cluster acknowledged are counted as sent.
 */
function createSender(producer: Producer, topic: string, file: string, log: Logger, signal: AbortSignal) {
  let buffer: Message[] = [];
  let bufferBytes = 0;
  let inFlight: Promise<void> | undefined;
  const state = { sent: 0 };
  const send = async (messages: Message[]) => {
    const waiting = sayWhileWaiting(messages, file, log);
    try {
      const answer = await whileKafkaUnavailable(
        `sending ${messages.length} messages`,
        () => producer.send({ topic, acks: -1, messages, compression: CompressionTypes.None }),
        log,
        signal,
      );
      const acknowledged = acknowledgedCount(answer);
      if (acknowledged !== messages.length) {
        throw new Error(`Kafka acknowledged ${acknowledged} of the ${messages.length} messages of a send to ${topic}`);
      }
      state.sent += acknowledged;
    } catch (error) {
      throw stoppedAt(messages, file, error as Error);
    } finally {
      clearInterval(waiting);
    }
  };
  /** Waits for the send in flight, then starts one with what is buffered. */
  const flush = async () => {
    await inFlight;
    if (buffer.length === 0) return;
    const messages = buffer;
    buffer = [];
    bufferBytes = 0;
    inFlight = send(messages);
    inFlight.catch(() => undefined); // awaited by the next flush or by drain; not unhandled meanwhile
  };
  return {
    state,
    get buffered() {
      return buffer.length;
    },
    async add(message: Message) {
      // Keys and headers count too: 2,000 rows of a source with a long path carry ~300 KB of them.
      const bytes = recordBytes(message);
      if (bufferBytes + bytes > MAX_SEND_BYTES) await flush();
      buffer.push(message);
      bufferBytes += bytes;
    },
    flush,
    /** Sends what is buffered and waits until everything is acknowledged. */
    async drain() {
      await flush();
      await inFlight;
    },
  };
}

/** What one run sends, and how: from the flags, else the environment. */
interface SendPlan {
  readonly file: string;
  readonly topic: string;
  /** messages per second; Infinity for "max" */
  readonly rate: number;
  readonly limit: number;
  /** records before this line of the file are skipped (0: none) */
  readonly fromLine: number;
  readonly forced: Encoding | "auto";
  /** the source's name in keys and headers */
  readonly source: string;
}

function planSend(flags: FlagValues<typeof command.flags>, config: Config): SendPlan {
  const file = flags.file ?? config.dataFile;
  return {
    file,
    topic: flags.topic === undefined ? config.kafkaTopic : parseTopic(flags.topic, "--topic"),
    rate: flags.rate === undefined ? config.producerRate : parseRate(flags.rate, "--rate"),
    limit: flags.limit === undefined ? Infinity : parsePositiveInt(flags.limit, "--limit"),
    fromLine: flags["from-line"] === undefined ? 0 : parsePositiveInt(flags["from-line"], "--from-line"),
    forced: parseEncoding(flags.encoding),
    source: flags.source ?? sourceName(file, dirname(config.dataFile)),
  };
}

async function main(): Promise<void> {
  const flags = parseCli(command);
  if (!flags) return;
  const config = readConfig();
  const log = createLogger("producer", config.logLevel, config.logProgress);
  const plan = planSend(flags, config);
  const { file, topic } = plan;
  const input = await openInput(file).catch((error: Error) => {
    throw new UsageError(`${error.message}${file === config.dataFile ? ' (run "make data" to create the sample file, or pass --file)' : ""}`);
  });
  const shutdown = createShutdown(log);
  shutdown.onStop("remove the copy of standard input", () => input.close());
  try {
    const source = await openRecords(input.path, plan, log);
    const producer = await connectProducer(config, topic, log);
    const sender = createSender(producer, topic, file, log, shutdown.signal);
    shutdown.onStop("flush messages in flight", () => sender.drain());
    shutdown.onStop("disconnect producer", () => producer.disconnect());
    const started = performance.now();
    const { count, broken } = await sendRecords(source, plan, sender, started, shutdown, log);
    await shutdown.run();
    if (count === 0 && !shutdown.requested) {
      throw new UnreadableInputError(`${file}: no rows ${plan.fromLine > 0 ? `at or after line ${plan.fromLine}` : "after the header"}: nothing was sent`);
    }
    const ms = performance.now() - started;
    log.info(
      `done: sent=${sender.state.sent} rows=${sender.state.sent - broken} unsplittable=${broken} topic=${topic} ` +
        `in ${formatDuration(ms)} (${formatRate(sender.state.sent, ms)})${shutdown.requested ? " (stopped early)" : ""}`,
    );
  } finally {
    await shutdown.run();
  }
}

/** The records of the input, its header read and checked; the encoding detected unless one was forced. */
interface SourceRecords {
  readonly records: AsyncIterator<CsvRecord>;
  readonly keys: string[];
  readonly rowIdColumn: number;
  /** rows in the file, about: its lines but the header */
  readonly rows: number;
}

async function openRecords(path: string, { file, topic, rate, forced, source }: SendPlan, log: Logger): Promise<SourceRecords> {
  // A forced encoding is the user's word: no detection, no refusal.
  const detected = forced === "auto" ? await detectEncoding(path, file) : { encoding: forced, bom: false, lines: await countLines(path) };
  const encoding = detected.encoding;
  const records = readCsv(path, encoding)[Symbol.asyncIterator]();
  const keys = await readHeader(records, file);
  const rowIdColumn = findRowIdColumn(keys);
  log.info(
    `${file}: ${encoding}${detected.bom ? " with BOM" : ""}${forced === "auto" ? " (detected)" : ""}, ` +
      `about ${Math.max(detected.lines - 1, 0)} rows as "${source}" -> topic ${topic} at ${rate === Infinity ? "max" : `${rate}/s`}`,
  );
  return { records, keys, rowIdColumn, rows: Math.max(detected.lines - 1, 0) };
}

/**
 * Sends each record in its slot of the pace (message i at `started` + i/rate), until the input ends, the limit is
 * reached or a stop is asked for. Returns how many records went to the sender, and how many of them as rejected.
 */
async function sendRecords(
  { records, keys, rowIdColumn, rows }: SourceRecords,
  { file, rate, limit, fromLine, source }: SendPlan,
  sender: ReturnType<typeof createSender>,
  started: number,
  shutdown: Shutdown,
  log: Logger,
): Promise<{ count: number; broken: number }> {
  const progress = createProgress(log, "sent", Math.min(rows, limit) || undefined, 1000);
  let count = 0;
  let broken = 0;
  for (let next = await records.next(); !next.done && count < limit && !shutdown.requested; next = await records.next()) {
    if (next.value.line < fromLine) continue;
    // Wait for this message's slot; send what is buffered first so it leaves on time.
    const due = dueAt(started, count, rate);
    if (due > performance.now()) {
      await sender.flush();
      await sleep(due - performance.now(), shutdown.signal);
      if (shutdown.requested) break;
    }
    const message = toMessage(next.value, keys, source, rowIdColumn);
    if (message.headers?.parse_error) {
      broken++;
      log.warn(`${file}: line ${next.value.line}: ${String(message.headers.parse_error)}; sent as a rejected record`);
    }
    await sender.add(message);
    count++;
    // Send now unless the next message is already due too (high rates fill a batch first).
    if (sender.buffered >= MAX_SEND_BATCH || dueAt(started, count, rate) > performance.now()) {
      await sender.flush();
      progress.update(sender.state.sent);
    }
  }
  progress.done();
  return { count, broken };
}

/** The first record: the header, checked to be a Superstore export before anything is sent. */
async function readHeader(records: AsyncIterator<CsvRecord>, file: string): Promise<string[]> {
  const first = await records.next();
  if (first.done) throw new UnreadableInputError(`${file}: the file is empty: nothing was sent`);
  if (first.value.kind !== "row") throw new UnreadableInputError(`${file}: line ${first.value.line}: cannot read the header`);
  const keys = jsonKeys(first.value.fields, file);
  const problem = headerProblem(keys);
  if (problem) throw new UnreadableInputError(`${file}: line 1: ${problem}; nothing was sent`);
  return keys;
}

/** Creates the topic if needed and connects an idempotent producer; a refused login stops before either. */
async function connectProducer(config: ReturnType<typeof readConfig>, topic: string, log: Logger): Promise<Producer> {
  const kafka = createKafka(config, log);
  const admin = await connectAdmin(kafka, config);
  try {
    if (await ensureTopic(admin, topic, config.kafkaPartitions)) log.info(`created topic ${topic} with ${config.kafkaPartitions} partitions`);
  } finally {
    await admin.disconnect();
  }
  const producer = kafka.producer({
    // kafkajs' DefaultPartitioner (murmur2 of the key), computed without its per-message overhead.
    createPartitioner: keyPartitioner,
    // Idempotent: a retried send is written once. kafkajs requires one request in flight for it.
    idempotent: true,
    maxInFlightRequests: 1,
    // Retry without limit (kafkajs warns that a limited idempotent producer may duplicate): when the broker
    // restarts mid-stream the send waits for it, and Ctrl-C still stops the run.
    retry: { retries: Number.MAX_SAFE_INTEGER, initialRetryTime: 300, maxRetryTime: 5000 },
  });
  await producer.connect();
  return producer;
}

if (import.meta.main) main().catch(fail);
