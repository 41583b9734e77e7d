// Unit tests for scripts/lib/batcher.ts: a message becomes a batch row (whatever it holds), rows become batch
// files of a bounded width, closed by count, by a quiet period or by age (the clock passed in). Then the
// consumer itself against the real broker: at a slow rate, a file appears within the max age.

import { afterAll, describe, expect, test } from "bun:test";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import type { IHeaders, KafkaMessage } from "kafkajs";
import { META_COLUMNS } from "../scripts/lib/batch.ts";
import {
  Batcher,
  batchColumns,
  batchLayout,
  type BatchRow,
  MAX_HEADER_BYTES,
  MAX_SOURCE_COLUMNS,
  MAX_VALUE_BYTES,
  messageToRow,
  recordFingerprint,
} from "../scripts/lib/batcher.ts";
import { membershipLostBy } from "../scripts/consumer_batch_to_csv.ts";
import { parseCsv } from "../scripts/lib/csv.ts";
import { KEPT_CHARS } from "../scripts/lib/input.ts";
import { BROKERS, groupLag, pipelineEnv, runOk, startScript, tempDir, uniqueName, waitFor } from "./helpers.ts";

function message(value: Buffer | null, headers: IHeaders = { source_file: Buffer.from("a.csv") }): KafkaMessage {
  return {
    key: Buffer.from("a.csv:1"),
    value,
    timestamp: "1700000000000",
    offset: "5",
    headers,
    attributes: 0,
    size: 0,
  } as unknown as KafkaMessage;
}

const META = {
  _source_file: "a.csv",
  _source_line: "2",
  _source_lines: null,
  _topic: "sales_topic",
  _partition: "1",
  _offset: "5",
  _timestamp: "2023-11-14T22:13:20.000Z",
  _error: null,
  _raw: null,
};

const HEADERS: IHeaders = { source_file: Buffer.from("a.csv"), source_line: Buffer.from("2") };

describe("recordFingerprint", () => {
  const record = (timestamp: string, key: string | null, value: string | null) => ({
    timestamp,
    key: key === null ? null : Buffer.from(key),
    value: value === null ? null : Buffer.from(value),
  });

  test("is the same for the same record delivered twice", () => {
    expect(recordFingerprint(record("1700000000000", "a.csv:2", '{"Sales":"1"}'))).toBe(recordFingerprint(record("1700000000000", "a.csv:2", '{"Sales":"1"}')));
  });

  test("differs when the timestamp, the key or the value differs, also for the same bytes split otherwise", () => {
    const prints = [
      record("1700000000000", "a.csv:2", '{"Sales":"1"}'),
      record("1700000000001", "a.csv:2", '{"Sales":"1"}'),
      record("1700000000000", "a.csv:3", '{"Sales":"1"}'),
      record("1700000000000", "a.csv:2", '{"Sales":"2"}'),
      record("1700000000000", "ab", "c"),
      record("1700000000000", "a", "bc"),
      record("1700000000000", null, null),
    ].map(recordFingerprint);
    expect(new Set(prints).size).toBe(prints.length);
  });
});

describe("messageToRow", () => {
  test("turns a JSON object into its fields followed by the meta columns", () => {
    const value = Buffer.from(JSON.stringify({ "Row ID": "1", "Order ID": "CA-1", Sales: "261.96" }));
    const row = messageToRow(message(value, HEADERS), "sales_topic", 1);
    expect(row).toEqual({ "Row ID": "1", "Order ID": "CA-1", Sales: "261.96", ...META });
    expect(Object.keys(row)).toEqual(["Row ID", "Order ID", "Sales", ...META_COLUMNS]);
  });

  test("keeps non-ASCII text", () => {
    const value = Buffer.from(JSON.stringify({ Name: "Eldon “Base” é" }));
    expect(messageToRow(message(value, HEADERS), "sales_topic", 1).Name).toBe("Eldon “Base” é");
  });

  test("reads source_lines for a record that spans several lines", () => {
    const headers = { ...HEADERS, source_lines: Buffer.from("3") };
    const row = messageToRow(message(Buffer.from("{}"), headers), "sales_topic", 1);
    expect(row._source_lines).toBe("3");
  });

  test("reads header values given as arrays or strings", () => {
    const headers: IHeaders = { source_file: [Buffer.from("b.csv"), Buffer.from("c.csv")], source_line: "8" };
    const row = messageToRow(message(Buffer.from("{}"), headers), "t", 0);
    expect([row._source_file, row._source_line]).toEqual(["b.csv", "8"]);
  });

  test("has null source columns for a message without headers", () => {
    const msg = { ...message(Buffer.from('{"a":"1"}')), headers: undefined } as KafkaMessage;
    expect(messageToRow(msg, "t", 0)).toEqual({
      a: "1",
      ...META,
      _source_file: null,
      _source_line: null,
      _topic: "t",
      _partition: "0",
    });
  });

  test("keeps the raw text and the reason of a record the producer could not split", () => {
    const headers = { ...HEADERS, parse_error: Buffer.from("expected 21 fields but got 3") };
    expect(messageToRow(message(Buffer.from("1,2,3"), headers), "sales_topic", 1)).toEqual({
      ...META,
      _error: "expected 21 fields but got 3",
      _raw: "1,2,3",
    });
  });

  test("keeps raw text that happens to be JSON as raw when parse_error is set", () => {
    const headers = { ...HEADERS, parse_error: Buffer.from("bad quoting") };
    expect(messageToRow(message(Buffer.from('{"a":"1"}'), headers), "sales_topic", 1)).toEqual({
      ...META,
      _error: "bad quoting",
      _raw: '{"a":"1"}',
    });
  });

  test("rejects a value that is not JSON", () => {
    expect(messageToRow(message(Buffer.from("Row ID,Sales"), HEADERS), "sales_topic", 1)).toEqual({
      ...META,
      _error: "message value is not a JSON object",
      _raw: "Row ID,Sales",
    });
  });

  test("rejects JSON that is not an object", () => {
    for (const text of ["[1,2]", "null", "42", '"text"']) {
      expect(messageToRow(message(Buffer.from(text), HEADERS), "sales_topic", 1)).toEqual({
        ...META,
        _error: "message value is not a JSON object",
        _raw: text,
      });
    }
  });

  test("rejects a message without a value", () => {
    expect(messageToRow(message(null, HEADERS), "sales_topic", 1)).toEqual({
      ...META,
      _error: "message has no value",
      _raw: null,
    });
  });

  test("turns numbers, booleans and nested values into text, and keeps null", () => {
    const json = { Quantity: 3, Sales: 2.5, Gift: false, Tags: ["a"], Extra: { b: 1 }, Note: null };
    const value = Buffer.from(JSON.stringify(json));
    expect(messageToRow(message(value, HEADERS), "sales_topic", 1)).toEqual({
      Quantity: "3",
      Sales: "2.5",
      Gift: "false",
      Tags: '["a"]',
      Extra: '{"b":1}',
      Note: null,
      ...META,
    });
  });

  test("keeps a source field named like a meta column under source + its name", () => {
    const value = Buffer.from(JSON.stringify({ _offset: "from the file", _error: "also data", Sales: "1" }));
    expect(messageToRow(message(value, HEADERS), "sales_topic", 1)).toEqual({
      source_offset: "from the file",
      source_error: "also data",
      Sales: "1",
      ...META,
    });
  });
});

describe("messageToRow with what no producer of ours writes", () => {
  const value = Buffer.from('{"Row ID":"1"}');

  test("takes a header without a value (Kafka allows one) as not given", () => {
    const headers = { source_file: null, source_line: [null, Buffer.from("3")], parse_error: null } as unknown as IHeaders;
    expect(messageToRow(message(value, headers), "sales_topic", 1)).toEqual({ "Row ID": "1", ...META, _source_file: null, _source_line: null });
  });

  test("rejects a provenance header that is not UTF-8, or longer than MAX_HEADER_BYTES, keeping the value", () => {
    const latin = messageToRow(message(value, { ...HEADERS, source_file: Buffer.from([0x63, 0xe9, 0x2e]) }), "sales_topic", 1);
    expect([latin._error, latin._raw, latin._source_file]).toEqual(["header source_file is not UTF-8 text", '{"Row ID":"1"}', null]);
    const long = messageToRow(message(value, { ...HEADERS, source_line: Buffer.alloc(MAX_HEADER_BYTES + 1, "9") }), "t", 0);
    expect(long._error).toBe(`header source_line is ${MAX_HEADER_BYTES + 1} bytes, more than ${MAX_HEADER_BYTES}`);
  });

  test("rejects a value that is not UTF-8, keeping it readable in _raw", () => {
    const row = messageToRow(message(Buffer.from([0x7b, 0x22, 0x61, 0x22, 0x3a, 0x22, 0xe9, 0x22, 0x7d]), HEADERS), "sales_topic", 1);
    expect({ error: row._error, raw: row._raw }).toEqual({ error: "message value is not UTF-8 text", raw: '{"a":"\uFFFD"}' });
  });

  test("rejects a value longer than MAX_VALUE_BYTES, keeping its first KEPT_CHARS bytes", () => {
    const row = messageToRow(message(Buffer.alloc(MAX_VALUE_BYTES + 1, "x"), HEADERS), "sales_topic", 1);
    expect(row._error).toBe(`message value is ${MAX_VALUE_BYTES + 1} bytes, more than ${MAX_VALUE_BYTES}; its first ${KEPT_CHARS} bytes are kept`);
    expect(row._raw).toHaveLength(KEPT_CHARS);
  });

  test("writes a missing timestamp (-1) as empty and one outside the calendar as its number", () => {
    const at = (timestamp: string) => messageToRow({ ...message(value, HEADERS), timestamp }, "t", 0)._timestamp;
    expect([at("-1"), at("9999999999999999"), at("0")]).toEqual([null, "9999999999999999", "1970-01-01T00:00:00.000Z"]);
  });

  test("rejects JSON nested too deeply to turn back into text instead of throwing", () => {
    const deep = `{"Tags":${"[".repeat(100_000)}${"]".repeat(100_000)}}`;
    let row: BatchRow | undefined;
    expect(() => (row = messageToRow(message(Buffer.from(deep), HEADERS), "t", 0))).not.toThrow();
    expect(row?._error).toMatch(/^message value (cannot be read as fields|is not a JSON object)/);
    expect(row?.Tags).toBeUndefined();
  }, 60_000); // the engine takes about a second to give up on the stack

  test("keeps a source field named _extra under a safe name", () => {
    expect(messageToRow(message(Buffer.from('{"_extra":"x"}'), HEADERS), "t", 0).source_extra).toBe("x");
  });
});

describe("batchLayout", () => {
  const many = (prefix: string, n: number) => Object.fromEntries(Array.from({ length: n }, (_, i) => [`${prefix}${i}`, String(i)]));

  test("leaves a file of up to MAX_SOURCE_COLUMNS source columns as it is", () => {
    const rows: BatchRow[] = [{ ...many("a", MAX_SOURCE_COLUMNS), ...META }];
    const laid = batchLayout(rows);
    expect(laid.rows).toBe(rows);
    expect(laid.columns).toEqual([...Object.keys(many("a", MAX_SOURCE_COLUMNS)), ...META_COLUMNS]);
  });

  test("keeps a file as narrow however many distinct fields its messages hold: the rest of a row goes to _extra", () => {
    const rows: BatchRow[] = [
      { ...many("first", 60), ...META },
      { "Row ID": "7", ...many("second", 60), Sales: "2.5", ...META },
    ];
    const laid = batchLayout(rows);
    expect(laid.columns).toHaveLength(MAX_SOURCE_COLUMNS + 1 + META_COLUMNS.length);
    // Columns that mean a Superstore field are chosen first, in order of first appearance with the others.
    expect(laid.columns.slice(0, 61)).toEqual([...Object.keys(many("first", 60)), "Row ID"]);
    expect(laid.columns).toContain("Sales");
    expect(laid.columns[MAX_SOURCE_COLUMNS]).toBe("_extra");
    const second = laid.rows[1]!;
    const extra = JSON.parse(String(second._extra)) as Record<string, string>;
    expect(Object.keys(extra)).toEqual(Object.keys(many("second", 60)).filter((k) => !laid.columns.includes(k)));
    expect(Object.keys(extra)).toHaveLength(22);
    expect([second["Row ID"], second.Sales, second._offset]).toEqual(["7", "2.5", "5"]);
    expect(laid.rows[0]!._extra).toBeNull();
  });
});

describe("batchColumns", () => {
  test("lists source columns in order of first appearance, then the meta columns", () => {
    const rows: BatchRow[] = [
      { b: "1", a: "2", ...META },
      { a: "3", c: "4", ...META },
      { ...META, _error: "x", _raw: "y" },
      { d: "5", b: "6", ...META },
    ];
    expect(batchColumns(rows)).toEqual(["b", "a", "c", "d", ...META_COLUMNS]);
  });

  test("puts the meta columns last even when a row lists them first", () => {
    const rows: BatchRow[] = [{ _offset: "1", _topic: "t", z: "1" }];
    expect(batchColumns(rows)).toEqual(["z", ...META_COLUMNS]);
  });

  test("lists only the meta columns for no rows or rejected rows only", () => {
    expect(batchColumns([])).toEqual([...META_COLUMNS]);
    expect(batchColumns([{ ...META, _error: "x", _raw: "y" }])).toEqual([...META_COLUMNS]);
  });

  test("gives every row of a batch the same columns as the messages it came from", () => {
    const rows = [
      messageToRow(message(Buffer.from('{"Row ID":"1","Sales":"2"}'), HEADERS), "t", 0),
      messageToRow(message(Buffer.from("broken"), HEADERS), "t", 0),
      messageToRow(message(Buffer.from('{"Row ID":"2","Profit":"3"}'), HEADERS), "t", 0),
    ];
    expect(batchColumns(rows)).toEqual(["Row ID", "Sales", "Profit", ...META_COLUMNS]);
  });
});

describe("Batcher", () => {
  const row = (n: number): BatchRow => ({ n: String(n) });
  const offsets = (batch: { first: bigint; last: bigint; rows: readonly BatchRow[] } | undefined) =>
    batch && { first: Number(batch.first), last: Number(batch.last), rows: batch.rows.map((r) => Number(r.n)) };

  test("hands out a partition's rows as one batch when it is full", () => {
    const batcher = new Batcher(3, 5000);
    expect(batcher.add(0, 10n, row(10), 0)).toBeUndefined();
    expect(batcher.add(0, 11n, row(11), 1)).toBeUndefined();
    expect(offsets(batcher.add(0, 12n, row(12), 2))).toEqual({ first: 10, last: 12, rows: [10, 11, 12] });
    expect(batcher.empty).toBe(true);
  });

  test("keeps partitions apart", () => {
    const batcher = new Batcher(2, 5000);
    batcher.add(0, 1n, row(1), 0);
    batcher.add(1, 7n, row(7), 0);
    expect(offsets(batcher.add(1, 8n, row(8), 0))).toEqual({ first: 7, last: 8, rows: [7, 8] });
    expect(batcher.buffered(0)).toBe(1);
  });

  test("closes a partial batch once its partition has been quiet long enough", () => {
    const batcher = new Batcher(100, 5000);
    batcher.add(0, 1n, row(1), 1000);
    batcher.add(1, 1n, row(1), 3000);
    expect(batcher.due(5999)).toEqual([]);
    expect(batcher.due(6000).map(offsets)).toEqual([{ first: 1, last: 1, rows: [1] }]);
    expect(batcher.buffered(1)).toBe(1);
  });

  test("closes a partial batch once its first row has waited the max age, though rows keep arriving", () => {
    const batcher = new Batcher(100, 5000, 3000);
    // One row a second: the quiet period never comes, the max age does.
    for (const n of [0, 1, 2]) batcher.add(0, BigInt(n), row(n), n * 1000);
    expect(batcher.due(2999)).toEqual([]);
    expect(batcher.due(3000).map(offsets)).toEqual([{ first: 0, last: 2, rows: [0, 1, 2] }]);
    // The next batch's age counts from its own first row.
    batcher.add(0, 3n, row(3), 3000);
    batcher.add(0, 4n, row(4), 4000);
    expect(batcher.due(5999)).toEqual([]);
    expect(batcher.due(6000).map(offsets)).toEqual([{ first: 3, last: 4, rows: [3, 4] }]);
  });

  test("ages each partition by its own first row", () => {
    const batcher = new Batcher(100, 60_000, 3000);
    batcher.add(0, 1n, row(1), 0);
    batcher.add(1, 1n, row(1), 2000);
    batcher.add(0, 2n, row(2), 2500);
    expect(batcher.due(3000).map((b) => b.partition)).toEqual([0]);
    expect(batcher.due(4999)).toEqual([]);
    expect(batcher.due(5000).map((b) => b.partition)).toEqual([1]);
  });

  test("closes by count before the max age when rows come fast, and starts the next batch's age afresh", () => {
    const batcher = new Batcher(2, 5000, 3000);
    batcher.add(0, 1n, row(1), 0);
    expect(offsets(batcher.add(0, 2n, row(2), 10))).toEqual({ first: 1, last: 2, rows: [1, 2] });
    batcher.add(0, 3n, row(3), 2900);
    expect(batcher.due(3000)).toEqual([]);
    expect(batcher.due(5900)).toHaveLength(1);
  });

  test("without a max age, only the count and the quiet period close a batch", () => {
    const batcher = new Batcher(100, 5000);
    for (let n = 0; n < 60; n++) batcher.add(0, BigInt(n), row(n), n * 1000);
    expect(batcher.due(63_999)).toEqual([]);
    expect(batcher.buffered(0)).toBe(60);
  });

  test("starts a partition over when an offset it has already seen arrives again (a re-fetch)", () => {
    const batcher = new Batcher(100, 5000);
    for (const n of [5, 6, 7]) batcher.add(0, BigInt(n), row(n), 0);
    batcher.add(0, 6n, row(6), 0);
    batcher.add(0, 7n, row(7), 0);
    expect(batcher.drain().map(offsets)).toEqual([{ first: 6, last: 7, rows: [6, 7] }]);
  });

  test("drains every partition and forgets everything on clear", () => {
    const batcher = new Batcher(100, 5000);
    batcher.add(0, 1n, row(1), 0);
    batcher.add(2, 4n, row(4), 0);
    expect(batcher.drain()).toHaveLength(2);
    batcher.add(0, 2n, row(2), 0);
    batcher.clear();
    expect(batcher.empty).toBe(true);
    expect(batcher.drain()).toEqual([]);
  });
});

describe("membershipLostBy", () => {
  const kafkaError = (type: string, cause?: unknown) => Object.assign(new Error(type.toLowerCase()), { type, cause });

  test("finds the refusal that only a rejoin mends, in the error or its causes, and gives it with its type", () => {
    const unknown = kafkaError("UNKNOWN_MEMBER_ID");
    expect(membershipLostBy(unknown)).toBe(unknown);
    const generation = kafkaError("ILLEGAL_GENERATION");
    expect(membershipLostBy(Object.assign(new Error("retries exceeded"), { cause: generation }))).toBe(generation);
    for (const type of ["REBALANCE_IN_PROGRESS", "FENCED_INSTANCE_ID"]) expect(membershipLostBy(kafkaError(type))?.message).toBe(type.toLowerCase());
  });

  test("leaves every other failure to the next commit", () => {
    expect(membershipLostBy(kafkaError("REQUEST_TIMED_OUT"))).toBeUndefined();
    expect(membershipLostBy(kafkaError("NOT_COORDINATOR_FOR_GROUP"))).toBeUndefined(); // the commit finds the new coordinator
    expect(membershipLostBy(new Error("Connection error: ECONNREFUSED"))).toBeUndefined();
    expect(membershipLostBy(undefined)).toBeUndefined();
  });
});

describe("the consumer at a slow rate", () => {
  const tmp = tempDir();
  afterAll(() => tmp.remove());

  /** The batch files in `dir` (not the temporary ones being written), oldest offsets first. */
  const batchFiles = (dir: string) => readdirSync(dir).filter((f) => f.endsWith(".csv") && !f.startsWith(".")).sort();

  test("writes a file within the max age of its first record while records keep coming, and commits it", async () => {
    const env = pipelineEnv({ topic: uniqueName("slow"), group: uniqueName("g"), dir: join(tmp.path, "batches"), databaseUrl: "postgres://unused@127.0.0.1:1/none" });
    const file = join(tmp.path, "data.csv");
    await runOk("make_data.ts", ["--out", file, "--rows", "16"], {});
    // A quiet period far away: only the max age can close a file while the producer sends.
    const consumer = startScript("consumer_batch_to_csv.ts", ["--max-age", "2", "--quiet", "600"], { ...env, LOG_LEVEL: "info" });
    await consumer.waitForOutput(/joined group/);
    const producer = startScript("producer.ts", ["--file", file, "--rate", "2"], env);

    const first = await waitFor("the first batch file", () => batchFiles(env.BATCHES_DIR!)[0], 20_000, 50);
    const seenAt = Date.now();
    expect(producer.child.exitCode).toBeNull(); // still sending: no quiet period and no shutdown closed the file
    const rows = parseCsv(await Bun.file(join(env.BATCHES_DIR!, first)).text(), first).rows;
    const sentAt = Date.parse(rows[0]!.values._timestamp!);
    // The max age (2 s) after its first record arrived, plus the 200 ms timer and this test's 50 ms poll.
    expect(seenAt - sentAt).toBeLessThan(3500);
    expect(rows.length).toBeGreaterThan(1);
    expect(rows.length).toBeLessThan(16);

    expect((await producer.finish()).code).toBe(0);
    await waitFor("every record in a file", async () => (await groupLag(BROKERS, env.KAFKA_GROUP_ID!, env.KAFKA_TOPIC!)) === 0, 20_000);
    consumer.child.kill("SIGTERM");
    expect((await consumer.finish()).code).toBe(0);
    const files = batchFiles(env.BATCHES_DIR!);
    let written = 0;
    for (const name of files) written += parseCsv(await Bun.file(join(env.BATCHES_DIR!, name)).text(), name).rows.length;
    expect(written).toBe(16);
    expect(files.length).toBeGreaterThanOrEqual(3); // 8 s of records at one file per 2 s
  });
});
