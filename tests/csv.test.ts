// Unit tests for scripts/lib/csv.ts: streaming source files record by record, and the batch file round trip.

import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  type CsvRecord,
  detectEncoding,
  type Encoding,
  KEPT_CHARS,
  MAX_RECORD_CHARS,
  parseCsv,
  readCsv,
  writeCsv,
} from "../scripts/lib/csv.ts";

const dir = mkdtempSync(join(tmpdir(), "csv-test-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let files = 0;
/** Writes `content` (text as UTF-8, or raw bytes) to a fresh file in the temp dir. */
function file(content: string | Uint8Array): string {
  const path = join(dir, `f${++files}.csv`);
  writeFileSync(path, content);
  return path;
}

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

describe("detectEncoding", () => {
  test("reports UTF-8 without a BOM and counts lines", async () => {
    expect(await detectEncoding(file("a,b\n1,é\n2,“x”\n"))).toEqual({ encoding: "utf-8", bom: false, lines: 3 });
  });

  test("reports a UTF-8 BOM", async () => {
    expect(await detectEncoding(file("\uFEFFa,b\r\n1,2\r\n"))).toEqual({ encoding: "utf-8", bom: true, lines: 2 });
  });

  test("falls back to Windows-1252 when the bytes are not UTF-8", async () => {
    const bytes = new Uint8Array([...Buffer.from("a,b\r\n1,"), 0x93, 0x78, 0x94, ...Buffer.from("\r\n2,"), 0xe9]);
    expect(await detectEncoding(file(bytes))).toEqual({ encoding: "windows-1252", bom: false, lines: 2 });
  });

  test("falls back to Windows-1252 when the file ends inside a UTF-8 sequence", async () => {
    const bytes = new Uint8Array([...Buffer.from("a\n"), 0xe2, 0x80]);
    expect((await detectEncoding(file(bytes))).encoding).toBe("windows-1252");
  });

  test("counts every newline of a file larger than one read", async () => {
    const text = "a,b\n" + "1,2\n".repeat(200_000);
    expect(await detectEncoding(file(text))).toEqual({ encoding: "utf-8", bom: false, lines: 200_001 });
  });

  test("reports an empty file as UTF-8 with no lines", async () => {
    expect(await detectEncoding(file(""))).toEqual({ encoding: "utf-8", bom: false, lines: 0 });
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

  test("writes numbers as their digits", () => {
    expect(writeCsv([{ a: 5, b: -0.5 }], ["a", "b"])).toBe("a,b\n5,-0.5\n");
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
