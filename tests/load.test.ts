// Unit tests for the pure parts of the loader: transform (clean, reject, dedupe; scripts/lib/load/read.ts),
// COPY text (read.ts too), latest-row selection (scripts/lib/load/transaction.ts), grouping files (scripts/load.ts) and
// telling a lost connection from a problem with the data (scripts/lib/db.ts).

import { describe, expect, spyOn, test } from "bun:test";
import { mkdtempSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gapFile, META_COLUMNS } from "../scripts/lib/batch.ts";
import { writeCsv } from "../scripts/lib/csv.ts";
import { isConnectionError, isDataError, isRetryable } from "../scripts/lib/db.ts";
import {
  BadBatchFileError,
  checkFile,
  chunksOf,
  copyLine,
  FileChangedError,
  copyValue,
  MAX_SOURCE_NAME_BYTES,
  ORDER_COLUMNS,
  type OrderRow,
  prepareFile,
  readPieces,
  rowHash,
  sourceName,
  transform,
} from "../scripts/lib/load/read.ts";
import { isLater, latestBy } from "../scripts/lib/load/transaction.ts";
import { FolderChanges } from "../scripts/lib/load/changes.ts";
import { stampOf } from "../scripts/lib/load/retention.ts";
import { waitFor } from "./helpers.ts";
import { groupFiles, LoadedFiles, pendingFiles } from "../scripts/load.ts";

const SOURCE_COLUMNS = [
  "Row ID",
  "Order ID",
  "Order Date",
  "Ship Date",
  "Customer ID",
  "Customer Name",
  "Country",
  "Postal Code",
  "Product ID",
  "Sales",
  "Quantity",
];
const COLUMNS = [...SOURCE_COLUMNS, ...META_COLUMNS];
const BATCH = "sales_topic_p0_000000000005-000000000009_0123456789ab.csv";

function source(overrides: Record<string, string> = {}): Record<string, string> {
  return {
    "Row ID": "1",
    "Order ID": "CA-2016-152156",
    "Order Date": "11/8/2016",
    "Ship Date": "11/11/2016",
    "Customer ID": "CG-12520",
    "Customer Name": "Claire Gute",
    Country: "United States",
    "Postal Code": "5408",
    "Product ID": "FUR-BO-10001798",
    Sales: "261.96",
    Quantity: "2",
    ...overrides,
  };
}

function meta(overrides: Record<string, string> = {}): Record<string, string> {
  return {
    _source_file: "Sample-Superstore.csv",
    _source_line: "2",
    _source_lines: "",
    _topic: "sales_topic",
    _partition: "0",
    _offset: "5",
    _timestamp: "2023-11-14T22:13:20.000Z",
    _error: "",
    _raw: "",
    ...overrides,
  };
}

/** A batch file as parseCsv returns it: rows on lines 2, 3, ... */
function batch(rows: Record<string, string>[], columns: readonly string[] = COLUMNS) {
  return { columns, rows: rows.map((values, i) => ({ line: i + 2, values })) };
}

const CLEAN_ORDER = {
  order_id: "CA-2016-152156",
  order_date: "2016-11-08",
  ship_date: "2016-11-11",
  ship_mode: null,
  order_priority: null,
  customer_id: "CG-12520",
  customer_name: "Claire Gute",
  segment: null,
  country: "United States",
  city: null,
  state: null,
  postal_code: "05408",
  region: null,
  market: null,
  product_id: "FUR-BO-10001798",
  category: null,
  sub_category: null,
  product_name: null,
  sales: "261.96",
  quantity: 2,
  discount: null,
  profit: null,
  shipping_cost: null,
};

describe("transform", () => {
  test("turns a good row into an order candidate keyed by its source identity", () => {
    const result = transform(batch([{ ...source(), ...meta() }]), BATCH);
    expect(result).toEqual({
      candidates: [
        {
          key: "Sample-Superstore.csv\u00001",
          lines: 1,
          fields: source(),
          row: {
            ...CLEAN_ORDER,
            extra: null,
            warnings: null,
            row_hash: rowHash(CLEAN_ORDER, null),
            source_file: "Sample-Superstore.csv",
            source_row_id: 1,
            source_line: 2,
            kafka_topic: "sales_topic",
            kafka_partition: 0,
            kafka_offset: "5",
            batch_file: BATCH,
          },
        },
      ],
      rejected: [],
      duplicates: 0,
    });
  });

  test("reads a field spelled two ways in one batch file (two sources on one topic) from whichever column the row fills", () => {
    const columns = [...SOURCE_COLUMNS, "Sub-Category", "Sub Category", "row_id", ...META_COLUMNS];
    const row = (id: string, first: string, second: string, extra: Record<string, string> = {}) => ({
      ...source({ "Row ID": "", row_id: id, "Sub-Category": first, "Sub Category": second, ...extra }),
      ...meta({ _source_line: String(Number(id) + 1), _offset: id }),
    });
    const result = transform(batch([row("1", "Chairs", ""), { ...row("2", "", "Tables"), "Row ID": "2" }, row("3", "Chairs", "Tables")], columns), BATCH);
    expect(result.candidates.map((c) => [c.row.source_row_id, c.row.sub_category, c.row.extra])).toEqual([
      [1, "Chairs", null],
      [2, "Tables", null],
    ]);
    expect(result.rejected.map((r) => [r.source_row_id, r.reason])).toEqual([
      [3, 'columns "Sub-Category" and "Sub Category" mean one field and hold different values'],
    ]);
    // As received: every column, spelled as it was.
    expect(result.rejected[0]!.fields).toMatchObject({ "Sub-Category": "Chairs", "Sub Category": "Tables" });
  });

  test("gives every candidate a value for every orders column", () => {
    const [candidate] = transform(batch([{ ...source(), ...meta() }]), BATCH).candidates;
    expect(Object.keys(candidate?.row ?? {}).sort()).toEqual([...ORDER_COLUMNS].sort());
  });

  test("takes the source line from _source_line, not from the batch file line", () => {
    const parsed = batch([
      { ...source({ "Row ID": "41" }), ...meta({ _source_line: "42", _offset: "7" }) },
      { ...source({ "Row ID": "43" }), ...meta({ _source_line: "44", _offset: "8" }) },
    ]);
    const rows = transform(parsed, BATCH).candidates.map((c) => [c.row.source_row_id, c.row.source_line, c.row.kafka_offset]);
    expect(rows).toEqual([
      [41, 42, "7"],
      [43, 44, "8"],
    ]);
  });

  test("keeps extra source columns, trimmed, for orders.extra", () => {
    const parsed = batch([{ ...source(), Coupon: " SAVE10 ", ...meta() }], [...SOURCE_COLUMNS, "Coupon", ...META_COLUMNS]);
    expect(transform(parsed, BATCH).candidates[0]?.row.extra).toEqual({ Coupon: "SAVE10" });
  });

  test("keeps a source column the consumer renamed away from a meta name as an extra", () => {
    const parsed = batch([{ ...source(), source_offset: "x", ...meta() }], [...SOURCE_COLUMNS, "source_offset", ...META_COLUMNS]);
    expect(transform(parsed, BATCH).candidates[0]?.row.extra).toEqual({ source_offset: "x" });
  });

  test("keeps the fields as received, without meta columns, on each candidate", () => {
    const values = source({ "Customer Name": "  Claire Gute " });
    const [candidate] = transform(batch([{ ...values, ...meta() }]), BATCH).candidates;
    expect(candidate?.fields).toEqual(values);
  });

  test("rejects a record that could not be split, with the parse error in the reason", () => {
    const empty = Object.fromEntries(SOURCE_COLUMNS.map((c) => [c, ""]));
    const parsed = batch([
      { ...empty, ...meta({ _source_line: "7", _error: "expected 21 fields but got 3", _raw: "1,2,3" }) },
    ]);
    expect(transform(parsed, BATCH)).toEqual({
      candidates: [],
      rejected: [
        {
          source_file: "Sample-Superstore.csv",
          source_line: 7,
          source_lines: 1,
          source_row_id: null,
          reason: "line could not be split into fields: expected 21 fields but got 3",
          fields: null,
          raw_text: "1,2,3",
          kafka_topic: "sales_topic",
          kafka_partition: 0,
          kafka_offset: "5",
          batch_file: BATCH,
        },
      ],
      duplicates: 0,
    });
  });

  test("rejects a row with bad values, naming the field, and keeps its fields", () => {
    const values = source({ Sales: "1,234.5", "Order Date": "2/30/2016" });
    const parsed = batch([{ ...values, ...meta({ _source_line: "9", _source_lines: "2" }) }]);
    expect(transform(parsed, BATCH)).toEqual({
      candidates: [],
      rejected: [
        {
          source_file: "Sample-Superstore.csv",
          source_line: 9,
          source_lines: 2,
          source_row_id: 1,
          reason:
            'Order Date: "2/30/2016" is not a date (YYYY-MM-DD, M/D/YYYY or D-M-YYYY); ' +
            'Sales: "1,234.5" is not a decimal number such as 261.96 or -0.5',
          fields: values,
          raw_text: null,
          kafka_topic: "sales_topic",
          kafka_partition: 0,
          kafka_offset: "5",
          batch_file: BATCH,
        },
      ],
      duplicates: 0,
    });
  });

  test("counts the same Row ID with the same values as a duplicate, wherever it stands", () => {
    const row = { ...source(), ...meta() };
    const result = transform(batch([row, { ...row, _offset: "6" }]), BATCH);
    expect(result.candidates.map((c) => c.row.kafka_offset)).toEqual(["5"]);
    expect(result.rejected).toEqual([]);
    expect(result.duplicates).toBe(1);
  });

  test("counts a row repeated on another line with the same values as a duplicate", () => {
    const first = { ...source(), ...meta({ _source_line: "2" }) };
    const again = { ...source(), ...meta({ _source_line: "30", _offset: "6" }) };
    const result = transform(batch([first, again]), BATCH);
    expect([result.candidates.length, result.rejected.length, result.duplicates]).toEqual([1, 0, 1]);
  });

  test("counts a broken line delivered twice in one file as one rejection and one duplicate", () => {
    const broken = { ...source({ Sales: "x" }), ...meta() };
    const result = transform(batch([broken, { ...broken, _offset: "6" }]), BATCH);
    expect([result.candidates.length, result.rejected.length, result.duplicates]).toEqual([0, 1, 1]);
  });

  test("rejects the same Row ID with other values, naming both lines", () => {
    const first = { ...source(), ...meta({ _source_line: "2" }) };
    const second = { ...source({ "Order ID": "CA-2016-999999" }), ...meta({ _source_line: "30", _offset: "6" }) };
    const result = transform(batch([first, second]), BATCH);
    expect(result.candidates.map((c) => c.row.source_line)).toEqual([2]);
    expect(result.duplicates).toBe(0);
    expect(result.rejected).toEqual([
      {
        source_file: "Sample-Superstore.csv",
        source_line: 30,
        source_lines: 1,
        source_row_id: 1,
        reason: "Row ID 1 repeats line 2 of Sample-Superstore.csv with other values",
        fields: source({ "Order ID": "CA-2016-999999" }),
        raw_text: null,
        kafka_topic: "sales_topic",
        kafka_partition: 0,
        kafka_offset: "6",
        batch_file: BATCH,
      },
    ]);
  });

  test("keeps the same Row ID from two source files apart", () => {
    const a = { ...source(), ...meta({ _source_file: "a.csv" }) };
    const b = { ...source(), ...meta({ _source_file: "b.csv", _offset: "6" }) };
    const result = transform(batch([a, b]), BATCH);
    expect(result.candidates.map((c) => c.key)).toEqual(["a.csv\u00001", "b.csv\u00001"]);
    expect(result.duplicates).toBe(0);
  });

  test("names the batch file as the source of rows without meta columns", () => {
    const parsed = batch([source({ "Row ID": "10" }), source({ "Row ID": "11", Quantity: "x" })], SOURCE_COLUMNS);
    const result = transform(parsed, "hand-written.csv");
    expect(result.candidates.map((c) => c.row)).toEqual([
      {
        ...CLEAN_ORDER,
        extra: null,
        warnings: null,
        row_hash: rowHash(CLEAN_ORDER, null),
        source_file: "hand-written.csv",
        source_row_id: 10,
        source_line: 2,
        kafka_topic: null,
        kafka_partition: null,
        kafka_offset: null,
        batch_file: "hand-written.csv",
      },
    ]);
    expect(result.rejected).toMatchObject([
      {
        source_file: "hand-written.csv",
        source_line: 3,
        reason: 'Quantity: "x" is not a whole number',
        batch_file: "hand-written.csv",
      },
    ]);
  });

  test("uses the source line as the Row ID of a file without one", () => {
    const columns = SOURCE_COLUMNS.filter((c) => c !== "Row ID");
    const values = source();
    delete values["Row ID"];
    const result = transform(batch([values, values], columns), "plain.csv");
    expect(result.candidates.map((c) => [c.key, c.row.source_row_id, c.row.source_line])).toEqual([
      ["plain.csv\u00002", 2, 2],
      ["plain.csv\u00003", 3, 3],
    ]);
  });

  test("names the topic, the partition and a hash of the content, and uses the offset as line, when the source file is unknown", () => {
    const parsed = batch([{ ...source(), ...meta({ _source_file: "", _source_line: "", _partition: "2", _offset: "77" }) }]);
    const [candidate] = transform(parsed, BATCH).candidates;
    expect([candidate?.row.source_file, candidate?.row.source_line, candidate?.row.kafka_partition]).toEqual([
      expect.stringMatching(/^kafka:sales_topic\/2#[0-9a-f]{12}$/),
      77,
      2,
    ]);
  });

  test("gives a message without source headers at a repeated offset (a re-created topic) another name, unless its content is the same", () => {
    const at = (values: Record<string, string>) => ({ ...source(values), ...meta({ _source_file: "", _source_line: "", _offset: "5" }) });
    const names = [at({}), at({ Sales: "1.5" }), at({})].map((row) => transform(batch([row]), BATCH).candidates[0]?.row.source_file);
    expect(names[0]).not.toBe(names[1]);
    expect(names[2]).toBe(names[0]);
  });

  test("gives two rows with other values other fingerprints, and the same values the same one", () => {
    const [a, b, c] = transform(
      batch([
        { ...source({ "Row ID": "1" }), ...meta() },
        { ...source({ "Row ID": "2", Sales: "261.97" }), ...meta() },
        { ...source({ "Row ID": "3", "Order Date": " 11/8/2016 " }), ...meta() },
      ]),
      BATCH,
    ).candidates;
    expect(a!.row.row_hash).not.toBe(b!.row.row_hash);
    expect(a!.row.row_hash).toBe(c!.row.row_hash); // the same clean values, spelled differently
  });

  test("loads an implausible but possible row with its warning", () => {
    const [candidate] = transform(batch([{ ...source({ "Ship Date": "11/1/2016" }), ...meta() }]), BATCH).candidates;
    expect(candidate?.row.warnings).toEqual(["Ship Date: 2016-11-01 is before the order date 2016-11-08"]);
  });

  test("degrades meta columns PostgreSQL could not store to the batch file's own line", () => {
    const parsed = batch([{ ...source(), ...meta({ _source_line: "99999999999", _partition: "3000000000", _offset: "99999999999999999999" }) }]);
    const [candidate] = transform(parsed, BATCH).candidates;
    expect([candidate?.row.source_line, candidate?.row.kafka_partition, candidate?.row.kafka_offset]).toEqual([2, null, null]);
  });
});

describe("transform of rows with fields in _extra", () => {
  const columns = [...SOURCE_COLUMNS, "_extra", ...META_COLUMNS];
  const row = (extra: unknown, overrides: Record<string, string> = {}) => ({
    ...source(overrides),
    _extra: typeof extra === "string" ? extra : JSON.stringify(extra),
    ...meta(),
  });

  test("reads _extra's fields as the row's own: unknown ones into extra, Superstore ones as fields", () => {
    const [candidate] = transform(batch([row({ Notes: "fragile", Region: "South", Rating: null })], columns), BATCH).candidates;
    expect([candidate?.row.extra, candidate?.row.region]).toEqual([{ Notes: "fragile" }, "South"]);
    expect(candidate?.fields).toMatchObject({ Notes: "fragile", Region: "South" });
  });

  test("gives a row the same fingerprint whether a field came in a column or in _extra", () => {
    const inColumn = transform(batch([{ ...source(), Notes: "fragile", _extra: "", ...meta() }], [...SOURCE_COLUMNS, "Notes", "_extra", ...META_COLUMNS]), BATCH);
    const inExtra = transform(batch([row({ Notes: "fragile" })], columns), BATCH);
    expect(inExtra.candidates[0]?.row.row_hash).toBe(inColumn.candidates[0]!.row.row_hash);
  });

  test("rejects a row whose _extra is not a JSON object of text, or contradicts its columns", () => {
    const result = transform(
      batch([row("not json"), row([1, 2], { "Row ID": "2" }), row({ n: 1 }, { "Row ID": "3" }), row({ sales: "9.99" }, { "Row ID": "4" }), row({ "Row ID": "6" }, { "Row ID": "5" })], columns),
      BATCH,
    );
    expect(result.rejected.map((r) => r.reason)).toEqual([
      "_extra is not JSON",
      "_extra is not a JSON object",
      '_extra: "n" is not text',
      'columns "Sales" and "sales" mean one field and hold different values',
      'field "Row ID" is in a column and in _extra with different values',
    ]);
  });
});

describe("reading a batch file in chunks", () => {
  // 10 records; the 4th has a product name spanning two lines, the 8th repeats the 2nd's Row ID with other
  // values, the 9th repeats the 3rd exactly, and the 10th does not clean.
  const rows = Array.from({ length: 10 }, (_, i) => ({
    ...source({ "Row ID": String(i + 1), "Customer Name": i === 3 ? 'Claire "CG"\nGute' : `Claire ${i}` }),
    ...meta({ _source_line: String(i + 2), _offset: String(i) }),
  }));
  rows[7] = { ...rows[1]!, Sales: "1.50", _offset: "7" };
  rows[8] = { ...rows[2]!, _offset: "8" };
  rows[9] = { ...rows[9]!, "Order Date": "13/45/2016" };
  const content = writeCsv(rows, COLUMNS);

  async function inDir<T>(run: (dir: string, name: string) => Promise<T>): Promise<T> {
    const dir = mkdtempSync(join(tmpdir(), "chunks-test-"));
    try {
      writeFileSync(join(dir, "batch.csv"), content);
      return await run(dir, "batch.csv");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }

  test("cuts the text only between records, a piece at most N records, and loses no byte", async () => {
    await inDir(async (dir, name) => {
      const hasher = new Bun.CryptoHasher("sha256");
      const cut = [];
      for await (const piece of readPieces(join(dir, name), hasher, 3)) cut.push(piece);
      expect(cut.map((p) => p.text).join("")).toBe(content);
      expect(hasher.digest("hex")).toBe(new Bun.CryptoHasher("sha256").update(content).digest("hex"));
      // The header and 2 records, then 3, 3 and 2; the record with a line break in a quoted field (Row ID 4,
      // lines 5 and 6) stays whole.
      expect(cut.map((p) => p.line)).toEqual([1, 4, 8, 11]);
      expect(cut.map((p) => p.text.split("\n")[0]!.split(",")[0])).toEqual(["Row ID", "3", "6", "3"]);
    });
  });

  test("reads at most N records into memory at a time, and judges them as the whole file would be", async () => {
    await inDir(async (dir, name) => {
      const whole = await prepareFile(dir, name);
      const checked = await checkFile(dir, name);
      const chunks = [];
      for await (const chunk of chunksOf(dir, checked, 3)) chunks.push(chunk);
      expect(chunks.map((c) => c.records)).toEqual([2, 3, 3, 2]);
      expect(chunks.flatMap((c) => c.candidates)).toEqual([...whole.candidates]);
      expect(chunks.flatMap((c) => c.rejected)).toEqual([...whole.rejected]);
      expect(chunks.reduce((n, c) => n + c.duplicates, 0)).toBe(whole.duplicates);
      // The repeats in later chunks are judged against the first chunk: one duplicate, one conflict naming line 3.
      expect(whole.duplicates).toBe(1);
      expect(whole.rejected.map((r) => [r.source_line, r.reason])).toEqual([
        [3, "Row ID 2 repeats line 3 of Sample-Superstore.csv with other values"],
        [11, expect.stringContaining("Order Date")],
      ]);
      expect(whole.candidates.map((c) => c.row.source_line)).toEqual([2, 3, 4, 5, 6, 7, 8]);
    });
  });

  test("ends in FileChangedError when the file is not the one checked", async () => {
    await inDir(async (dir, name) => {
      const checked = await checkFile(dir, name);
      writeFileSync(join(dir, name), content.replace("Claire 1", "Claire X"));
      const read = async () => {
        for await (const _ of chunksOf(dir, checked, 3));
      };
      expect(read()).rejects.toThrow(FileChangedError);
    });
  });

  test("a file of one read block is read once: its chunks come from the bytes its check read while it looks the same", async () => {
    await inDir(async (dir, name) => {
      const whole = await prepareFile(dir, name);
      const checked = await checkFile(dir, name);
      const reads = spyOn(Bun, "file");
      try {
        const chunks = [];
        for await (const chunk of chunksOf(dir, checked, 3)) chunks.push(chunk);
        expect(chunks.flatMap((c) => c.candidates)).toEqual([...whole.candidates]);
        expect(reads).not.toHaveBeenCalled();
      } finally {
        reads.mockRestore();
      }
    });
  });

  test("a file written again after its check with the same content, or moved away and back, loads from disk as before", async () => {
    await inDir(async (dir, name) => {
      const whole = await prepareFile(dir, name);
      for (const change of [() => writeFileSync(join(dir, name), content), () => {
        renameSync(join(dir, name), join(dir, "away.csv"));
        writeFileSync(join(dir, name), content);
      }]) {
        const checked = await checkFile(dir, name);
        change();
        const chunks = [];
        for await (const chunk of chunksOf(dir, checked, 3)) chunks.push(chunk);
        expect(chunks.flatMap((c) => c.candidates)).toEqual([...whole.candidates]);
      }
    });
  });

  test("ends in FileChangedError when the file is gone after its check", async () => {
    await inDir(async (dir, name) => {
      const checked = await checkFile(dir, name);
      rmSync(join(dir, name));
      const read = async () => {
        for await (const _ of chunksOf(dir, checked, 3));
      };
      await expect(read()).rejects.toThrow(FileChangedError);
    });
  });

  test("names the line of the file in a record that does not parse, however far into it", async () => {
    await inDir(async (dir, name) => {
      writeFileSync(join(dir, name), `${content}1,2,3\n`);
      expect(prepareFile(dir, name)).rejects.toThrow(/line 13/);
    });
  });
});

describe("prepareFile of a gap file", () => {
  const range = { topic: "sales_topic", partition: 0, first: 200n, last: 399n, kind: "deleted" as const, group: "g", reason: "deleted" };

  test("reads its ranges and no records; refuses one edited after it was written", async () => {
    const dir = mkdtempSync(join(tmpdir(), "gap-test-"));
    try {
      const { name, content } = gapFile(range);
      writeFileSync(join(dir, name), content);
      const prepared = await prepareFile(dir, name);
      expect({ records: prepared.records, lost: prepared.lost, candidates: prepared.candidates.length }).toEqual({ records: 0, lost: [range], candidates: 0 });
      writeFileSync(join(dir, name), content.replace("399", "499"));
      await expect(prepareFile(dir, name)).rejects.toThrow(BadBatchFileError);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("copyValue", () => {
  test("writes NULL, escapes, JSON and text arrays in COPY's text format", () => {
    expect(copyValue(null)).toBe("\\N");
    expect(copyValue("a\tb\nc\\d\re")).toBe("a\\tb\\nc\\\\d\\re");
    // JSON escapes the tab as \t, and COPY then doubles that backslash.
    expect(copyValue({ k: "v\t" })).toBe(String.raw`{"k":"v\\t"}`);
    // An array literal quotes each element and escapes its quotes and backslashes; COPY doubles the backslashes.
    expect(copyValue(['say "x"', "a\\b"])).toBe(String.raw`{"say \\"x\\"","a\\\\b"}`);
  });

  test("writes a row as one COPY line: every orders column, in order, NULL as \\N", () => {
    const [candidate] = transform(batch([{ ...source(), ...meta() }]), BATCH).candidates;
    const fields = copyLine(candidate!.row).slice(0, -1).split("\t");
    expect(copyLine(candidate!.row).endsWith("\n")).toBe(true);
    expect(fields).toHaveLength(ORDER_COLUMNS.length);
    const at = (column: (typeof ORDER_COLUMNS)[number]) => fields[ORDER_COLUMNS.indexOf(column)];
    expect([at("order_id"), at("order_date"), at("ship_mode"), at("postal_code"), at("extra"), at("source_row_id"), at("kafka_offset")]).toEqual([
      "CA-2016-152156",
      "2016-11-08",
      "\\N",
      "05408",
      "\\N",
      "1",
      "5",
    ]);
  });
});

describe("groupFiles", () => {
  const f = (size: number) => ({ size });

  test("loads small files together up to the byte and file limits", () => {
    expect(groupFiles([f(40), f(40), f(40), f(40)], 100, 10).map((g) => g.length)).toEqual([2, 2]);
    expect(groupFiles([f(1), f(1), f(1)], 100, 2).map((g) => g.length)).toEqual([2, 1]);
  });

  test("gives a file bigger than the limit a group of its own", () => {
    expect(groupFiles([f(10), f(500), f(10)], 100, 10).map((g) => g.map((x) => x.size))).toEqual([[10], [500], [10]]);
  });

  test("returns no groups for no files", () => {
    expect(groupFiles([], 100, 10)).toEqual([]);
  });
});

describe("the folder's changes (--watch)", () => {
  const folder = () => mkdtempSync(join(tmpdir(), "load-changes-"));
  const stampNow = (path: string) => stampOf(statSync(path));

  test("a loaded file is looked at again only when the watch names it, or at a full look", async () => {
    const dir = folder();
    let clock = 0;
    const changes = new FolderChanges(dir, 60_000, () => clock);
    try {
      expect(changes.watching).toBe(true);
      expect(changes.take()("a.csv")).toBe(true); // the first pass looks at everything
      expect(changes.take()("a.csv")).toBe(false);
      writeFileSync(join(dir, "a.csv"), "x");
      await waitFor("the watch to name a.csv", async () => {
        await changes.next(50, new AbortController().signal);
        const recheck = changes.take();
        return recheck("a.csv") && !recheck("b.csv");
      });
      expect(changes.take()("a.csv")).toBe(false);
      clock = 60_000;
      expect(changes.take()("b.csv")).toBe(true);
    } finally {
      changes.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("a folder that cannot be watched is looked at whole every pass", () => {
    const changes = new FolderChanges(join(tmpdir(), "no-such-folder-" + process.pid));
    expect(changes.watching).toBe(false);
    expect([changes.take()("a.csv"), changes.take()("a.csv")]).toEqual([true, true]);
  });

  test("pendingFiles skips a file this run loaded unless told to look again, and then sees it changed", async () => {
    const dir = folder();
    try {
      const path = join(dir, "a.csv");
      writeFileSync(path, "one");
      const done = new LoadedFiles(new Map());
      done.loaded("a.csv", stampNow(path), "hash-of-one");
      writeFileSync(join(dir, "b.csv"), "new");
      writeFileSync(path, "changed");
      const names = async (recheck?: (name: string) => boolean) => (await pendingFiles(dir, done, Date.now(), recheck)).map((f) => f.name);
      expect(await names(() => false)).toEqual(["b.csv"]);
      expect(await names((name) => name === "a.csv")).toEqual(["a.csv", "b.csv"]);
      expect(await names()).toEqual(["a.csv", "b.csv"]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

function order(overrides: Partial<OrderRow>): OrderRow {
  const row = Object.fromEntries(ORDER_COLUMNS.map((c) => [c, null])) as OrderRow;
  return {
    ...row,
    order_date: "2016-01-01",
    source_row_id: 1,
    source_file: "a.csv",
    customer_id: "C1",
    product_id: "P1",
    ...overrides,
  };
}

/** Deterministic Fisher-Yates shuffle (a small LCG), so a failure can be reproduced. */
function shuffled<T>(items: readonly T[], seed: number): T[] {
  const out = [...items];
  let state = seed;
  for (let i = out.length - 1; i > 0; i--) {
    state = (state * 1_103_515_245 + 12_345) % 2_147_483_648;
    const j = state % (i + 1);
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

describe("isLater", () => {
  test("orders by order date first", () => {
    const early = order({ order_date: "2016-01-01", source_row_id: 900 });
    const late = order({ order_date: "2017-01-01", source_row_id: 1 });
    expect([isLater(late, early), isLater(early, late)]).toEqual([true, false]);
  });

  test("breaks a date tie by Row ID as a number", () => {
    const nine = order({ source_row_id: 9 });
    const ten = order({ source_row_id: 10 });
    expect([isLater(ten, nine), isLater(nine, ten)]).toEqual([true, false]);
  });

  test("breaks a date and Row ID tie by source file in byte order", () => {
    const upper = order({ source_file: "B.csv" });
    const lower = order({ source_file: "a.csv" });
    expect([isLater(lower, upper), isLater(upper, lower)]).toEqual([true, false]);
    // UTF-8 byte order (PostgreSQL "C"), not UTF-16 order: U+FF21 sorts before U+1F600 in bytes, after it in JS.
    const fullwidth = order({ source_file: "\uFF21.csv" });
    const emoji = order({ source_file: "\u{1F600}.csv" });
    expect([isLater(emoji, fullwidth), isLater(fullwidth, emoji)]).toEqual([true, false]);
  });

  test("is false both ways for the same identity", () => {
    const a = order({});
    expect([isLater(a, order({})), isLater(order({}), a)]).toEqual([false, false]);
  });
});

describe("latestBy", () => {
  const rows = [
    order({ customer_id: "C1", order_date: "2016-03-01", source_row_id: 5, customer_name: "old name" }),
    order({ customer_id: "C1", order_date: "2017-06-30", source_row_id: 2, customer_name: "newest name" }),
    order({ customer_id: "C1", order_date: "2017-06-30", source_row_id: 1, customer_name: "same day, lower Row ID" }),
    order({ customer_id: "C2", order_date: "2015-01-01", source_row_id: 7, source_file: "a.csv", customer_name: "a" }),
    order({ customer_id: "C2", order_date: "2015-01-01", source_row_id: 7, source_file: "b.csv", customer_name: "b" }),
    order({ customer_id: "C3", order_date: "2014-12-31", source_row_id: 3, customer_name: "only" }),
  ];
  const names = (result: OrderRow[]) => result.map((r) => [r.customer_id, r.customer_name]).sort();

  test("keeps one row per id: the latest by date, then Row ID, then source file", () => {
    expect(names(latestBy(rows, "customer_id"))).toEqual([
      ["C1", "newest name"],
      ["C2", "b"],
      ["C3", "only"],
    ]);
  });

  test("returns the rows themselves", () => {
    expect(latestBy(rows, "customer_id")).toContain(rows[1]!);
  });

  test("gives the same answer whatever the input order", () => {
    const expected = names(latestBy(rows, "customer_id"));
    expect(names(latestBy([...rows].reverse(), "customer_id"))).toEqual(expected);
    for (const seed of [1, 2, 3, 42, 1234, 99_999]) {
      expect(names(latestBy(shuffled(rows, seed), "customer_id"))).toEqual(expected);
    }
  });

  test("groups by product id when asked", () => {
    const products = [
      order({ product_id: "P1", order_date: "2016-01-01", product_name: "old" }),
      order({ product_id: "P1", order_date: "2016-01-02", product_name: "new" }),
      order({ product_id: "P2", order_date: "2015-01-01", product_name: "other" }),
    ];
    expect(latestBy(products, "product_id").map((r) => [r.product_id, r.product_name])).toEqual([
      ["P1", "new"],
      ["P2", "other"],
    ]);
  });

  test("returns nothing for no rows", () => {
    expect(latestBy([], "customer_id")).toEqual([]);
  });
});

describe("isConnectionError", () => {
  test("is true when the server is away: refused sockets, closed connections, shutdown codes", () => {
    for (const code of ["ECONNREFUSED", "CONNECTION_CLOSED", "CONNECT_TIMEOUT", "57P01", "57P03", "08006"]) {
      expect(isConnectionError(Object.assign(new Error(code), { code }))).toBe(true);
    }
  });

  test("is false for problems with the data or the query", () => {
    for (const code of ["23505", "22P02", "42P01", undefined]) {
      expect(isConnectionError(Object.assign(new Error("x"), { code }))).toBe(false);
    }
    expect(isConnectionError(null)).toBe(false);
  });
});

describe("transform with NUL characters", () => {
  test("rejects the row and keeps the fields storable, showing NUL as \\u0000", () => {
    const result = transform(batch([{ ...source({ "Customer Name": "a\u0000b" }), ...meta() }]), BATCH);
    expect(result.candidates).toEqual([]);
    expect(result.rejected.map((r) => [r.reason, r.fields?.["Customer Name"]])).toEqual([
      ["Customer Name: contains a NUL character (byte 0), which PostgreSQL cannot store", "a\\u0000b"],
    ]);
  });

  test("keeps an unsplittable line's raw text storable too", () => {
    const row = meta({ _error: "expected 21 fields but got 2", _raw: "x\u0000,y" });
    const result = transform(batch([row]), BATCH);
    expect(result.rejected.map((r) => r.raw_text)).toEqual(["x\\u0000,y"]);
  });
});

describe("what the loader does with a server error", () => {
  const error = (code?: string) => Object.assign(new Error(code ?? "no code"), { code });

  test("a refusal of the data (classes 22, 23, 54) makes a rejection, nothing else does", () => {
    for (const code of ["22001", "22P02", "23503", "23514", "54000"]) expect([code, isDataError(error(code))]).toEqual([code, true]);
    for (const code of ["57014", "40P01", "53100", "42P01", "08006", "ECONNRESET", undefined]) expect([code, isDataError(error(code))]).toEqual([code, false]);
  });

  test("a lost connection, a cancelled statement, a deadlock or a full disk is tried again; a wrong query is not", () => {
    for (const code of ["ECONNRESET", "08006", "57P01", "57014", "40001", "40P01", "55P03", "53100", "53200"]) {
      expect([code, isRetryable(error(code))]).toEqual([code, true]);
    }
    for (const code of ["22001", "23505", "54000", "42P01", "XX000", undefined]) expect([code, isRetryable(error(code))]).toEqual([code, false]);
  });
});

describe("sourceName", () => {
  test("keeps names that fit an index entry, and cuts longer ones to a stable name that ends in the whole name's hash", () => {
    expect(sourceName("data/Sample - Superstore.csv")).toBe("data/Sample - Superstore.csv");
    const fits = "é".repeat(MAX_SOURCE_NAME_BYTES / 2);
    expect(sourceName(fits)).toBe(fits);
    for (const long of ["x".repeat(3000), "😀".repeat(800), `${"é".repeat(450)}😀${"a".repeat(2000)}`]) {
      const stored = sourceName(long);
      expect(Buffer.byteLength(stored)).toBeLessThanOrEqual(MAX_SOURCE_NAME_BYTES);
      expect(stored.isWellFormed()).toBe(true);
      expect(stored).toMatch(/\.\.\.\[sha256 [0-9a-f]{16}\]$/);
      expect(sourceName(long)).toBe(stored);
      expect(sourceName(`${long}b`)).not.toBe(stored);
    }
  });
});
