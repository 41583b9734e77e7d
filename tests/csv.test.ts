// Unit tests for scripts/lib/csv.ts: streaming source files record by record, and the batch file round trip.

import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { parse } from "csv-parse/sync";
import { stringify } from "csv-stringify/sync";
import { type CsvRecord, type Encoding, KEPT_CHARS, MAX_RECORD_CHARS, parseCsv, parseCsvWithCsvParse, parsePlainCsv, readCsv, splitSimple, writeCsv, writeCsvWithCsvStringify } from "../scripts/lib/csv.ts";
import { scratchFiles } from "./helpers.ts";

const scratch = scratchFiles("csv-test-");
afterAll(() => scratch.remove());
const file = scratch.file;
const dir = scratch.dir;

async function read(content: string | Uint8Array, encoding: Encoding = "utf-8"): Promise<CsvRecord[]> {
  const records: CsvRecord[] = [];
  for await (const record of readCsv(file(content), encoding)) records.push(record);
  return records;
}

function row(line: number, fields: string[], lines = 1): CsvRecord {
  return { kind: "row", line, lines, fields };
}

describe("readCsv", () => {
  test("yields the header first, then each row with its line number", async () => {
    expect(await read("a,b,c\n1,2,3\n4,5,6\n")).toEqual([
      row(1, ["a", "b", "c"]),
      row(2, ["1", "2", "3"]),
      row(3, ["4", "5", "6"]),
    ]);
  });

  test("reads a last line without a newline", async () => {
    expect(await read("a,b\n1,2")).toEqual([row(1, ["a", "b"]), row(2, ["1", "2"])]);
  });

  test("removes the CR of CRLF line ends", async () => {
    expect(await read("a,b\r\n1,2\r\n\"x\",\"y\"\r\n")).toEqual([
      row(1, ["a", "b"]),
      row(2, ["1", "2"]),
      row(3, ["x", "y"]),
    ]);
  });

  test("keeps a UTF-8 BOM out of the first header name", async () => {
    const records = await read("\uFEFFRow ID,Sales\n1,2.5\n");
    expect(records).toEqual([row(1, ["Row ID", "Sales"]), row(2, ["1", "2.5"])]);
  });

  test("decodes Windows-1252 bytes", async () => {
    // "Eldon “Base”" with a no-break space, the way the Kaggle file spells product names.
    const bytes = new Uint8Array([
      ...Buffer.from("Name,Price\r\n"),
      ...Buffer.from("Eldon "),
      0x93,
      ...Buffer.from("Base"),
      0x94,
      0xa0,
      0xe9,
      ...Buffer.from(",5\r\n"),
    ]);
    expect(await read(bytes, "windows-1252")).toEqual([row(1, ["Name", "Price"]), row(2, ["Eldon \u201CBase\u201D\u00A0é", "5"])]);
  });

  test("fails naming the file and line when the bytes are not UTF-8", async () => {
    const path = file(new Uint8Array([...Buffer.from("a,b\n1,"), 0x93, ...Buffer.from("\n")]));
    const records = async () => {
      for await (const _ of readCsv(path, "utf-8")) {
        // reading is the test
      }
    };
    await expect(records()).rejects.toThrow(`${path}: line 2: not valid utf-8`);
  });

  test("turns a wrong field count into a broken record on its line", async () => {
    expect(await read("a,b,c\n1,2,3\n4,5\n6,7,8,9\n10,11,12\n")).toEqual([
      row(1, ["a", "b", "c"]),
      row(2, ["1", "2", "3"]),
      { kind: "broken", line: 3, lines: 1, raw: "4,5", reason: "expected 3 fields but got 2" },
      { kind: "broken", line: 4, lines: 1, raw: "6,7,8,9", reason: "expected 3 fields but got 4" },
      row(5, ["10", "11", "12"]),
    ]);
  });

  test("reads the line after broken quoting as a row again", async () => {
    const records = await read('a,b,c\n1,2,3\n4,"x"y,6\n7,8,9\n');
    expect(records.map((r) => [r.kind, r.line])).toEqual([
      ["row", 1],
      ["row", 2],
      ["broken", 3],
      ["row", 4],
    ]);
    const broken = records[2];
    expect(broken?.kind === "broken" && broken.raw).toBe('4,"x"y,6');
    expect(broken?.kind === "broken" && broken.reason).toMatch(/quote/i);
    expect(records[3]).toEqual(row(4, ["7", "8", "9"]));
  });

  test("does not let an unterminated quote swallow the lines after it", async () => {
    const records = await read('a,b,c\n1,2,3\n4,"x,6\n7,8,9\n10,11,12\n');
    expect(records).toEqual([
      row(1, ["a", "b", "c"]),
      row(2, ["1", "2", "3"]),
      {
        kind: "broken",
        line: 3,
        lines: 1,
        raw: '4,"x,6',
        reason: "a quoted field is not closed before the end of the file",
      },
      row(4, ["7", "8", "9"]),
      row(5, ["10", "11", "12"]),
    ]);
  });

  test("reads a quote closed lines later as one record when the lines parse together", async () => {
    // RFC 4180 allows it: the second field runs from line 2 to line 4.
    expect(await read('a,b,c\n4,"x,6\n7,8,9\n10,y",12\n13,14,15\n')).toEqual([
      row(1, ["a", "b", "c"]),
      row(2, ["4", "x,6\n7,8,9\n10,y", "12"], 3),
      row(5, ["13", "14", "15"]),
    ]);
  });

  test("rereads the lines after a stray quote when the record it opens does not parse", async () => {
    const records = await read('a,b,c\n4,"x,6\n7,8,9\n10,"y,12\n13,14,15\n');
    expect(records.map((r) => [r.kind, r.line])).toEqual([
      ["row", 1],
      ["broken", 2],
      ["row", 3],
      ["broken", 4],
      ["row", 5],
    ]);
    expect(records[1]).toMatchObject({ kind: "broken", line: 2, lines: 1, raw: '4,"x,6' });
    expect(records[2]).toEqual(row(3, ["7", "8", "9"]));
    expect(records[3]).toEqual({
      kind: "broken",
      line: 4,
      lines: 1,
      raw: '10,"y,12',
      reason: "a quoted field is not closed before the end of the file",
    });
    expect(records[4]).toEqual(row(5, ["13", "14", "15"]));
  });

  test("rereads the lines after a stray quote when the record it opens has the wrong field count", async () => {
    // Together the lines parse as a,"b\nc,d",e... with 4 fields; the header has 3.
    const records = await read('a,b,c\n1,"x,2\n3,4",5,6\n7,8,9\n');
    expect(records[1]).toEqual({
      kind: "broken",
      line: 2,
      lines: 1,
      raw: '1,"x,2',
      reason: "expected 3 fields but got 4 (record starting here)",
    });
    expect(records.slice(2).map((r) => [r.kind, r.line])).toEqual([
      ["broken", 3],
      ["row", 4],
    ]);
    expect(records[3]).toEqual(row(4, ["7", "8", "9"]));
  });

  test("gives up on an open quote after MAX_RECORD_LINES lines and rereads them", async () => {
    const body = Array.from({ length: 150 }, (_, i) => `${i},b,c`).join("\n");
    const records = await read(`a,b,c\n1,"x,3\n${body}\n`);
    expect(records[1]).toEqual({
      kind: "broken",
      line: 2,
      lines: 1,
      raw: '1,"x,3',
      reason: "a quoted field is not closed within 100 lines",
    });
    expect(records.slice(2)).toEqual(Array.from({ length: 150 }, (_, i) => row(i + 3, [String(i), "b", "c"])));
  });

  test("reads a quoted field with a newline and a comma as one row over two lines", async () => {
    expect(await read('a,b,c\n1,"Bush, Somerset\nCollection",3\n4,5,6\n')).toEqual([
      row(1, ["a", "b", "c"]),
      row(2, ["1", "Bush, Somerset\nCollection", "3"], 2),
      row(4, ["4", "5", "6"]),
    ]);
  });

  test.each([
    ["LF", "\n"],
    ["CRLF", "\r\n"],
    ["CR (old Mac)", "\r"],
  ])("reads %s line ends the same way", async (_, end) => {
    const text = ["a,b", "1,2", '"x",3', "4,5"].join(end) + end;
    expect(await read(text)).toEqual([row(1, ["a", "b"]), row(2, ["1", "2"]), row(3, ["x", "3"]), row(4, ["4", "5"])]);
  });

  test("reads mixed line ends, a doubled CR before LF, and a CR at the very end", async () => {
    expect(await read("a,b\r\n1,2\n3,4\r5,6\r\r\n7,8\r")).toEqual([
      row(1, ["a", "b"]),
      row(2, ["1", "2"]),
      row(3, ["3", "4"]),
      row(4, ["5", "6"]),
      row(6, ["7", "8"]),
    ]);
  });

  test("keeps a CRLF split across two reads as one line end", async () => {
    // 65,536 bytes is the size of one read: put the CR last in the first read and the LF first in the next.
    const first = `a,b\n1,${"x".repeat(65_536 - 7)}\r`;
    const records = await read(`${first}\n2,3\n`);
    expect(records.map((r) => [r.kind, r.line])).toEqual([
      ["row", 1],
      ["row", 2],
      ["row", 3],
    ]);
  });

  test("keeps a lone CR inside a quoted field, as written", async () => {
    expect(await read('a,b\n1,"x\ry"\n2,3\n')).toEqual([row(1, ["a", "b"]), row(2, ["1", "x\ry"], 2), row(4, ["2", "3"])]);
  });

  test("reads a CR inside a quoted header field as part of its name", async () => {
    expect((await read('a,"Pro\rfit"\r\n1,2\r\n'))[0]).toEqual(row(1, ["a", "Pro\rfit"], 2));
  });

  test("keeps the CRLF inside a quoted field of a CRLF file", async () => {
    expect(await read('a,b\r\n1,"x\r\ny"\r\n2,3\r\n')).toEqual([
      row(1, ["a", "b"]),
      row(2, ["1", "x\r\ny"], 2),
      row(4, ["2", "3"]),
    ]);
  });

  test("reads escaped quotes inside quoted fields", async () => {
    expect(await read('a,b\n"say ""hi""",2\n')).toEqual([row(1, ["a", "b"]), row(2, ['say "hi"', "2"])]);
  });

  test("skips empty and blank lines, keeping the line numbers of the others", async () => {
    expect(await read("\na,b\n\n1,2\n   \r\n\n3,4\n\n")).toEqual([
      row(2, ["a", "b"]),
      row(4, ["1", "2"]),
      row(7, ["3", "4"]),
    ]);
  });

  test("keeps an empty line inside a quoted field", async () => {
    expect(await read('a,b\n1,"x\n\ny"\n2,3\n')).toEqual([
      row(1, ["a", "b"]),
      row(2, ["1", "x\n\ny"], 3),
      row(5, ["2", "3"]),
    ]);
  });

  test("turns an over-long line into a broken record that keeps a prefix", async () => {
    const long = `1,${"x".repeat(MAX_RECORD_CHARS + 10)}`;
    const records = await read(`a,b\n${long}\n2,3\n`);
    expect(records).toHaveLength(3);
    expect(records[1]).toEqual({
      kind: "broken",
      line: 2,
      lines: 1,
      raw: long.slice(0, KEPT_CHARS),
      reason: `line is ${long.length} characters long, more than ${MAX_RECORD_CHARS}; the first ${KEPT_CHARS} are kept`,
    });
    expect(records[2]).toEqual(row(3, ["2", "3"]));
  });

  test("measures an over-long line that spans several reads and keeps the lines after it", async () => {
    const long = `1,"${"z".repeat(1_000_000)}"`;
    const records = await read(`a,b\n${long}\n2,3\n4,5\n`);
    expect(records).toEqual([
      row(1, ["a", "b"]),
      {
        kind: "broken",
        line: 2,
        lines: 1,
        raw: long.slice(0, KEPT_CHARS),
        reason: `line is ${long.length} characters long, more than ${MAX_RECORD_CHARS}; the first ${KEPT_CHARS} are kept`,
      },
      row(3, ["2", "3"]),
      row(4, ["4", "5"]),
    ]);
  });

  test("turns an over-long last line without a newline into a broken record", async () => {
    const long = "9,".padEnd(MAX_RECORD_CHARS * 2, "w");
    const records = await read(`a,b\n1,2\n${long}`);
    expect(records.map((r) => [r.kind, r.line])).toEqual([
      ["row", 1],
      ["row", 2],
      ["broken", 3],
    ]);
    expect(records[2]).toMatchObject({
      raw: long.slice(0, KEPT_CHARS),
      reason: expect.stringContaining(`line is ${long.length} characters long`),
    });
  });

  test("reads a long line just under the limit as a row", async () => {
    const value = "y".repeat(MAX_RECORD_CHARS - 10);
    const records = await read(`a,b\n1,${value}\n2,3\n`);
    expect(records).toEqual([row(1, ["a", "b"]), row(2, ["1", value]), row(3, ["2", "3"])]);
  });

  test("reads many more records than one parse chunk with their line numbers", async () => {
    const lines = Array.from({ length: 1000 }, (_, i) => `${i + 1},"name ${i + 1}",${(i * 1.5).toFixed(1)}`);
    const records = await read(`id,name,value\r\n${lines.join("\r\n")}\r\n`);
    expect(records).toEqual([
      row(1, ["id", "name", "value"]),
      ...Array.from({ length: 1000 }, (_, i) => row(i + 2, [String(i + 1), `name ${i + 1}`, (i * 1.5).toFixed(1)])),
    ]);
  });

  test("keeps rows around a broken record in a large chunk", async () => {
    const lines = Array.from({ length: 600 }, (_, i) => (i === 300 ? '7,"x"y,9' : i === 450 ? "1,2" : `${i},b,c`));
    const records = await read(`a,b,c\n${lines.join("\n")}\n`);
    expect(records).toHaveLength(601);
    expect(records.filter((r) => r.kind === "broken").map((r) => r.line)).toEqual([302, 452]);
    expect(records[300]).toEqual(row(301, ["299", "b", "c"]));
    expect(records[302]).toEqual(row(303, ["301", "b", "c"]));
    expect(records[600]).toEqual(row(601, ["599", "b", "c"]));
  });

  test("fails naming the file and line 1 when the header cannot be read", async () => {
    const path = file('a,"b,c\n1,2,3\n');
    const records = async () => {
      for await (const _ of readCsv(path, "utf-8")) {
        // reading is the test
      }
    };
    await expect(records()).rejects.toThrow(`${path}: line 1: cannot read the header`);
  });

  test("reads a file holding only a header", async () => {
    expect(await read("a,b\n")).toEqual([row(1, ["a", "b"])]);
  });

  test("yields nothing for an empty file", async () => {
    expect(await read("")).toEqual([]);
  });
});

describe("writeCsv and parseCsv", () => {
  test("round-trip quotes, commas, newlines and empty fields", () => {
    const rows = [
      { a: 'say "hi"', b: "x,y", c: "line 1\nline 2" },
      { a: "plain", b: null, c: "" },
      { a: " padded ", b: "5", c: "é “q”" },
    ];
    const parsed = parseCsv(writeCsv(rows, ["a", "b", "c"]), "batch.csv");
    expect(parsed.columns).toEqual(["a", "b", "c"]);
    expect(parsed.rows.map((r) => r.values)).toEqual([
      { a: 'say "hi"', b: "x,y", c: "line 1\nline 2" },
      { a: "plain", b: "", c: "" },
      { a: " padded ", b: "5", c: "é “q”" },
    ]);
  });

  test("writes the columns in the order given, with a header line and LF line ends", () => {
    expect(writeCsv([{ b: "2", a: "1", z: "ignored" }], ["a", "b"])).toBe("a,b\n1,2\n");
  });

  test("writes null and a missing value as an empty field", () => {
    expect(writeCsv([{ a: null }, {}], ["a", "b"])).toBe("a,b\n,\n,\n");
  });

  test("quotes every field and column name that holds a CR, LF, quote or comma, and reads them back", () => {
    const rows = [{ "Pro\rfit": "1\r", b: "x\ny", c: "q\"", d: "a,b", e: "\r\n" }];
    const columns = ["Pro\rfit", "b", "c", "d", "e"];
    const text = writeCsv(rows, columns);
    expect(text).toBe('"Pro\rfit",b,c,d,e\n"1\r","x\ny","q""","a,b","\r\n"\n');
    const parsed = parseCsv(text, "batch.csv");
    expect(parsed.columns).toEqual(columns);
    expect(parsed.rows.map((r) => r.values)).toEqual(rows);
  });

  test("reads batch files with CRLF or CR line ends too", () => {
    for (const end of ["\r\n", "\r"]) {
      expect(parseCsv(`a,b${end}1,2${end}3,4${end}`, "b.csv").rows.map((r) => r.values)).toEqual([
        { a: "1", b: "2" },
        { a: "3", b: "4" },
      ]);
    }
  });

  test("writes numbers as their digits", () => {
    expect(writeCsv([{ a: 5, b: -0.5 }], ["a", "b"])).toBe("a,b\n5,-0.5\n");
  });

  test("writes exactly what csv-stringify writes, for random fields, numbers, nulls, headers and no rows", () => {
    let seed = 7;
    const next = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32);
    const alphabet = ["x", ",", '"', "\n", "\r", " ", "é", "😀", "", "12.5", "\t", "'", "=", "#"];
    const value = () => {
      const pick = next();
      if (pick < 0.1) return null;
      if (pick < 0.15) return undefined;
      if (pick < 0.25) return Math.round((next() - 0.5) * 1e6) / 100;
      return Array.from({ length: Math.floor(next() * 5) }, () => alphabet[Math.floor(next() * alphabet.length)]).join("");
    };
    for (let n = 0; n < 3_000; n++) {
      const columns = Array.from({ length: 1 + Math.floor(next() * 4) }, (_, i) => (next() < 0.2 ? `c${i}${alphabet[Math.floor(next() * 5)]}` : `c${i}`));
      if (new Set(columns).size !== columns.length) continue;
      const rows = Array.from({ length: Math.floor(next() * 5) }, () => Object.fromEntries(columns.map((c) => [c, value()])));
      const header = next() < 0.8;
      expect(writeCsv(rows, columns, header)).toBe(writeCsvWithCsvStringify(rows, columns, header));
    }
  });

  test("numbers one-line rows by their line", () => {
    const parsed = parseCsv("a,b\n1,2\n3,4\n", "batch.csv");
    expect(parsed.rows).toEqual([
      { line: 2, values: { a: "1", b: "2" } },
      { line: 3, values: { a: "3", b: "4" } },
    ]);
  });

  test("numbers a multi-line row by the line it starts on, as readCsv does", () => {
    const parsed = parseCsv('a,b\n1,"x\ny"\n3,4\n', "batch.csv");
    expect(parsed.rows.map((r) => r.line)).toEqual([2, 4]);
  });

  test("names the file and the line when a record has the wrong field count", () => {
    expect(() => parseCsv("a,b,c\n1,2,3\n4,5\n", "batches/t_p0.csv")).toThrow(/^batches\/t_p0\.csv: .*line 3/);
  });

  test("names the file when the quoting is broken", () => {
    expect(() => parseCsv('a,b\n1,"x\n', "batches/t_p0.csv")).toThrow(/^batches\/t_p0\.csv: /);
  });

  test("refuses an empty file", () => {
    expect(() => parseCsv("", "b.csv")).toThrow("b.csv: the file is empty (no header line)");
  });

  test("refuses a header that repeats a column name", () => {
    expect(() => parseCsv("a,b,a\n1,2,3\n", "b.csv")).toThrow("b.csv: the header repeats a column name");
  });
});

describe("splitSimple", () => {
  /** A deterministic pseudo-random sequence, so a failure names a case that can be run again. */
  function random(seed: number): () => number {
    return () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32);
  }
  const csvParse = (text: string): string[] | string => {
    try {
      const records = parse(text, { relax_column_count: true, record_delimiter: "\n" }) as string[][];
      return records.length === 1 ? records[0]! : `records: ${records.length}`;
    } catch (error) {
      return (error as Error).message;
    }
  };

  test("agrees with csv-parse on every line it accepts, and declines the lines csv-parse refuses", () => {
    const next = random(42);
    const alphabet = ["a", "b", ",", '"', " ", "\r", "é", "字", "\t", ";"];
    let accepted = 0;
    for (let n = 0; n < 20_000; n++) {
      const length = 1 + Math.floor(next() * 24);
      let text = "";
      for (let i = 0; i < length; i++) text += alphabet[Math.floor(next() * alphabet.length)];
      const ours = splitSimple(text);
      const theirs = csvParse(text);
      if (ours !== undefined) {
        accepted++;
        expect({ text, fields: ours }).toEqual({ text, fields: theirs as string[] });
      } else if (Array.isArray(theirs)) {
        // declined: allowed, csv-parse decides; but only for text that is not plain RFC 4180
        expect(text).toContain('"');
      }
    }
    expect(accepted).toBeGreaterThan(2_000);
  });

  test("reads back every line csv-stringify writes from random fields", () => {
    const next = random(7);
    const alphabet = ["x", ",", '"', " ", "é", "", "1.5"];
    for (let n = 0; n < 5_000; n++) {
      const fields = Array.from({ length: 1 + Math.floor(next() * 8) }, () =>
        Array.from({ length: Math.floor(next() * 5) }, () => alphabet[Math.floor(next() * alphabet.length)]).join(""),
      );
      const line = stringify([fields], { record_delimiter: "\n" }).replace(/\n$/, "");
      expect(splitSimple(line)).toEqual(fields);
    }
  });

  test("declines what is not plain CSV", () => {
    expect(splitSimple('a"b,c')).toBeUndefined();
    expect(splitSimple('"a"b,c')).toBeUndefined();
    expect(splitSimple('"a,b')).toBeUndefined();
    expect(splitSimple(' "a",b')).toBeUndefined();
    expect(splitSimple('"a""b",,"",c,')).toEqual(['a"b', "", "", "c", ""]);
  });
});

describe("parseCsv's fast path", () => {
  function random(seed: number): () => number {
    return () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32);
  }

  test("reads every batch file writeCsv writes exactly as csv-parse does, line numbers included", () => {
    const next = random(11);
    const alphabet = ["x", ",", '"', "\n", " ", "é", "", "12.5", "\r"];
    let fast = 0;
    for (let n = 0; n < 2_000; n++) {
      const columns = Array.from({ length: 1 + Math.floor(next() * 5) }, (_, i) => `c${i}`);
      const rows = Array.from({ length: Math.floor(next() * 6) }, () =>
        Object.fromEntries(columns.map((c) => [c, Array.from({ length: Math.floor(next() * 4) }, () => alphabet[Math.floor(next() * alphabet.length)]).join("")])),
      );
      const text = writeCsv(rows, columns);
      const plain = parsePlainCsv(text, "f.csv");
      if (plain) fast++;
      else expect(text).toMatch(/\r|\n\n/); // a CR, or an empty line (one empty column)
      expect(parseCsv(text, "f.csv")).toEqual(parseCsvWithCsvParse(text, "f.csv"));
    }
    expect(fast).toBeGreaterThan(500);
  });

  test("finds a quoted field with a line end after thousands of lines without quotes", () => {
    const text = `a,b\n${Array.from({ length: 5_000 }, (_, i) => `${i},x\n`).join("")}"1\n2","y""z"\n3,w\n`;
    const parsed = parsePlainCsv(text, "f.csv");
    expect(parsed).toEqual(parseCsvWithCsvParse(text, "f.csv"));
    expect(parsed?.rows.slice(-2)).toEqual([
      { line: 5_002, values: { a: "1\n2", b: 'y"z' } },
      { line: 5_004, values: { a: "3", b: "w" } },
    ]);
  });

  test("leaves to csv-parse what is not plain, with csv-parse's verdict", () => {
    for (const text of ["a,b\r\n1,2\r\n", "a,b\n\n1,2\n", "a,b\n1,2,3\n", 'a,b\n1,x"y\n', 'a,b\n"1,2\n']) {
      expect(parsePlainCsv(text, "f.csv")).toBeUndefined();
      let slow: unknown;
      try {
        slow = parseCsvWithCsvParse(text, "f.csv");
      } catch (error) {
        slow = (error as Error).message;
      }
      let ours: unknown;
      try {
        ours = parseCsv(text, "f.csv");
      } catch (error) {
        ours = (error as Error).message;
      }
      expect(ours).toEqual(slow);
    }
  });
});
