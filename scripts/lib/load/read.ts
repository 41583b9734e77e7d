// Reading and cleaning one batch file: extract + transform, everything the loader does before the database.
//
// Each data record of the file becomes exactly one of: an order candidate (cleaned, with its identity and a
// fingerprint of its values), a rejected row (with a reason naming the field), or a duplicate of a record
// earlier in the same file. The counts of the three add up to the file's records; the transaction checks
// that again against what the database reports before it commits.
//
// A row's fields are its source columns and the fields in its _extra column (JSON), read alike. A row without
// source headers (written to the topic by another producer) is named by its topic, partition and a hash of its
// content, and its line is its offset: offsets repeat when a topic is re-created, contents do not.
// A gap file holds no records but ranges of offsets the consumer could not read, for lost_offsets.
//
// A file bigger than a read block is never held whole: checkFile hashes it from disk, and its chunks (at most
// CHUNK_RECORDS records or CHUNK_CHARS characters) are read again, parsed and transformed one at a time as the
// transaction asks for them. A file of one block (the usual 100-row file) is read once: checkFile keeps its
// bytes, and its chunks come from them while the file on disk still looks as it did then (see Held).
// Between chunks a file keeps only the identities it has seen, each with its line and fingerprint.

import { createReadStream, type BigIntStats } from "node:fs";
import { stat } from "node:fs/promises";
import { join } from "node:path";
import { EXTRA_COLUMN, GAP_COLUMNS, META_COLUMNS, parseBatchFileName, parseGapFileName, sha256, type GapKind, type LostRange } from "../batch.ts";
import { byColumn, parseCsv, type ParsedCsv } from "../csv.ts";
import { cleanRow, FIELDS, mapHeader, normalizeHeader, storable, type CleanResult, type CleanRow, type CleanValue, type HeaderMap } from "../record.ts";

/** Source columns the schema does not know, kept in orders.extra (jsonb). */
export type Extra = Record<string, string>;

const FIELD_COLUMNS = Object.values(FIELDS).map((f) => f.column);

/** Columns of `orders` the loader writes, in COPY order. */
export const ORDER_COLUMNS = [
  ...FIELD_COLUMNS,
  "extra",
  "warnings",
  "row_hash",
  "source_file",
  "source_row_id",
  "source_line",
  "kafka_topic",
  "kafka_partition",
  "kafka_offset",
  "batch_file",
] as const;

/** One row for `orders`: the cleaned source fields, its identity, and where it came from. */
export type OrderRow = Record<(typeof ORDER_COLUMNS)[number], CleanValue | Extra | string[]>;

/** One row for `rejected_rows`. */
export interface RejectedRow {
  source_file: string;
  source_line: number;
  source_lines: number;
  /** the Row ID when it could be read: a later corrected row with it resolves this rejection */
  source_row_id: number | null;
  reason: string;
  /** the fields as received (jsonb); null for a line that could not be split */
  fields: Record<string, string> | null;
  raw_text: string | null;
  kafka_topic: string | null;
  kafka_partition: number | null;
  kafka_offset: string | null;
  batch_file: string;
}

export interface Candidate {
  readonly row: OrderRow;
  /** source file + Row ID: the row's identity */
  readonly key: string;
  /** source lines the record spans (a quoted field with line breaks spans several) */
  readonly lines: number;
  /** the fields as received, for a rejection found later (a conflict with a loaded row) */
  readonly fields: Record<string, string>;
}

/** Up to CHUNK_RECORDS records of a file, transformed: what one round of the transaction plans and inserts. */
export interface Chunk {
  /** data records in the chunk: candidates + rejected + duplicates */
  readonly records: number;
  readonly candidates: readonly Candidate[];
  readonly rejected: readonly RejectedRow[];
  /** records that repeat an earlier record of the same file exactly */
  readonly duplicates: number;
  /** candidates and rejected rows in the order of the file, which is the order they are judged in */
  readonly sequence: readonly (Candidate | RejectedRow)[];
  /** characters of the file the chunk was read from */
  readonly chars: number;
}

/**
 * A batch file checked against the hash in its name, but not held: the transaction reads it from disk, chunk by
 * chunk (`chunks`), so memory does not grow with the file's size.
 */
export interface CheckedFile {
  readonly name: string;
  readonly hash: string;
  /** ranges of offsets the consumer could not read (a gap file); empty for a batch file */
  readonly lost: readonly LostRange[];
  /**
   * the file's records, transformed, a chunk at a time (of at most `limits`, CHUNK_RECORDS and CHUNK_CHARS by
   * default); throws FileChangedError when the file is not as checked
   */
  chunks(limits?: ChunkLimits): AsyncIterable<Chunk>;
}

/** How big a chunk may be: records, and characters of the file. */
export interface ChunkLimits {
  readonly maxRecords?: number;
  readonly maxChars?: number;
}

/** A batch file read, checked and transformed whole (tests, the bench's cleaned rows). */
export interface PreparedFile extends CheckedFile, Chunk {}

/** Thrown for a file that is not a readable batch; the caller sets it aside and goes on. */
export class BadBatchFileError extends Error {
  override name = "BadBatchFileError";
  /** the file, when found bad while it was being loaded (nothing of its group was kept) */
  file?: string;
}

/** Thrown while loading a file whose content is no longer what was checked (replaced or edited meanwhile). */
export class FileChangedError extends Error {
  override name = "FileChangedError";
  constructor(
    readonly file: string,
    message: string,
  ) {
    super(`${file}: ${message}`);
  }
}

/** The identity of a row within the pipeline: its source file and Row ID (or line). */
export function identity(sourceFile: string, rowId: number | string): string {
  return `${sourceFile}\u0000${rowId}`;
}

/** Source names up to this many bytes are stored as they are; an index entry holds at most 2,704 bytes. */
export const MAX_SOURCE_NAME_BYTES = 1000;

/**
 * A source name as stored in source_file: a longer name is cut and ends in a hash of the whole name, so it
 * stays the same for the same source and differs between sources (a name too long for the identity index
 * would make every load of the file fail).
 */
export function sourceName(name: string): string {
  if (name.length <= MAX_SOURCE_NAME_BYTES / 3 || Buffer.byteLength(name) <= MAX_SOURCE_NAME_BYTES) return name;
  if (name === shortened.name) return shortened.stored; // every row of a file names the same source
  let cut = name.slice(0, MAX_SOURCE_NAME_BYTES - 100);
  while (Buffer.byteLength(cut) > MAX_SOURCE_NAME_BYTES - 100) cut = cut.slice(0, -1);
  if (/[\uD800-\uDBFF]$/.test(cut)) cut = cut.slice(0, -1); // not half of a character
  shortened = { name, stored: `${cut}...[sha256 ${sha256(name).slice(0, 16)}]` };
  return shortened.stored;
}

let shortened = { name: "", stored: "" };

/** Fingerprint of a row's cleaned values: the same line sent again has the same one, a changed line another. */
export function rowHash(values: Record<string, CleanValue>, extra: Extra | null): string {
  return Bun.MD5.hash(JSON.stringify([FIELD_COLUMNS.map((c) => values[c] ?? null), extra]), "hex") as string;
}

const COPY_SPECIAL = /[\\\t\n\r]/;
const COPY_SPECIALS = /[\\\t\n\r]/g;
const COPY_ESCAPES: Record<string, string> = { "\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r" };

/** One value in COPY's text format: \N for NULL, backslash escapes for backslash, tab, newline, CR. */
export function copyValue(value: unknown): string {
  if (value === null || value === undefined) return "\\N";
  if (typeof value === "number") return String(value);
  let text: string;
  if (typeof value === "string") text = value;
  else if (Array.isArray(value)) text = `{${value.map((v) => `"${String(v).replace(/["\\]/g, (c) => `\\${c}`)}"`).join(",")}}`;
  else text = typeof value === "object" ? JSON.stringify(value) : String(value);
  return COPY_SPECIAL.test(text) ? text.replace(COPY_SPECIALS, (c) => COPY_ESCAPES[c]!) : text;
}

/** An orders row as one line of COPY text, newline included; `more` are values of columns after ORDER_COLUMNS. */
export function copyLine(row: OrderRow, ...more: unknown[]): string {
  const values = ORDER_COLUMNS.map((c) => copyValue(row[c]));
  for (const value of more) values.push(copyValue(value));
  return `${values.join("\t")}\n`;
}

/** Columns that mean one field, spelled two or more ways: the first is read, the others fill in for it. */
interface Spelling {
  readonly first: string;
  readonly others: readonly string[];
}

/**
 * Columns of one meaning spelled differently ("Sub-Category", "Sub Category"): a batch file holds them when
 * sources with different headers shared a topic, each row with its value in its own source's column.
 */
function spellingsOf(columns: readonly string[]): Spelling[] {
  const byMeaning = new Map<string, string[]>();
  for (const column of columns) {
    const meaning = normalizeHeader(column);
    if (meaning !== "") byMeaning.set(meaning, [...(byMeaning.get(meaning) ?? []), column]);
  }
  return [...byMeaning.values()].filter((c) => c.length > 1).map(([first, ...others]) => ({ first: first!, others }));
}

/**
 * The row with each field's spellings merged into the first (the value of whichever column holds one), and
 * the problem when two of them hold different values.
 */
function mergeSpellings(fields: Record<string, string>, spellings: readonly Spelling[]): { merged: Record<string, string>; problem?: string } {
  const merged = byColumn<string>();
  Object.assign(merged, fields);
  let problem: string | undefined;
  for (const { first, others } of spellings) {
    const given = [first, ...others].filter((c) => (fields[c] ?? "").trim() !== "");
    if (new Set(given.map((c) => fields[c]!.trim())).size > 1) {
      problem ??= `columns ${given.map((c) => JSON.stringify(c)).join(" and ")} mean one field and hold different values`;
    }
    merged[first] = given.length > 0 ? fields[given[0]!]! : (fields[first] ?? "");
    for (const other of others) delete merged[other];
  }
  return { merged, problem };
}

/** The source columns of a parsed record, without the consumer's meta columns. */
function sourceFields(values: Readonly<Record<string, string>>, sourceColumns: readonly string[]): Record<string, string> {
  const fields = byColumn<string>();
  for (const column of sourceColumns) fields[column] = values[column] ?? "";
  return fields;
}

function storableFields(fields: Record<string, string>): Record<string, string> {
  const out = byColumn<string>();
  for (const [k, v] of Object.entries(fields)) out[storable(k)] = storable(v);
  return out;
}

/** A meta column as a number within PostgreSQL's integer (or bigint) range, else null. */
function int(value: string | undefined, max = 2_147_483_647): number | null {
  if (value === undefined || !/^\d{1,19}$/.test(value)) return null;
  const n = Number(value);
  return n <= max ? n : null;
}

const BIGINT_MAX = 9_223_372_036_854_775_807n;

/**
 * The fields of a row's _extra column (a JSON object of text) added to its column fields; the problem when it
 * is not such an object, or names a field its columns hold with another value.
 */
function addExtra(fields: Record<string, string>, text: string): string | undefined {
  let extra: unknown;
  try {
    extra = JSON.parse(text);
  } catch {
    return `${EXTRA_COLUMN} is not JSON`;
  }
  if (extra === null || typeof extra !== "object" || Array.isArray(extra)) return `${EXTRA_COLUMN} is not a JSON object`;
  for (const [key, value] of Object.entries(extra as Record<string, unknown>)) {
    if (value !== null && typeof value !== "string") return `${EXTRA_COLUMN}: ${JSON.stringify(storable(key))} is not text`;
    const given = (fields[key] ?? "").trim();
    if (given !== "" && given !== (value ?? "").trim()) return `field ${JSON.stringify(storable(key))} is in a column and in ${EXTRA_COLUMN} with different values`;
    if (given === "") fields[key] = value ?? "";
  }
  return undefined;
}

/** The header of one row whose fields differ from the file's columns (it has _extra). */
function rowHeader(columns: readonly string[]): { header: HeaderMap; spellings: Spelling[] } {
  const spellings = spellingsOf(columns);
  const others = new Set(spellings.flatMap((s) => s.others));
  return { header: mapHeader(columns.filter((c) => !others.has(c))), spellings };
}

/** The source of a row without source headers: its topic and partition, and a hash of what it holds. */
function headerlessSource(topic: string, partition: number | null, fields: Record<string, string>, values: Readonly<Record<string, string>>): string {
  const given = Object.entries(fields)
    .filter(([, v]) => v !== "")
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  const content = JSON.stringify([given, values._error || null, values._raw || null]);
  return `kafka:${topic}/${partition}#${sha256(content).slice(0, 12)}`;
}

type ParsedRow = { readonly line: number; readonly values: Record<string, string> };

/**
 * Where a row came from, as rejected_rows and orders record it. A batch file without our columns (written by
 * hand) names itself; a row without source headers is named by headerlessSource, its line being its offset.
 */
function provenance(values: Readonly<Record<string, string>>, fields: Record<string, string>, line: number, batchFile: string) {
  const topic = values._topic || null;
  const partition = int(values._partition);
  const offset = values._offset && /^\d+$/.test(values._offset) && BigInt(values._offset) <= BIGINT_MAX ? values._offset : null;
  const source = values._source_file || (topic !== null ? headerlessSource(topic, partition, fields, values) : batchFile);
  return {
    source_file: sourceName(storable(source)),
    source_line: int(values._source_line) ?? (values._source_file ? null : int(values._offset)) ?? line,
    source_lines: int(values._source_lines) ?? 1,
    kafka_topic: topic === null ? null : storable(topic),
    kafka_partition: partition,
    kafka_offset: offset,
    batch_file: batchFile,
  };
}
type Transformed = { candidates: Candidate[]; rejected: RejectedRow[]; duplicates: number };
type Provenance = ReturnType<typeof provenance>;
/** A rejection's own fields, beside where its row came from. */
type Rejection = Omit<RejectedRow, keyof Provenance>;

/**
 * Extract + transform for one parsed batch file: each record becomes an order candidate, a rejected row or an
 * in-file duplicate. Pure (no I/O), so tests call it directly.
 */
export function transform(parsed: { columns: readonly string[]; rows: readonly ParsedRow[] }, batchFile: string): Transformed {
  const transformer = createTransformer(parsed.columns, batchFile);
  for (const row of parsed.rows) transformer.add(row);
  const { candidates, rejected, duplicates } = transformer.take();
  return { candidates: [...candidates], rejected: [...rejected], duplicates };
}

/**
 * The identities of a file's candidates so far, each with its line and fingerprint: all a later record needs
 * to be judged a duplicate or a conflict. Numbers in arrays and one string per row, no object per row: a
 * 100,000-row file keeps a few MB here, not its rows.
 */
class FileKeys {
  private readonly bySource = new Map<string, Map<number, number>>();
  private readonly lines: number[] = [];
  private readonly hashes: string[] = [];

  /** The line and fingerprint of the first candidate of `source` with `rowId`, or undefined (and it is taken). */
  claim(source: string, rowId: number, line: number, hash: string): { line: number; hash: string } | undefined {
    let ids = this.bySource.get(source);
    if (ids === undefined) this.bySource.set(source, (ids = new Map()));
    const at = ids.get(rowId);
    if (at !== undefined) return { line: this.lines[at]!, hash: this.hashes[at]! };
    ids.set(rowId, this.lines.length);
    this.lines.push(line);
    this.hashes.push(hash);
    return undefined;
  }
}

/** What a transformer has taken of one file: the keys of all of it, the records of the current chunk. */
interface FileSeen {
  readonly keys: FileKeys;
  /** each rejected line with its content */
  readonly rejectedLines: Set<string>;
  /** the chunk's candidates and rejected rows in the order of the file */
  sequence: (Candidate | RejectedRow)[];
  /** the chunk's records that repeat an earlier record of the file */
  duplicates: number;
  /** the chunk's records */
  records: number;
}

/** A header and the columns of one field spelled more than one way: the file's, or a row's own. */
interface RowLayout {
  readonly header: HeaderMap;
  readonly spellings: Spelling[];
}

/** transform, one record at a time; take() hands over the records added since the last take(). */
function createTransformer(columns: readonly string[], batchFile: string): { add: (row: ParsedRow) => void; take: (chars?: number) => Chunk } {
  const sourceColumns = columns.filter((c) => c !== EXTRA_COLUMN && !(META_COLUMNS as readonly string[]).includes(c));
  const spellings = spellingsOf(sourceColumns);
  let header: HeaderMap;
  try {
    header = mapHeader(sourceColumns.filter((c) => !spellings.some((s) => s.others.includes(c))));
  } catch (error) {
    throw new BadBatchFileError((error as Error).message);
  }
  const seen: FileSeen = { keys: new FileKeys(), rejectedLines: new Set(), sequence: [], duplicates: 0, records: 0 };
  const add = ({ line, values }: ParsedRow): void => {
    seen.records++;
    const fields = sourceFields(values, sourceColumns);
    const extraProblem = values._extra ? addExtra(fields, values._extra) : undefined;
    const base = provenance(values, fields, line, batchFile);
    if (values._error) return addRejection(seen, base, unsplittable(values));
    const { clean, merged, layout } = cleanFields(fields, values, extraProblem, { header, spellings });
    if (!clean.ok) {
      const id = layout.header.rowId === undefined ? null : int(merged[layout.header.rowId]?.trim(), Number.MAX_SAFE_INTEGER);
      return addRejection(seen, base, { source_row_id: id, reason: clean.reason, fields: storableFields(fields), raw_text: null });
    }
    addCandidate(seen, orderRow(clean.row, base), base, fields);
  };
  const take = (chars = 0): Chunk => {
    const { sequence, duplicates, records } = seen;
    Object.assign(seen, { sequence: [], duplicates: 0, records: 0 });
    return {
      chars,
      records,
      candidates: sequence.filter((item): item is Candidate => "key" in item),
      rejected: sequence.filter((item): item is RejectedRow => !("key" in item)),
      duplicates,
      sequence,
    };
  };
  return { add, take };
}

/** The rejection of a line the producer could not split into fields: its raw text, no fields. */
function unsplittable(values: Readonly<Record<string, string>>): Rejection {
  const raw = values._raw ?? null;
  return {
    source_row_id: null,
    reason: `line could not be split into fields: ${values._error}`,
    fields: null,
    raw_text: raw === null ? null : storable(raw),
  };
}

/**
 * A record's fields cleaned. A row with fields in _extra has a header of its own; the others share the file's.
 * A field spelled more than one way is merged first; a problem with _extra or the spellings rejects the row.
 */
function cleanFields(fields: Record<string, string>, values: Readonly<Record<string, string>>, extraProblem: string | undefined, file: RowLayout) {
  const layout: RowLayout = values._extra && extraProblem === undefined ? rowHeader(Object.keys(fields)) : file;
  const { merged, problem } = layout.spellings.length === 0 ? { merged: fields, problem: undefined } : mergeSpellings(fields, layout.spellings);
  const clean: CleanResult = (extraProblem ?? problem) === undefined ? cleanRow(merged, layout.header) : { ok: false as const, reason: (extraProblem ?? problem)! };
  return { clean, merged, layout };
}

/** The orders row of a cleaned record: its values, its identity and fingerprint, and where it came from. */
function orderRow(clean: CleanRow, base: Provenance): OrderRow {
  const { values: cleaned, extra, warnings } = clean;
  return {
    ...cleaned,
    // objects, not JSON text: postgres.js and copyValue serialize them
    extra,
    warnings,
    row_hash: rowHash(cleaned, extra),
    source_file: base.source_file,
    source_row_id: clean.rowId ?? base.source_line,
    source_line: base.source_line,
    kafka_topic: base.kafka_topic,
    kafka_partition: base.kafka_partition,
    kafka_offset: base.kafka_offset,
    batch_file: base.batch_file,
  } as OrderRow;
}

/**
 * Records a rejection. The same line delivered twice in one file (a re-sent batch) is one rejection and one
 * duplicate; another version of it is a rejection of its own (the later one is kept, as from a later file).
 */
function addRejection(seen: FileSeen, base: Provenance, row: Rejection): void {
  const at = `${identity(base.source_file, `line ${base.source_line}`)}\u0000${JSON.stringify([row.fields, row.raw_text])}`;
  if (seen.rejectedLines.has(at)) seen.duplicates++;
  else {
    seen.rejectedLines.add(at);
    seen.sequence.push({ ...base, ...row });
  }
}

/**
 * Takes a cleaned record as a candidate, unless an earlier record of the file has its identity: then it is a
 * duplicate when its values are the same too, and a rejection when they differ (the earlier one stays).
 */
function addCandidate(seen: FileSeen, row: OrderRow, base: Provenance, fields: Record<string, string>): void {
  const key = identity(base.source_file, row.source_row_id as number);
  const twin = seen.keys.claim(base.source_file, row.source_row_id as number, row.source_line as number, row.row_hash as string);
  if (twin === undefined) seen.sequence.push({ row, key, lines: base.source_lines, fields });
  else if (twin.hash === row.row_hash) seen.duplicates++;
  else {
    addRejection(seen, base, {
      source_row_id: row.source_row_id as number,
      reason: `Row ID ${row.source_row_id} repeats line ${twin.line} of ${base.source_file} with other values`,
      fields: storableFields(fields),
      raw_text: null,
    });
  }
}

/** Records transformed between two turns of the event loop while a file is prepared. */
const RECORDS_PER_TURN = 100;

const GAP_KINDS: readonly GapKind[] = ["deleted", "recreated"];

/** One row of a gap file as a range; throws BadBatchFileError naming the line for anything else. */
function lostRange({ line, values: v }: ParsedRow): LostRange {
  const bad = (what: string) => new BadBatchFileError(`line ${line}: ${what}`);
  const offset = (text: string | undefined) => (text !== undefined && /^\d{1,19}$/.test(text) && BigInt(text) <= BIGINT_MAX ? BigInt(text) : undefined);
  const partition = int(v.partition);
  const first = offset(v.first_offset);
  const last = v.last_offset === "" ? null : offset(v.last_offset);
  if (!v.topic || partition === null || first === undefined || last === undefined) throw bad("topic, partition and offsets are not a range");
  if (last !== null && last < first) throw bad(`last_offset ${last} is before first_offset ${first}`);
  if (!GAP_KINDS.includes(v.kind as GapKind)) throw bad(`kind ${JSON.stringify(v.kind)} is not ${GAP_KINDS.join(" or ")}`);
  return { topic: storable(v.topic), partition, first, last, kind: v.kind as GapKind, group: storable(v.consumer_group ?? ""), reason: storable(v.reason ?? "") };
}

/** A chunk holds at most this many records... */
export const CHUNK_RECORDS = 2500;
/** ...and at most this many characters of the file (wide rows make smaller chunks). */
export const CHUNK_CHARS = 2 * 1024 * 1024;
/** How much of the file is read from disk at a time. */
const READ_BYTES = 1024 * 1024;

/**
 * A file's bytes a block of READ_BYTES at a time; a file no bigger than a block in one read of its size (a
 * stream would take a block's buffer for it, a megabyte per small file).
 */
async function* blocksOf(path: string): AsyncGenerator<Uint8Array> {
  const file = Bun.file(path);
  if (file.size <= READ_BYTES) {
    yield await file.bytes();
    return;
  }
  for await (const block of createReadStream(path, { highWaterMark: READ_BYTES })) yield block as Buffer;
}

/** A run of whole records of a file's text, and the line it starts on. */
interface Piece {
  readonly text: string;
  readonly line: number;
}

/** Line ends in `text` as the CSV readers count them: LF, CRLF and a lone CR are one each. */
function lineEnds(text: string): number {
  let n = 0;
  for (let at = text.indexOf("\n"); at !== -1; at = text.indexOf("\n", at + 1)) n++;
  if (text.includes("\r")) n += text.match(/\r(?!\n)/g)?.length ?? 0;
  return n;
}

/**
 * A file's text read from disk a block at a time, hashed on the way (`hasher`), and cut into pieces of whole
 * records: a record ends at a line end outside quotes (a quote counts the same wherever it is, as both CSV
 * readers agree for the files that parse), so a piece holds at most `maxRecords` records or about `maxChars`
 * characters, and never the whole file. The first piece starts with the header. Throws on text that is not UTF-8.
 * With `held`, the file's bytes as checkFile read them, the text is cut from those and the disk is not read.
 */
export async function* readPieces(
  path: string,
  hasher: Bun.CryptoHasher | undefined,
  maxRecords = CHUNK_RECORDS,
  maxChars = CHUNK_CHARS,
  held?: Uint8Array,
): AsyncGenerator<Piece> {
  const decoder = new TextDecoder("utf-8", { fatal: true });
  let text = "";
  let scan = 0; // where the search for the next line end goes on
  let quoted = false; // inside quotes at `scan`
  let cut = 0; // the end of the last whole record found
  let quote = -1; // the next quote at or after `scan`, -1 for none in `text`
  let records = 0;
  let line = 1;
  const emit = (end: number): Piece => {
    const piece = { text: text.slice(0, end), line };
    line += lineEnds(piece.text);
    text = text.slice(end);
    scan -= end;
    if (quote !== -1) quote -= end;
    cut = 0;
    records = 0;
    return piece;
  };
  for await (const block of held === undefined ? blocksOf(path) : [held]) {
    hasher?.update(block);
    text += decoder.decode(block, { stream: true });
    if (quote === -1) quote = text.indexOf('"', scan);
    for (let end = text.indexOf("\n", scan); end !== -1; end = text.indexOf("\n", scan)) {
      // One forward scan for quotes over the whole text, however rare they are.
      for (; quote !== -1 && quote < end; quote = text.indexOf('"', quote + 1)) quoted = !quoted;
      scan = end + 1;
      if (quoted) continue;
      cut = scan;
      if (++records >= maxRecords || cut >= maxChars) yield emit(cut);
    }
    if (cut > 0 && text.length - cut >= maxChars) yield emit(cut);
  }
  text += decoder.decode();
  if (text !== "" || line === 1) yield emit(text.length);
}

/**
 * The records of one piece, with the lines they have in the file. A piece after the first is read with the
 * file's header in front, so each record is checked against the header as if the file were read whole.
 */
function parsePiece(piece: Piece, header: { text: string; lines: number } | undefined, path: string): ParsedCsv {
  if (header === undefined) return parseCsv(piece.text, path);
  const parsed = parseCsv(header.text + piece.text, path);
  const shift = piece.line - header.lines - 1;
  for (const row of parsed.rows) (row as { line: number }).line += shift;
  return parsed;
}

/** The header record's text of a file's first piece, and the lines it spans. */
function headerOf(piece: Piece, columns: number): { text: string; lines: number } {
  // The header ends at the first line end outside quotes: the first piece was cut on such ends.
  let quoted = false;
  for (let at = 0; at < piece.text.length; at++) {
    const c = piece.text[at];
    if (c === '"') quoted = !quoted;
    else if (c === "\n" && !quoted) {
      const text = piece.text.slice(0, at + 1);
      return { text, lines: lineEnds(text) };
    }
  }
  return { text: `${piece.text}\n`, lines: columns > 0 ? 1 : 0 };
}

/** Parsed records of a file, a piece at a time, with the columns of its header. */
async function* readRecords(
  path: string,
  hasher: Bun.CryptoHasher | undefined,
  limits: ChunkLimits,
  held: Uint8Array | undefined,
): AsyncGenerator<ParsedCsv & { chars: number }> {
  let header: { text: string; lines: number } | undefined;
  for await (const piece of readPieces(path, hasher, limits.maxRecords, limits.maxChars, held)) {
    const parsed = parsePiece(piece, header, path);
    header ??= headerOf(piece, parsed.columns.length);
    yield Object.assign(parsed, { chars: piece.text.length });
  }
}

/** A gap file: its ranges of lost offsets, checked, and no records. */
function prepareGapFile(name: string, hash: string, text: string, path: string): PreparedFile {
  const parsed = parseCsv(text, path);
  if (parsed.columns.join() !== GAP_COLUMNS.join()) throw new BadBatchFileError(`a gap file has the columns ${GAP_COLUMNS.join(",")}`);
  const lost = parsed.rows.map(lostRange);
  const chunks = async function* (): AsyncGenerator<Chunk> {};
  return { name, hash, chars: 0, records: 0, candidates: [], rejected: [], duplicates: 0, sequence: [], lost, chunks };
}

/** The hash in a file's name, when it has one (the consumer's batch and gap files). */
function expectedHash(name: string): string | undefined {
  return (parseBatchFileName(name) ?? parseGapFileName(name))?.hash;
}

/**
 * The bytes of a file of one read block, kept from its check to its load, with how the file looked before they
 * were read: its size, inode and change times to the nanosecond. Any write to the file after that look
 * changes its ctime (the kernel sets it; no tool can set it back), so while the file looks the same, the
 * bytes kept are its content, and its chunks are cut from them without reading or hashing it again. A file
 * that looks otherwise is read and hashed again from disk, as a bigger file always is (FileChangedError when its
 * content is no longer the one checked).
 */
interface Held {
  readonly bytes: Uint8Array;
  readonly look: Look;
}

type Look = Pick<BigIntStats, "size" | "ino" | "mtimeNs" | "ctimeNs">;

async function lookOf(path: string): Promise<Look> {
  const { size, ino, mtimeNs, ctimeNs } = await stat(path, { bigint: true });
  return { size, ino, mtimeNs, ctimeNs };
}

/** The bytes a held file's chunks are cut from: its held bytes while it looks as it did, else undefined (read it). */
async function heldBytes(path: string, held: Held | undefined): Promise<Uint8Array | undefined> {
  if (held === undefined) return undefined;
  const now = await lookOf(path).catch(() => undefined); // gone: read from disk, which says so as before
  const { look } = held;
  const same = now !== undefined && now.size === look.size && now.ino === look.ino && now.mtimeNs === look.mtimeNs && now.ctimeNs === look.ctimeNs;
  return same ? held.bytes : undefined;
}

/**
 * Checks a batch file: its content (hashed as it is read from disk) against the hash in its name. A file of
 * one read block is read whole and its bytes are kept for its load (Held); a bigger one is hashed a block at a
 * time and not kept. Whether its records read is found as it is loaded (readChunks). Throws BadBatchFileError
 * for a file that does not match its name.
 */
export async function checkFile(dir: string, name: string): Promise<CheckedFile> {
  const path = join(dir, name);
  if (parseGapFileName(name)) return prepareFile(dir, name);
  // The look first, then the bytes: a write after the look changes it, so the bytes match any look still the same.
  const look = await lookOf(path);
  let held: Held | undefined;
  const hasher = new Bun.CryptoHasher("sha256");
  if (look.size <= READ_BYTES) {
    const bytes = await Bun.file(path).bytes();
    hasher.update(bytes);
    // Grown past a block meanwhile: not kept (its look has changed anyway), read again as it loads.
    if (bytes.length <= READ_BYTES) held = { bytes, look };
  } else {
    for await (const block of blocksOf(path)) hasher.update(block);
  }
  const hash = hasher.digest("hex");
  const expected = expectedHash(name);
  if (expected && !hash.startsWith(expected)) {
    throw new BadBatchFileError("content does not match the hash in its name (truncated or edited after it was written)");
  }
  return { name, hash, lost: [], chunks: (limits = {}) => readChunks(dir, name, hash, limits, held) };
}

/**
 * The error of a file whose records do not read: FileChangedError when its content is no longer the one
 * checked, else BadBatchFileError as reading it whole words it (the line of the file, not of a piece).
 */
async function explainProblem(path: string, name: string, hash: string, problem: Error, held: Uint8Array | undefined): Promise<Error> {
  const bytes = held ?? (await Bun.file(path).bytes().catch(() => undefined));
  if (bytes === undefined || sha256(bytes) !== hash) return new FileChangedError(name, `no longer reads as it did when it was checked (${problem.message})`);
  let message = problem.message;
  if (!(problem instanceof BadBatchFileError)) {
    try {
      parseCsv(new TextDecoder("utf-8", { fatal: true }).decode(bytes), path);
    } catch (whole) {
      message = (whole as Error).message;
    }
  }
  return Object.assign(new BadBatchFileError(message), { file: name });
}

/**
 * A checked file's records, transformed, chunk by chunk: from the bytes checkFile kept while the file still
 * looks as it did then, else read from disk and hashed as they are read: a file that is not the one checked
 * (`hash`) ends in FileChangedError, before the transaction commits. One whose records do not read ends in
 * BadBatchFileError naming the file.
 */
async function* readChunks(dir: string, name: string, hash: string, limits: ChunkLimits, held?: Held): AsyncGenerator<Chunk> {
  const path = join(dir, name);
  const bytes = await heldBytes(path, held);
  const hasher = bytes === undefined ? new Bun.CryptoHasher("sha256") : undefined;
  let transformer: ReturnType<typeof createTransformer> | undefined;
  const pieces = readRecords(path, hasher, limits, bytes);
  for (;;) {
    let next: IteratorResult<ParsedCsv & { chars: number }>;
    try {
      next = await pieces.next();
      if (!next.done) transformer ??= createTransformer(next.value.columns, name);
    } catch (error) {
      throw await explainProblem(path, name, hash, error as Error, bytes);
    }
    if (next.done) break;
    // The previous chunk's rows go to PostgreSQL meanwhile: give the event loop a turn now and then, so its
    // statements and COPY data go out while this chunk is cleaned.
    for (const [i, row] of next.value.rows.entries()) {
      transformer!.add(row);
      if (i % RECORDS_PER_TURN === RECORDS_PER_TURN - 1) await new Promise((turn) => setImmediate(turn));
    }
    yield transformer!.take(next.value.chars);
  }
  if (hasher !== undefined && hasher.digest("hex") !== hash) throw new FileChangedError(name, "its content changed after it was checked");
}

/** Extract + transform of one file, whole (tests, the bench). Throws BadBatchFileError for a file that is not a readable batch. */
export async function prepareFile(dir: string, name: string): Promise<PreparedFile> {
  const path = join(dir, name);
  if (parseGapFileName(name)) {
    const bytes = await Bun.file(path).bytes();
    const hash = sha256(bytes);
    if (!hash.startsWith(expectedHash(name)!)) throw new BadBatchFileError("content does not match the hash in its name (truncated or edited after it was written)");
    try {
      return prepareGapFile(name, hash, new TextDecoder("utf-8", { fatal: true }).decode(bytes), path);
    } catch (error) {
      throw error instanceof BadBatchFileError ? error : new BadBatchFileError((error as Error).message);
    }
  }
  const checked = await checkFile(dir, name);
  const whole = { chars: 0, records: 0, candidates: [] as Candidate[], rejected: [] as RejectedRow[], duplicates: 0, sequence: [] as (Candidate | RejectedRow)[] };
  for await (const chunk of checked.chunks()) {
    whole.chars += chunk.chars;
    whole.records += chunk.records;
    whole.candidates.push(...chunk.candidates);
    whole.rejected.push(...chunk.rejected);
    whole.duplicates += chunk.duplicates;
    whole.sequence.push(...chunk.sequence);
  }
  return { ...checked, ...whole };
}

/** A checked file's chunks of at most `maxRecords` records (tests of the chunking). */
export function chunksOf(_dir: string, file: CheckedFile, maxRecords: number, maxChars?: number): AsyncIterable<Chunk> {
  return file.chunks({ maxRecords, maxChars });
}
