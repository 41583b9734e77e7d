// A source file as text lines: where it comes from (a file, standard input, a pipe), which encoding it is in,
// and where its lines end. Everything that reads a CSV from outside the pipeline starts here.
//
// - openInput: a regular file is read where it lies; standard input ("-"), a pipe, a FIFO or a device is
//   first copied to a temporary file, because the encoding is known only after reading to the end.
// - detectEncoding: UTF-8 (with or without BOM), UTF-16 with a BOM, else Windows-1252, the encoding of the
//   Kaggle download. What none of them reads correctly is refused before anything is sent, naming the line:
//   UTF-32, UTF-16 without a BOM, a ZIP/gzip/PDF file, bytes undefined in Windows-1252 (another legacy
//   encoding), or a file that mixes UTF-8 with other bytes (decoding it either way would garble text).
// - readLines: a line ends at LF, CRLF or CR, as in "universal newlines"; each line keeps its own ending, so
//   a record spanning lines is put back together exactly as written.

import { createWriteStream } from "node:fs";
import { mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";

export type Encoding = "utf-8" | "windows-1252" | "utf-16le" | "utf-16be";

/** Records (and lines) longer than this many characters are broken; the raw text keeps a prefix. */
export const MAX_RECORD_CHARS = 256 * 1024;
/** How much of an over-long line is kept as raw text for the rejected-rows record. */
export const KEPT_CHARS = 64 * 1024;

/** Thrown for input that cannot be read correctly; the message names the file and the line. */
export class UnreadableInputError extends Error {
  override name = "UnreadableInputError";
}

export interface Input {
  /** a regular file holding the input */
  readonly path: string;
  /** what the user named: the path, or "-" for standard input */
  readonly name: string;
  /** removes the temporary copy of a stream, if one was made */
  close(): Promise<void>;
}

/** Names of standard input itself: read through the process, since a socket cannot be opened by name. */
const STDIN_NAMES = new Set(["-", "/dev/stdin", "/dev/fd/0", "/proc/self/fd/0"]);

/** Opens `name` ("-" is standard input) as a regular file, copying a stream to a temporary file first. */
export async function openInput(name: string, stdin: NodeJS.ReadableStream = process.stdin): Promise<Input> {
  const isStdin = STDIN_NAMES.has(name);
  if (!isStdin) {
    let info;
    try {
      info = await stat(name);
    } catch {
      throw new UnreadableInputError(`${name}: no such file`);
    }
    if (info.isFile()) return { path: name, name, close: async () => undefined };
    if (info.isDirectory()) throw new UnreadableInputError(`${name}: is a folder, not a file`);
  }
  const dir = await mkdtemp(join(tmpdir(), "sales-input-"));
  const path = join(dir, "input.csv");
  const source = isStdin ? stdin : Readable.fromWeb(Bun.file(name).stream() as never);
  await pipeline(source, createWriteStream(path));
  return { path, name, close: () => rm(dir, { recursive: true, force: true }) };
}

export interface EncodingReport {
  readonly encoding: Encoding;
  readonly bom: boolean;
  /** line count (LF, CRLF or CR), for progress */
  readonly lines: number;
}

const UTF8_BOM = [0xef, 0xbb, 0xbf];
/** Bytes Windows-1252 leaves undefined: common lead bytes of Shift-JIS, GBK, Big5 and the like. */
const CP1252_UNDEFINED = new Set([0x81, 0x8d, 0x8f, 0x90, 0x9d]);

const starts = (chunk: Uint8Array, bytes: number[]) => bytes.every((b, i) => chunk[i] === b);

/** What the first bytes say about a file that is not text we read, or undefined. */
function refuseByMagic(head: Uint8Array): string | undefined {
  if (starts(head, [0xff, 0xfe, 0, 0]) || starts(head, [0, 0, 0xfe, 0xff])) return "is UTF-32, which is not read here: save it as UTF-8";
  if (starts(head, [0x50, 0x4b, 0x03, 0x04])) return "is a ZIP archive (an Excel .xlsx file?), not CSV text: save it as CSV (UTF-8)";
  if (starts(head, [0x1f, 0x8b])) return "is gzip-compressed: decompress it first";
  if (starts(head, [0x25, 0x50, 0x44, 0x46])) return "is a PDF document, not CSV text";
  if (starts(head, [0xff, 0xfe]) || starts(head, [0xfe, 0xff])) return undefined; // UTF-16 with a BOM
  const sample = head.subarray(0, 4096);
  let zeros = 0;
  for (const b of sample) if (b === 0) zeros++;
  // A NUL in a row is that row's problem; NULs everywhere mean UTF-16 without a BOM, or not text at all.
  if (sample.length >= 16 && zeros > sample.length / 10) {
    return "has a 0 byte in every other position: UTF-16 without a byte-order mark, or not text; save it as UTF-8";
  }
  return undefined;
}

/** Counts line ends (LF, CRLF or a lone CR) across chunks, and a last line without one. */
class LineCounter {
  private ends = 0;
  private previous = -1;

  push(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    for (let i = chunk.indexOf(10); i !== -1; i = chunk.indexOf(10, i + 1)) this.ends++;
    // Lone CRs (old Mac line ends) are rare: look for them only when the chunk has a CR at all.
    if (this.previous === 13 && chunk[0] !== 10) this.ends++;
    if (chunk.indexOf(13) !== -1) {
      for (let i = 0; i < chunk.length - 1; i++) if (chunk[i] === 13 && chunk[i + 1] !== 10) this.ends++;
    }
    this.previous = chunk[chunk.length - 1]!;
  }

  get lines(): number {
    if (this.previous === -1) return 0;
    return this.ends + (this.previous === 13 ? 1 : this.previous === 10 ? 0 : 1);
  }
}

/**
 * Scans the bytes once: where is the first byte that is not UTF-8, the first multi-byte UTF-8 character, the
 * first byte undefined in Windows-1252? Also counts lines.
 */
async function scan(path: string) {
  const counter = new LineCounter();
  let line = 1;
  let need = 0; // continuation bytes still expected
  let lower = 0x80;
  let upper = 0xbf;
  let firstInvalid: number | undefined;
  let firstMultibyte: number | undefined;
  let firstUndefined: number | undefined;
  let multibyte = 0;
  let invalid = 0;
  let previous = 0;
  // Runs of 4+ bytes >= 0x80: rare in Western text, the norm in double-byte encodings (every character 2 bytes).
  let run = 0;
  let high = 0;
  let inLongRuns = 0;
  let firstLongRun: number | undefined;
  for await (const chunk of Bun.file(path).stream()) {
    counter.push(chunk);
    // An index, not for...of: the iterator costs more than everything below for a byte.
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i]!;
      if (b >= 0x80) {
        high++;
        if (++run === 4) {
          inLongRuns += 4;
          firstLongRun ??= line;
        } else if (run > 4) inLongRuns++;
      } else run = 0;
      // A byte starts a new line after an LF, or after a CR that is not followed by LF.
      if (previous === 10 || (previous === 13 && b !== 10)) line++;
      previous = b;
      if (b >= 0x80 && CP1252_UNDEFINED.has(b)) firstUndefined ??= line;
      if (need > 0) {
        const inRange = b >= lower && b <= upper;
        lower = 0x80;
        upper = 0xbf;
        if (inRange) {
          if (--need === 0) {
            firstMultibyte ??= line;
            multibyte++;
          }
          continue;
        }
        firstInvalid ??= line;
        invalid++;
        need = 0; // and read this byte again as the start of a character
      }
      if (b < 0x80) continue;
      if (b >= 0xc2 && b <= 0xdf) need = 1;
      else if (b >= 0xe0 && b <= 0xef) {
        need = 2;
        if (b === 0xe0) lower = 0xa0;
        if (b === 0xed) upper = 0x9f;
      } else if (b >= 0xf0 && b <= 0xf4) {
        need = 3;
        if (b === 0xf0) lower = 0x90;
        if (b === 0xf4) upper = 0x8f;
      } else {
        firstInvalid ??= line;
        invalid++;
      }
    }
  }
  if (need > 0) firstInvalid ??= line;
  const doubleByte = inLongRuns >= 8 && inLongRuns >= high / 4 ? firstLongRun : undefined;
  // UTF-8 characters in numbers that rival the bytes that are not UTF-8: a UTF-8 file with foreign bytes in it.
  // A few accidental UTF-8-shaped pairs among many bad bytes: a legacy file.
  const mixed = firstMultibyte !== undefined && multibyte >= invalid;
  return { firstInvalid, firstMultibyte, firstUndefined, doubleByte, mixed, lines: counter.lines };
}

/** Counts lines (LF, CRLF or CR) without decoding. */
export async function countLines(path: string): Promise<number> {
  const counter = new LineCounter();
  for await (const chunk of Bun.file(path).stream()) counter.push(chunk);
  return counter.lines;
}

/**
 * The file's encoding: UTF-8 when every byte sequence is UTF-8 (the runtime's own decoder checks, fast),
 * UTF-16 when it starts with a UTF-16 BOM, else Windows-1252. Throws UnreadableInputError, naming the line,
 * for input none of them reads correctly.
 */
export async function detectEncoding(path: string, name = path): Promise<EncodingReport> {
  const file = Bun.file(path);
  const head = new Uint8Array(await file.slice(0, 65_536).arrayBuffer());
  const refused = refuseByMagic(head);
  if (refused) throw new UnreadableInputError(`${name}: ${refused}`);
  if (starts(head, [0xff, 0xfe]) || starts(head, [0xfe, 0xff])) {
    const encoding = head[0] === 0xff ? "utf-16le" : "utf-16be";
    // Progress only needs an estimate: LF line ends of the decoded text.
    let lines = 0;
    for await (const text of file.stream().pipeThrough(new TextDecoderStream(encoding))) {
      for (let i = text.indexOf("\n"); i !== -1; i = text.indexOf("\n", i + 1)) lines++;
    }
    return { encoding, bom: true, lines };
  }
  const bom = starts(head, UTF8_BOM);
  const decoder = new TextDecoder("utf-8", { fatal: true });
  let valid = true;
  try {
    for await (const chunk of file.stream()) decoder.decode(chunk, { stream: true });
    decoder.decode();
  } catch {
    valid = false;
  }
  if (valid) return { encoding: "utf-8", bom, lines: await countLines(path) };
  const found = await scan(path);
  if (bom || found.mixed) {
    throw new UnreadableInputError(
      `${name}: line ${found.firstInvalid}: bytes that are not UTF-8, in a file that is UTF-8 ` +
        `${bom ? "(it starts with a UTF-8 byte-order mark)" : `from line ${found.firstMultibyte}`}: ` +
        "read either way, part of it would be garbled; fix or re-save the file as UTF-8",
    );
  }
  if (found.firstUndefined !== undefined) {
    throw new UnreadableInputError(
      `${name}: line ${found.firstUndefined}: bytes that are neither UTF-8 nor Windows-1252 ` +
        "(another encoding, such as Shift-JIS or GBK?): re-save the file as UTF-8",
    );
  }
  if (found.doubleByte !== undefined) {
    throw new UnreadableInputError(
      `${name}: line ${found.doubleByte}: long runs of non-ASCII bytes that are not UTF-8: the file looks like a ` +
        "multi-byte encoding such as Shift-JIS, GBK or Big5, not Windows-1252; re-save it as UTF-8 " +
        "(or pass --encoding windows-1252 if it really is)",
    );
  }
  return { encoding: "windows-1252", bom: false, lines: found.lines };
}

export interface Line {
  /** 1-based line number in the file */
  readonly number: number;
  /** text without its line ending */
  readonly text: string;
  /** the line ending that followed: "\n", "\r\n", "\r", or "" at the end of the file */
  readonly end: string;
  /** set when the line was longer than MAX_RECORD_CHARS: its full length; `text` holds a prefix */
  readonly overLength?: number;
}

/**
 * Streams decoded lines; a byte-order mark is dropped by the decoder. A line ends at LF, CRLF or CR; a CR at
 * the end of one chunk waits for the next, so a CRLF split across reads stays one line end.
 */
export async function* readLines(path: string, encoding: Encoding): AsyncGenerator<Line> {
  const decoder = new TextDecoderStream(encoding, { fatal: encoding === "utf-8" });
  let number = 1;
  let partial = "";
  let overLength = 0; // > 0 while skipping the rest of an over-long line
  let pendingCR = false; // the previous chunk ended with CR: its line ends "\r" or "\r\n"
  const emit = (piece: string, end: string): Line => {
    let line: Line;
    if (overLength > 0) line = { number, text: partial, end, overLength: overLength + piece.length };
    else {
      const text = partial + piece;
      line = text.length > MAX_RECORD_CHARS ? { number, text: text.slice(0, KEPT_CHARS), end, overLength: text.length } : { number, text, end };
    }
    number++;
    partial = "";
    overLength = 0;
    return line;
  };
  try {
    for await (const chunk of Bun.file(path).stream().pipeThrough(decoder)) {
      let start = 0;
      if (pendingCR) {
        pendingCR = false;
        if (chunk.startsWith("\n")) {
          yield emit("", "\r\n");
          start = 1;
        } else yield emit("", "\r");
      }
      let lf = chunk.indexOf("\n", start);
      let cr = chunk.indexOf("\r", start);
      while (lf !== -1 || cr !== -1) {
        if (cr !== -1 && (lf === -1 || cr < lf)) {
          if (cr === chunk.length - 1) {
            // CR at the very end of the chunk: CRLF or a lone CR, the next chunk tells.
            if (overLength > 0) overLength += cr - start;
            else {
              partial += chunk.slice(start, cr);
              if (partial.length > MAX_RECORD_CHARS) {
                overLength = partial.length;
                partial = partial.slice(0, KEPT_CHARS);
              }
            }
            pendingCR = true;
            start = chunk.length;
            break;
          }
          const crlf = chunk.charCodeAt(cr + 1) === 10;
          yield emit(chunk.slice(start, cr), crlf ? "\r\n" : "\r");
          start = cr + (crlf ? 2 : 1);
        } else {
          yield emit(chunk.slice(start, lf), "\n");
          start = lf + 1;
        }
        if (lf !== -1 && lf < start) lf = chunk.indexOf("\n", start);
        if (cr !== -1 && cr < start) cr = chunk.indexOf("\r", start);
      }
      const rest = chunk.slice(start);
      if (overLength > 0) overLength += rest.length;
      else if (partial.length + rest.length > MAX_RECORD_CHARS) {
        overLength = partial.length + rest.length;
        partial = (partial + rest).slice(0, KEPT_CHARS);
      } else partial += rest;
    }
  } catch (error) {
    // The decoder fails on a whole chunk; find the line of the bad bytes themselves for the message.
    const line = encoding === "utf-8" ? ((await scan(path)).firstInvalid ?? number) : number;
    throw new UnreadableInputError(`${path}: line ${line}: not valid ${encoding} (${(error as Error).message})`);
  }
  if (pendingCR) yield emit("", "\r");
  else if (overLength > 0 || partial !== "") yield emit("", "");
}
