// Unit tests for the pure parts of scripts/producer.ts: encodings, JSON keys, messages and the send schedule.

import { describe, expect, test } from "bun:test";
import type { CsvRecord } from "../scripts/lib/csv.ts";
import { UsageError } from "../scripts/lib/cli.ts";
import { acknowledgedCount, dueAt, MAX_SEND_BYTES, recordBytes, jsonKeys, MAX_MESSAGE_BYTES, parseEncoding, stoppedAt, toMessage } from "../scripts/producer.ts";

const KEYS = ["Row ID", "Order ID", "Product Name"];

describe("parseEncoding", () => {
  test("defaults to auto", () => {
    expect(parseEncoding(undefined)).toBe("auto");
    expect(parseEncoding("AUTO")).toBe("auto");
  });

  test("reads the usual spellings of UTF-8", () => {
    expect(["utf-8", "UTF8", "utf_8", "Utf 8"].map(parseEncoding)).toEqual(["utf-8", "utf-8", "utf-8", "utf-8"]);
  });

  test("reads the usual spellings of Windows-1252", () => {
    expect(["windows-1252", "Windows_1252", "CP1252", "win-1252"].map(parseEncoding)).toEqual([
      "windows-1252",
      "windows-1252",
      "windows-1252",
      "windows-1252",
    ]);
  });

  test("refuses other encodings with a UsageError naming --encoding", () => {
    expect(() => parseEncoding("latin1")).toThrow(UsageError);
    expect(() => parseEncoding("latin1")).toThrow('--encoding must be auto, utf-8, windows-1252, utf-16le or utf-16be, got "latin1"');
  });
});

describe("jsonKeys", () => {
  test("keeps header names as they are", () => {
    expect(jsonKeys(["Row ID", " Sales ", "Sub-Category"], "data/s.csv")).toEqual(["Row ID", " Sales ", "Sub-Category"]);
  });

  test("names unnamed columns by their position", () => {
    expect(jsonKeys(["Row ID", "", "Sales", "  "], "data/s.csv")).toEqual(["Row ID", "column_2", "Sales", "column_4"]);
  });

  test("throws on a repeated name, naming the file and line 1", () => {
    expect(() => jsonKeys(["Sales", "Profit", "Sales"], "data/s.csv")).toThrow(
      'data/s.csv: line 1: the header names column "Sales" twice',
    );
  });

  test("throws when a generated name repeats a real one", () => {
    expect(() => jsonKeys(["column_2", ""], "data/s.csv")).toThrow('data/s.csv: line 1: the header names column "column_2" twice');
  });
});

describe("toMessage", () => {
  test("keys a row by file and Row ID, with the row as JSON and where it came from", () => {
    const record: CsvRecord = { kind: "row", line: 5, lines: 1, fields: ["4", "US-2015-108966", " Bretford “CR4500” "] };
    expect(toMessage(record, KEYS, "Sample-Superstore.csv", 0)).toEqual({
      key: "Sample-Superstore.csv:4",
      value: JSON.stringify({ "Row ID": "4", "Order ID": "US-2015-108966", "Product Name": " Bretford “CR4500” " }),
      headers: { source_file: "Sample-Superstore.csv", source_line: "5" },
    });
  });

  test("keeps the values exactly as read, for the loader to clean", () => {
    const record: CsvRecord = { kind: "row", line: 2, lines: 1, fields: [" 7 ", "", "x,y"] };
    const message = toMessage(record, KEYS, "s.csv", 0);
    expect(JSON.parse(String(message.value))).toEqual({ "Row ID": " 7 ", "Order ID": "", "Product Name": "x,y" });
    expect(message.key).toBe("s.csv:7");
  });

  test("keys a row by its line when the file has no Row ID column", () => {
    const record: CsvRecord = { kind: "row", line: 12, lines: 1, fields: ["a", "b", "c"] };
    expect(toMessage(record, KEYS, "s.csv", -1).key).toBe("s.csv:line:12");
  });

  test("keys a row by its line when its Row ID is empty", () => {
    const record: CsvRecord = { kind: "row", line: 12, lines: 1, fields: ["  ", "b", "c"] };
    expect(toMessage(record, KEYS, "s.csv", 0).key).toBe("s.csv:line:12");
  });

  test("says how many lines a multi-line record spans", () => {
    const record: CsvRecord = { kind: "row", line: 7, lines: 3, fields: ["9", "o", "two\nthree"] };
    expect(toMessage(record, KEYS, "s.csv", 0).headers).toEqual({
      source_file: "s.csv",
      source_line: "7",
      source_lines: "3",
    });
  });

  test("sends a broken record with its raw text and a parse_error header", () => {
    const record: CsvRecord = {
      kind: "broken",
      line: 9,
      lines: 1,
      raw: '4,"x"y,6',
      reason: "Invalid Closing Quote",
    };
    expect(toMessage(record, KEYS, "s.csv", 0)).toEqual({
      key: "s.csv:line:9",
      value: '4,"x"y,6',
      headers: { source_file: "s.csv", source_line: "9", parse_error: "Invalid Closing Quote" },
    });
  });
});

describe("toMessage for records too big for Kafka", () => {
  test("sends a row larger than one message can carry as a rejected record with a prefix of its JSON", () => {
    const huge = "é".repeat(MAX_MESSAGE_BYTES / 2 + 10); // two bytes each in UTF-8
    const record: CsvRecord = { kind: "row", line: 9, lines: 1, fields: ["1", "CA-1", huge] };
    const message = toMessage(record, KEYS, "s.csv", 0);
    expect(message.key).toBe("s.csv:line:9");
    expect(String(message.headers?.parse_error)).toMatch(/^record is \d+ bytes as JSON, more than the 921600 one message can carry$/);
    expect(String(message.value)).toStartWith('{"Row ID":"1"');
    expect(Buffer.byteLength(String(message.value))).toBeLessThan(MAX_MESSAGE_BYTES);
  });
});

describe("dueAt", () => {
  test("schedules message i at start + i / rate seconds", () => {
    expect(dueAt(1000, 0, 2)).toBe(1000);
    expect(dueAt(1000, 1, 2)).toBe(1500);
    expect(dueAt(1000, 10, 2)).toBe(6000);
    expect(dueAt(0, 3, 0.5)).toBe(6000);
  });

  test("does not drift over a long run", () => {
    const start = 123_456.789;
    for (const rate of [1, 3, 7, 980]) {
      for (let i = 0; i <= 100_000; i += 997) {
        expect(dueAt(start, i, rate)).toBe(start + (i * 1000) / rate);
      }
      expect(dueAt(0, 3000 * rate, rate)).toBe(3_000_000);
    }
  });

  test("sends everything at once at rate Infinity", () => {
    expect([0, 1, 1_000_000].map((i) => dueAt(42, i, Infinity))).toEqual([42, 42, 42]);
  });
});

describe("acknowledgement", () => {
  test("counts only what each partition's answer says it acknowledged", () => {
    const answer = [
      { topicName: "t", partition: 0, errorCode: 0, messageCount: 120 },
      { topicName: "t", partition: 1, errorCode: 0, messageCount: 80 },
    ];
    expect(acknowledgedCount(answer)).toBe(200);
    // An answer without counts (kafkajs' own sendMessages) acknowledges nothing the producer can count.
    expect(acknowledgedCount([{ topicName: "t", partition: 0, errorCode: 0 }])).toBe(0);
  });

  test("a send that cannot go on names the first line not acknowledged and how to resume there", () => {
    const messages = [{ key: "s.csv:41", value: "{}", headers: { source_file: "s.csv", source_line: "42" } }];
    const error = stoppedAt(messages, "data/s.csv", new Error("Kafka has not answered for 120s"));
    expect(error.message).toBe(
      "Kafka has not answered for 120s\ndata/s.csv: line 42 is the first line not acknowledged by Kafka; every line before it " +
        "is in the topic. Run again with --from-line 42 to resume (or send the whole file again: rows already loaded count as duplicates).",
    );
  });
});

describe("recordBytes", () => {
  test("counts the key and the headers as well as the value, so a long source path cannot overfill a send", () => {
    const source = `/srv/${"deep/".repeat(40)}sales.csv`;
    const message = { key: `${source}:123`, value: "x".repeat(300), headers: { source_file: source, source_line: "124" } };
    const bytes = recordBytes(message);
    expect(bytes).toBeGreaterThan(300 + 2 * source.length);
    // The default send of 2,000 such rows would not fit under MAX_SEND_BYTES counting values alone.
    expect(2000 * 300).toBeLessThan(MAX_SEND_BYTES);
    expect(2000 * bytes).toBeGreaterThan(MAX_SEND_BYTES);
  });
});
