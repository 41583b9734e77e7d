// A small ZIP writer (PKWARE's APPNOTE.TXT, the classic format without Zip64): enough for a Tableau packaged
// workbook (.twbx), which is a ZIP of the workbook and its data files, and for `unzip` or any other reader.
//
// Entries are written one after another, each streamed: its content comes in chunks, is deflated through
// node:zlib (or stored as it is), and its CRC-32 and sizes are counted on the way. The local header is written
// first with those three left at zero, then filled in place once the entry is complete (the sink writes at a
// position), so no data descriptor is needed: every reader finds the sizes where the oldest ones look.
// What the writer holds: one chunk of the content at a time, zlib's own buffers, and for each entry its name
// and 20 bytes for the central directory (written at the end). Nothing holds a whole entry.
//
// Names are UTF-8 (general purpose flag bit 11 when a name is not plain ASCII), relative, with "/" between
// folders; no entries are written for the folders themselves, as Tableau's own packages have none.
// Refused rather than written wrong: an entry or an archive of 4 GiB or more, or more than 65,535 entries
// (that would need Zip64), a name that is absolute or climbs out with "..", and the same name twice.

import type { FileHandle } from "node:fs/promises";
import { createDeflateRaw } from "node:zlib";

/** Where the archive goes: bytes written at a position (a file opened for writing, or memory in tests). */
export interface ZipSink {
  write(bytes: Uint8Array, position: number): Promise<void>;
}

export type ZipMethod = "deflate" | "store";

export interface ZipEntryOptions {
  /** "deflate" (the default) or "store" */
  readonly method?: ZipMethod;
  /** the time the entry shows (MS-DOS time, 2-second steps, local time as ZIP tools take it); default: now */
  readonly modified?: Date;
}

/** What was written for one entry. */
export interface ZipEntry {
  readonly name: string;
  readonly method: ZipMethod;
  readonly crc32: number;
  readonly size: number;
  readonly compressedSize: number;
  /** where its local header starts */
  readonly offset: number;
}

const LOCAL_HEADER = 0x04034b50;
const CENTRAL_HEADER = 0x02014b50;
const END_OF_CENTRAL_DIRECTORY = 0x06054b50;
/** 2.0: deflate, and folders in names */
const VERSION_NEEDED = 20;
/** made by a Unix ZIP 2.0, so the external attributes below are read as a Unix mode */
const VERSION_MADE_BY = (3 << 8) | VERSION_NEEDED;
/** a regular file, rw-r--r-- */
const UNIX_FILE_MODE = 0o100644;
const UTF8_NAMES = 0x0800;
const LIMIT = 0xffff_ffff;
const MAX_ENTRIES = 0xffff;

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** CRC-32 (ISO-HDLC, as ZIP and gzip use it) of `data`, continuing from `crc` (the CRC of what came before). */
export function crc32(data: Uint8Array, crc = 0): number {
  let c = ~crc >>> 0;
  for (let i = 0; i < data.length; i++) c = CRC_TABLE[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}

/** MS-DOS date and time of `date` in local time, as ZIP stores them; before 1980 is 1980-01-01. */
export function dosDateTime(date: Date): { readonly date: number; readonly time: number } {
  if (date.getFullYear() < 1980) return { date: (1 << 5) | 1, time: 0 };
  return {
    date: ((date.getFullYear() - 1980) << 9) | ((date.getMonth() + 1) << 5) | date.getDate(),
    time: (date.getHours() << 11) | (date.getMinutes() << 5) | (date.getSeconds() >> 1),
  };
}

/** `name` as the bytes of an entry name; throws for a name no reader should unpack (absolute, "..", "\"). */
export function entryName(name: string): Uint8Array {
  const problem =
    name === "" ? "is empty"
    : name.startsWith("/") || /^[A-Za-z]:/.test(name) ? "is absolute"
    : name.includes("\\") ? 'holds "\\" (ZIP names separate folders with "/")'
    : name.split("/").some((part) => part === ".." || part === "." || part === "") ? 'holds an empty, "." or ".." folder'
    : name.includes("\0") ? "holds a NUL character"
    : undefined;
  if (problem) throw new Error(`ZIP entry ${JSON.stringify(name)} ${problem}`);
  const bytes = new TextEncoder().encode(name);
  if (bytes.length > 0xffff) throw new Error(`ZIP entry ${JSON.stringify(name.slice(0, 40))}...: a name may have at most 65,535 bytes`);
  return bytes;
}

interface Header {
  readonly name: Uint8Array;
  readonly flags: number;
  readonly method: number;
  readonly date: number;
  readonly time: number;
  readonly crc32: number;
  readonly compressedSize: number;
  readonly size: number;
}

/** The fields both headers hold in the same order, from flags to the name's length, written at `at`. */
function putEntryFields(v: DataView, at: number, h: Header): void {
  v.setUint16(at, h.flags, true);
  v.setUint16(at + 2, h.method, true);
  v.setUint16(at + 4, h.time, true);
  v.setUint16(at + 6, h.date, true);
  v.setUint32(at + 8, h.crc32, true);
  v.setUint32(at + 12, h.compressedSize, true);
  v.setUint32(at + 16, h.size, true);
  v.setUint16(at + 20, h.name.length, true);
}

/** The local file header that comes before an entry's data. */
export function localHeader(h: Header): Uint8Array {
  const out = new Uint8Array(30 + h.name.length);
  const v = new DataView(out.buffer);
  v.setUint32(0, LOCAL_HEADER, true);
  v.setUint16(4, VERSION_NEEDED, true);
  putEntryFields(v, 6, h);
  v.setUint16(28, 0, true); // no extra field
  out.set(h.name, 30);
  return out;
}

/** An entry's record in the central directory. */
export function centralHeader(h: Header, offset: number): Uint8Array {
  const out = new Uint8Array(46 + h.name.length);
  const v = new DataView(out.buffer);
  v.setUint32(0, CENTRAL_HEADER, true);
  v.setUint16(4, VERSION_MADE_BY, true);
  v.setUint16(6, VERSION_NEEDED, true);
  putEntryFields(v, 8, h);
  // extra field, comment, disk number start and internal attributes: all zero
  v.setUint32(38, (UNIX_FILE_MODE << 16) >>> 0, true);
  v.setUint32(42, offset, true);
  out.set(h.name, 46);
  return out;
}

/** The end of central directory record, the last thing in the archive. */
export function endRecord(entries: number, directorySize: number, directoryOffset: number): Uint8Array {
  const out = new Uint8Array(22);
  const v = new DataView(out.buffer);
  v.setUint32(0, END_OF_CENTRAL_DIRECTORY, true);
  v.setUint16(8, entries, true);
  v.setUint16(10, entries, true);
  v.setUint32(12, directorySize, true);
  v.setUint32(16, directoryOffset, true);
  return out;
}

type Content = string | Uint8Array | AsyncIterable<Uint8Array>;

async function* chunksOf(content: Content): AsyncGenerator<Uint8Array> {
  if (typeof content === "string") yield new TextEncoder().encode(content);
  else if (content instanceof Uint8Array) yield content;
  else yield* content;
}

/** Writes a ZIP archive to `sink`, entry by entry: `add` each file (one at a time), then `finish`. */
export class ZipWriter {
  private position = 0;
  private readonly written: { header: Header; offset: number }[] = [];
  private readonly names = new Set<string>();
  private busy = false;
  private finished = false;

  constructor(private readonly sink: ZipSink) {}

  /** Adds the file `name` with `content` (text as UTF-8, bytes, or chunks as they come, e.g. a file's stream). */
  async add(name: string, content: Content, options: ZipEntryOptions = {}): Promise<ZipEntry> {
    if (this.busy || this.finished) throw new Error(`ZIP entry ${name}: ${this.finished ? "the archive is finished" : "another entry is still being written"}`);
    if (this.names.has(name)) throw new Error(`ZIP entry ${name} is there already`);
    if (this.written.length >= MAX_ENTRIES) throw new Error(`ZIP entry ${name}: an archive without Zip64 holds at most ${MAX_ENTRIES} entries`);
    const bytes = entryName(name);
    this.busy = true;
    try {
      const method = options.method ?? "deflate";
      const offset = this.position;
      const { date, time } = dosDateTime(options.modified ?? new Date());
      const blank: Header = { name: bytes, flags: /^[\x20-\x7e]*$/.test(name) ? 0 : UTF8_NAMES, method: method === "deflate" ? 8 : 0, date, time, crc32: 0, compressedSize: 0, size: 0 };
      await this.emit(localHeader(blank));
      const counted = await this.writeData(name, chunksOf(content), method);
      const header = { ...blank, ...counted };
      // The sizes and CRC are known now: they go into the local header in place (offset 14: crc, sizes).
      await this.sink.write(localHeader(header).subarray(14, 26), offset + 14);
      this.written.push({ header, offset });
      this.names.add(name);
      return { name, method, crc32: header.crc32, size: header.size, compressedSize: header.compressedSize, offset };
    } finally {
      this.busy = false;
    }
  }

  /** Writes the central directory and the end record; returns the archive's size in bytes. */
  async finish(): Promise<number> {
    if (this.busy) throw new Error("cannot finish the ZIP archive while an entry is being written");
    if (this.finished) return this.position;
    const directoryOffset = this.position;
    for (const { header, offset } of this.written) await this.emit(centralHeader(header, offset));
    await this.emit(endRecord(this.written.length, this.position - directoryOffset, directoryOffset), "the archive");
    this.finished = true;
    return this.position;
  }

  private async emit(bytes: Uint8Array, what = "the archive"): Promise<void> {
    if (this.position + bytes.length > LIMIT) throw new Error(`${what} would reach 4 GiB, past what a ZIP without Zip64 can address`);
    await this.sink.write(bytes, this.position);
    this.position += bytes.length;
  }

  /** Streams an entry's data to the sink, deflated or stored; returns its CRC-32 and sizes. */
  private async writeData(name: string, chunks: AsyncIterable<Uint8Array>, method: ZipMethod): Promise<Pick<Header, "crc32" | "size" | "compressedSize">> {
    let crc = 0;
    let size = 0;
    let compressedSize = 0;
    const what = `ZIP entry ${name}`;
    const out = async (bytes: Uint8Array) => {
      compressedSize += bytes.length;
      await this.emit(bytes, what);
    };
    const count = (chunk: Uint8Array) => {
      crc = crc32(chunk, crc);
      size += chunk.length;
      if (size > LIMIT) throw new Error(`${what} reaches 4 GiB, past what a ZIP without Zip64 can hold`);
    };
    if (method === "store") {
      for await (const chunk of chunks) {
        count(chunk);
        await out(chunk);
      }
      return { crc32: crc, size, compressedSize };
    }
    const deflate = createDeflateRaw({ level: 6 });
    // Fed and drained at the same time: zlib holds a bounded buffer, and feeding waits while it is full. When
    // the output side fails (the sink), the stream is destroyed and feeding stops reading the content.
    const feeding = (async () => {
      for await (const chunk of chunks) {
        if (deflate.destroyed) return;
        count(chunk);
        if (!deflate.write(chunk)) await drained(deflate);
      }
      deflate.end();
    })().catch((error: unknown) => {
      deflate.destroy(error as Error);
      throw error;
    });
    try {
      for await (const compressed of deflate) await out(compressed as Uint8Array);
    } catch (error) {
      deflate.destroy();
      await feeding.catch(() => undefined);
      throw error;
    }
    await feeding;
    return { crc32: crc, size, compressedSize };
  }
}

/** Resolves when `stream` takes writes again, or is closed. */
function drained(stream: NodeJS.WritableStream & NodeJS.EventEmitter): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      stream.off("drain", done);
      stream.off("close", done);
      resolve();
    };
    stream.on("drain", done);
    stream.on("close", done);
  });
}

/** A sink over a file opened for writing: each write lands at its position. */
export function fileSink(handle: FileHandle): ZipSink {
  return {
    async write(bytes, position) {
      let done = 0;
      while (done < bytes.length) done += (await handle.write(bytes, done, bytes.length - done, position + done)).bytesWritten;
    },
  };
}

/** A sink in memory, for tests and small archives. */
export function memorySink(): ZipSink & { bytes(): Uint8Array } {
  let buffer = new Uint8Array(1024);
  let length = 0;
  return {
    async write(bytes, position) {
      const end = position + bytes.length;
      if (end > buffer.length) {
        const grown = new Uint8Array(Math.max(end, buffer.length * 2));
        grown.set(buffer.subarray(0, length));
        buffer = grown;
      }
      buffer.set(bytes, position);
      length = Math.max(length, end);
    },
    bytes: () => buffer.slice(0, length),
  };
}
