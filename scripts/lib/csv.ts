// CSV in one module, one way. Fields are parsed by csv-parse and written as csv-stringify writes them (RFC 4180 quoting,
// explicit columns, null <-> empty field); this module adds what a streaming pipeline needs around them:
//
// - readCsv streams a source file (lines from ./input.ts, never the whole file in memory) and yields one record
//   at a time with the line it starts on. A record csv-parse cannot split (wrong field count, broken quoting, a
//   line too long) is not fatal and not dropped: it is yielded as `broken` with its raw text and the reason, so
//   the loader can record it as rejected.
// - Records are found before they are parsed: a record ends at a line end outside quotes, so a quote that is
//   never closed cannot swallow the rest of the file (csv-parse alone resumes badly after such an error).
//   An open record is cut back to its first line when it grows past a limit or fails to parse. A record that
//   spans lines keeps each line's own ending (LF, CRLF or CR) inside its quoted field.
// - writeCsv / parseCsv write and read the batch files between the consumer and the loader: every field or
//   header that holds a CR, LF, quote or comma is quoted, and reading accepts LF, CRLF and CR line ends.

import { parse } from "csv-parse/sync";
import { stringify } from "csv-stringify/sync";
import { type Encoding, KEPT_CHARS, type Line, MAX_RECORD_CHARS, readLines } from "./input.ts";

export { type Encoding, KEPT_CHARS, MAX_RECORD_CHARS };

/** A quoted field may span at most this many lines before the record is treated as broken. */
export const MAX_RECORD_LINES = 100;

export type CsvRecord =
  | { readonly kind: "row"; readonly line: number; readonly lines: number; readonly fields: string[] }
  | {
      readonly kind: "broken";
      readonly line: number;
      readonly lines: number;
      readonly raw: string;
      readonly reason: string;
    };

function countQuotes(text: string): number {
  let n = 0;
  for (let i = text.indexOf('"'); i !== -1; i = text.indexOf('"', i + 1)) n++;
  return n;
}

const PARSE_OPTIONS = { relax_column_count: true, record_delimiter: "\n" } as const;

/** csv-parse's messages end in "at line N"; lines here are relative to one record, so drop that part. */
function parseReason(error: unknown): string {
  return (error as Error).message.replace(/\s+(at|on) line \d+/g, "").replace(/:\s*$/, "");
}

/** Parses one record's text. Returns the fields, or a reason it cannot be split. */
export function parseRecord(text: string, expectedFields?: number): string[] | string {
  let records: string[][];
  try {
    records = parse(text, PARSE_OPTIONS) as string[][];
  } catch (error) {
    return parseReason(error);
  }
  if (records.length !== 1 || records[0] === undefined) {
    return `expected one record but found ${records.length}`;
  }
  const fields = records[0];
  if (expectedFields !== undefined && fields.length !== expectedFields) {
    return `expected ${expectedFields} fields but got ${fields.length}`;
  }
  return fields;
}

/**
 * Splits one line of plain RFC 4180 CSV (fields either unquoted without quotes, or quoted with "" for a quote)
 * the way csv-parse does, several times faster. Anything else (a quote inside an unquoted field, text after a
 * closing quote, a quote never closed) returns undefined and is left to csv-parse, which decides.
 */
export function splitSimple(text: string): string[] | undefined {
  const fields: string[] = [];
  const n = text.length;
  let i = 0;
  for (;;) {
    if (text.charCodeAt(i) === 34) {
      let value = "";
      let from = i + 1;
      for (;;) {
        const quote = text.indexOf('"', from);
        if (quote === -1) return undefined;
        if (text.charCodeAt(quote + 1) === 34) {
          value += text.slice(from, quote + 1);
          from = quote + 2;
          continue;
        }
        value += text.slice(from, quote);
        i = quote + 1;
        break;
      }
      fields.push(value);
      if (i === n) return fields;
      if (text.charCodeAt(i) !== 44) return undefined;
      i++;
    } else {
      const comma = text.indexOf(",", i);
      const value = comma === -1 ? text.slice(i) : text.slice(i, comma);
      if (value.includes('"')) return undefined;
      fields.push(value);
      if (comma === -1) return fields;
      i = comma + 1;
    }
  }
}

type Pending = { line: number; lines: number; text: string; fields?: string[] | string };

/**
 * Groups lines into records by quote parity. Multi-line records are parsed right away, because a failure
 * there means the quote was not really open and the lines after the first must be read again; one-line
 * records are left for a chunked parse (one csv-parse call per few hundred records is ten times faster).
 */
class RecordSplitter {
  private open: Line[] = [];
  private chars = 0;
  private oddQuotes = false;
  expectedFields: number | undefined;

  constructor(private readonly emit: (record: Pending) => void) {}

  push(line: Line): void {
    if (this.open.length === 0) {
      if (line.overLength !== undefined) {
        this.emit({
          line: line.number,
          lines: 1,
          text: line.text,
          fields: `line is ${line.overLength} characters long, more than ${MAX_RECORD_CHARS}; the first ${KEPT_CHARS} are kept`,
        });
        return;
      }
      if (line.text.trim() === "") return; // an empty line holds no record (RFC 4180 has none)
    }
    this.open.push(line);
    this.chars += line.text.length + 1;
    if (countQuotes(line.text) % 2 === 1) this.oddQuotes = !this.oddQuotes;
    if (!this.oddQuotes) this.close();
    else if (
      line.overLength !== undefined ||
      this.open.length > MAX_RECORD_LINES ||
      this.chars > MAX_RECORD_CHARS
    ) {
      this.cutBack(`a quoted field is not closed within ${MAX_RECORD_LINES} lines`);
    }
  }

  end(): void {
    while (this.open.length > 0) this.cutBack("a quoted field is not closed before the end of the file");
  }

  private reset(): Line[] {
    const lines = this.open;
    this.open = [];
    this.chars = 0;
    this.oddQuotes = false;
    return lines;
  }

  private close(): void {
    const lines = this.reset();
    const first = lines[0]!;
    // The record as written: each line's own ending between lines, none after the last.
    const text = lines.map((l, i) => (i === lines.length - 1 ? l.text : l.text + l.end)).join("");
    if (lines.length === 1) {
      this.emit({ line: first.number, lines: 1, text });
      return;
    }
    const fields = parseRecord(text, this.expectedFields);
    if (typeof fields !== "string") {
      this.emit({ line: first.number, lines: lines.length, text, fields });
      return;
    }
    // The quote that opened the record was most likely stray: the first line alone is broken,
    // and the following lines are read again as records of their own.
    this.emit({ line: first.number, lines: 1, text: first.text, fields: `${fields} (record starting here)` });
    for (const line of lines.slice(1)) this.push(line);
  }

  private cutBack(reason: string): void {
    const lines = this.reset();
    const first = lines[0]!;
    this.emit({ line: first.number, lines: 1, text: first.text, fields: reason });
    for (const line of lines.slice(1)) this.push(line);
  }
}

const CHUNK_RECORDS = 256;

/**
 * Parses pending one-line records: plain ones by splitSimple, the rest together by csv-parse, one by one when
 * that chunk does not parse.
 */
function settle(pending: Pending[], expectedFields: number | undefined): CsvRecord[] {
  for (const p of pending) if (p.fields === undefined) p.fields = splitSimple(p.text);
  const unparsed = pending.filter((p) => p.fields === undefined);
  if (unparsed.length > 0) {
    let parsed: string[][] | undefined;
    try {
      parsed = parse(unparsed.map((p) => p.text).join("\n"), PARSE_OPTIONS) as string[][];
    } catch {
      parsed = undefined;
    }
    if (parsed && parsed.length === unparsed.length) unparsed.forEach((p, i) => (p.fields = parsed[i]));
    else for (const p of unparsed) p.fields = parseRecord(p.text);
  }
  return pending.map((p): CsvRecord => {
    let fields = p.fields!;
    if (typeof fields !== "string" && expectedFields !== undefined && fields.length !== expectedFields) {
      fields = `expected ${expectedFields} fields but got ${fields.length}`;
    }
    return typeof fields === "string"
      ? { kind: "broken", line: p.line, lines: p.lines, raw: p.text, reason: fields }
      : { kind: "row", line: p.line, lines: p.lines, fields };
  });
}

/**
 * Streams the records of a CSV file. The first record yielded is the header (kind "row"); every later
 * record is checked against the header's field count.
 */
export async function* readCsv(path: string, encoding: Encoding): AsyncGenerator<CsvRecord> {
  let pending: Pending[] = [];
  const splitter = new RecordSplitter((record) => pending.push(record));
  let header = true;
  for await (const line of readLines(path, encoding)) {
    splitter.push(line);
    if (header && pending.length > 0) {
      const [first] = settle(pending.splice(0, 1), undefined);
      if (first?.kind !== "row") {
        throw new Error(`${path}: line ${first?.line}: cannot read the header: ${first?.kind === "broken" ? first.reason : ""}`);
      }
      splitter.expectedFields = first.fields.length;
      header = false;
      yield first;
    }
    if (pending.length >= CHUNK_RECORDS) {
      const ready = pending;
      pending = [];
      yield* settle(ready, splitter.expectedFields);
    }
  }
  splitter.end();
  if (header && pending.length > 0) {
    const [first] = settle(pending.splice(0, 1), undefined);
    if (first?.kind !== "row") throw new Error(`${path}: line ${first?.line}: cannot read the header`);
    splitter.expectedFields = first.fields.length;
    yield first;
  }
  yield* settle(pending, splitter.expectedFields);
}

export type CsvRow = Record<string, string | number | null | undefined>;

/**
 * An empty object for values keyed by column names that come from the data. It has no prototype: in a plain
 * object, a column named "__proto__" would hit Object.prototype's setter and its value would vanish.
 */
export function byColumn<T>(): Record<string, T> {
  return Object.create(null) as Record<string, T>;
}

/**
 * Writes rows with a header line, columns in the given order, null as an empty field, LF line ends. A field
 * or column name holding a comma, quote, CR or LF is quoted (csv-stringify leaves a lone CR unquoted by
 * default, which a reader would take for a line end).
 */
export function writeCsv(rows: readonly CsvRow[], columns: readonly string[], header = true): string {
  // One string built by appending (a rope in the engine), no array per row: this runs for every row the
  // consumer writes.
  let out = header ? csvLine(columns) : "";
  const last = columns.length - 1;
  for (const row of rows) {
    let line = "";
    for (let i = 0; i < last; i++) line += `${csvField(row[columns[i]!])},`;
    out += `${line}${last >= 0 ? csvField(row[columns[last]!]) : ""}\n`;
  }
  return out;
}

function csvLine(values: readonly string[]): string {
  return `${values.map(csvField).join(",")}\n`;
}

const QUOTE_WHEN = /[",\r\n]/;

/** One field as writeCsv writes it: the same text csv-stringify writes with writeCsvWithCsvStringify's options. */
function csvField(value: string | number | null | undefined): string {
  if (value === null || value === undefined) return "";
  const text = typeof value === "string" ? value : String(value);
  return QUOTE_WHEN.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

/** writeCsv done by csv-stringify: what the tests hold writeCsv to. */
export function writeCsvWithCsvStringify(rows: readonly CsvRow[], columns: readonly string[], header = true): string {
  return stringify(rows as CsvRow[], { header, columns: [...columns], record_delimiter: "\n", quoted_match: /[\r\n]/ });
}

export interface ParsedCsv {
  readonly columns: string[];
  readonly rows: { readonly line: number; readonly values: Record<string, string> }[];
}

/**
 * Parses a whole (batch) file strictly: every record must have the header's field count. Errors name the
 * file and the line. Files as the consumer writes them (LF line ends, plain RFC 4180 quoting) are split by
 * splitSimple; anything else (a CR, an empty line, a field count that differs, quoting splitSimple declines)
 * is read by csv-parse, which accepts every line end and words the errors.
 */
export function parseCsv(text: string, name: string): ParsedCsv {
  return parsePlainCsv(text, name) ?? parseCsvWithCsvParse(text, name);
}

function parsedFrom(records: readonly { fields: string[]; line: number }[], name: string): ParsedCsv {
  const [header, ...body] = records;
  if (!header) throw new Error(`${name}: the file is empty (no header line)`);
  const columns = header.fields;
  if (new Set(columns).size !== columns.length) throw new Error(`${name}: the header repeats a column name`);
  return {
    columns,
    rows: body.map(({ fields, line }) => {
      const values = byColumn<string>();
      for (let i = 0; i < columns.length; i++) values[columns[i]!] = fields[i] ?? "";
      return { line, values };
    }),
  };
}

/** The fast path of parseCsv; undefined when the text is not plain LF-terminated CSV. */
export function parsePlainCsv(text: string, name: string): ParsedCsv | undefined {
  if (text.includes("\r")) return undefined;
  const records: { fields: string[]; line: number }[] = [];
  let expected = -1;
  let line = 0;
  let at = 0;
  // The next quote at or after the current line: one forward scan over the whole text, however rare quotes are.
  let quote = text.indexOf('"');
  while (at < text.length) {
    const start = line + 1;
    // A record ends at the first line end outside quotes: extend it while its quotes are unbalanced.
    let end = text.indexOf("\n", at);
    let quotes = 0;
    for (;;) {
      const stop = end === -1 ? text.length : end;
      for (; quote !== -1 && quote < stop; quote = text.indexOf('"', quote + 1)) quotes++;
      line++;
      if (quotes % 2 === 0 || end === -1) break;
      end = text.indexOf("\n", end + 1);
    }
    const recordText = text.slice(at, end === -1 ? text.length : end);
    if (recordText === "") return undefined;
    const fields = splitSimple(recordText);
    if (fields === undefined) return undefined;
    if (expected === -1) expected = fields.length;
    else if (fields.length !== expected) return undefined;
    records.push({ fields, line: start });
    if (end === -1) break;
    at = end + 1;
  }
  return parsedFrom(records, name);
}

/** parseCsv by csv-parse: every line end, and csv-parse's wording for what it refuses. */
export function parseCsvWithCsvParse(text: string, name: string): ParsedCsv {
  let records: { record: string[]; info: { lines: number } }[];
  try {
    records = parse(text, { info: true, record_delimiter: ["\r\n", "\n", "\r"] }) as unknown as typeof records;
  } catch (error) {
    throw new Error(`${name}: ${(error as Error).message}`);
  }
  return parsedFrom(
    records.map(({ record, info }) => {
      // info.lines is the line the record ends on. Newlines inside a record only occur in quoted fields,
      // which keep them: count them back to the line it starts on.
      let inside = 0;
      for (const value of record) for (let at = value.indexOf("\n"); at !== -1; at = value.indexOf("\n", at + 1)) inside++;
      return { fields: record, line: info.lines - inside };
    }),
    name,
  );
}
