// The ZIP writer (scripts/lib/zip.ts) against the standard `unzip` (Debian's package unzip) as the control:
// CRC-32 as zlib computes it, names in UTF-8 with their flag, empty files, stored and deflated entries, content
// streamed in chunks, sizes in the local headers (no data descriptors), and names no reader should unpack refused.

import { afterAll, describe, expect, test } from "bun:test";
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { crc32 as zlibCrc32 } from "node:zlib";
import { readConfig } from "../scripts/lib/config.ts";
import { crc32, dosDateTime, entryName, memorySink, ZipWriter } from "../scripts/lib/zip.ts";
import { tempDir } from "./helpers.ts";

const UNZIP = Bun.which("unzip");
if (UNZIP === null && readConfig().requireAllTests) throw new Error("the ZIP tests need unzip (Debian: apt-get install unzip)");
if (UNZIP === null) console.warn("skipping the checks with unzip: it is not installed (Debian: apt-get install unzip)");

const tmp = tempDir("sales-zip-");
afterAll(() => tmp.remove());

function unzip(args: string[]): { code: number; stdout: Buffer; stderr: string } {
  const run = Bun.spawnSync([UNZIP!, ...args], { stdout: "pipe", stderr: "pipe", env: { ...process.env, LC_ALL: "C" } });
  return { code: run.exitCode, stdout: run.stdout, stderr: run.stderr.toString() };
}

/** The central directory's records, read from the archive's end record: name, flags, method, CRC, sizes. */
interface DirectoryRecord {
  name: string;
  flags: number;
  method: number;
  crc: number;
  compressed: number;
  size: number;
  /** the same fields as the entry's local header has them */
  local: { flags: number; crc: number; compressed: number; size: number };
}

function centralDirectory(zip: Uint8Array): DirectoryRecord[] {
  const v = new DataView(zip.buffer, zip.byteOffset, zip.byteLength);
  const end = zip.length - 22;
  expect(v.getUint32(end, true)).toBe(0x06054b50);
  const records: DirectoryRecord[] = [];
  let at = v.getUint32(end + 16, true);
  for (let i = 0; i < v.getUint16(end + 10, true); i++) {
    expect(v.getUint32(at, true)).toBe(0x02014b50);
    const nameLength = v.getUint16(at + 28, true);
    const local = v.getUint32(at + 42, true);
    expect(v.getUint32(local, true)).toBe(0x04034b50);
    records.push({
      name: new TextDecoder().decode(zip.subarray(at + 46, at + 46 + nameLength)),
      flags: v.getUint16(at + 8, true),
      method: v.getUint16(at + 10, true),
      crc: v.getUint32(at + 16, true),
      compressed: v.getUint32(at + 20, true),
      size: v.getUint32(at + 24, true),
      local: { flags: v.getUint16(local + 6, true), crc: v.getUint32(local + 14, true), compressed: v.getUint32(local + 18, true), size: v.getUint32(local + 22, true) },
    });
    at += 46 + nameLength + v.getUint16(at + 30, true) + v.getUint16(at + 32, true);
  }
  return records;
}

async function* chunked(text: string, size: number): AsyncGenerator<Uint8Array> {
  const bytes = new TextEncoder().encode(text);
  for (let i = 0; i < bytes.length; i += size) yield bytes.subarray(i, i + size);
}

describe("crc32", () => {
  test("gives the check value of CRC-32 for 123456789, and 0 for nothing", () => {
    expect(crc32(new TextEncoder().encode("123456789"))).toBe(0xcbf43926);
    expect(crc32(new Uint8Array())).toBe(0);
  });

  test("equals zlib's CRC-32 of random bytes, whole or continued chunk by chunk", () => {
    const bytes = crypto.getRandomValues(new Uint8Array(100_003));
    let continued = 0;
    for (let i = 0; i < bytes.length; i += 4096) continued = crc32(bytes.subarray(i, i + 4096), continued);
    expect({ whole: crc32(bytes), continued }).toEqual({ whole: zlibCrc32(bytes), continued: zlibCrc32(bytes) });
  });
});

describe("dosDateTime and entryName", () => {
  test("packs a local time into MS-DOS date and time, two seconds a step", () => {
    expect(dosDateTime(new Date(2024, 1, 29, 13, 45, 59))).toEqual({ date: (44 << 9) | (2 << 5) | 29, time: (13 << 11) | (45 << 5) | 29 });
    expect(dosDateTime(new Date(1970, 0, 1))).toEqual({ date: (1 << 5) | 1, time: 0 });
  });

  test.each(["/etc/passwd", "C:/Users/x.csv", "c:x.csv", "../x.csv", "Data/../../x.csv", "Data\\x.csv", "Data//x.csv", "", "./x.csv"])(
    "refuses the name %p",
    (name) => {
      expect(() => entryName(name)).toThrow(`ZIP entry ${JSON.stringify(name)}`);
    },
  );
});

describe("ZipWriter", () => {
  const big = Array.from({ length: 40_000 }, (_, i) => `${i},Büro ${i % 97},${(i * 1.25).toFixed(2)}\n`).join("");
  const files: { name: string; text: string; method?: "store" | "deflate"; chunk?: number }[] = [
    { name: "superstore_sales.twb", text: "<?xml version='1.0' encoding='utf-8' ?>\n<workbook/>\n" },
    { name: "Data/données/ventes été.csv", text: "région,montant\nÎle-de-France,1.5\n" },
    { name: "Data/empty.csv", text: "" },
    { name: "Data/empty-stored.csv", text: "", method: "store" },
    { name: "Data/stored.csv", text: "a,b\n1,2\n", method: "store" },
    { name: "Data/big.csv", text: big, chunk: 65_536 },
  ];
  let path: string;
  let bytes: Uint8Array;

  test("writes an archive that unzip -t finds without errors", async () => {
    const sink = memorySink();
    const zip = new ZipWriter(sink);
    for (const f of files) await zip.add(f.name, f.chunk ? chunked(f.text, f.chunk) : f.text, { method: f.method });
    const size = await zip.finish();
    bytes = sink.bytes();
    expect(bytes.length).toBe(size);
    path = join(tmp.path, "test.zip");
    writeFileSync(path, bytes);
    if (UNZIP === null) return;
    const run = unzip(["-t", path]);
    expect(`${run.code} ${run.stderr}`).toBe("0 ");
    expect(run.stdout.toString()).toContain(`No errors detected in compressed data of ${path}.`);
  });

  test.skipIf(UNZIP === null)("unpacks every entry to exactly its bytes, under its UTF-8 name", () => {
    const out = join(tmp.path, "out");
    const run = unzip(["-q", path, "-d", out]);
    expect(`${run.code} ${run.stderr}`).toBe("0 ");
    expect(readdirSync(join(out, "Data", "données"))).toEqual(["ventes été.csv"]);
    for (const f of files) expect({ name: f.name, text: readFileSync(join(out, f.name), "utf8") }).toEqual({ name: f.name, text: f.text });
  });

  test("flags UTF-8 names, and records sizes and CRC-32 in the local headers as in the central directory (no data descriptor)", () => {
    const records = centralDirectory(bytes);
    expect(records.map((r) => r.name)).toEqual(files.map((f) => f.name));
    for (const [i, r] of records.entries()) {
      const content = new TextEncoder().encode(files[i]!.text);
      const stored = files[i]!.method === "store";
      expect(r).toEqual({
        name: files[i]!.name,
        flags: /^[\x20-\x7e]*$/.test(r.name) ? 0 : 0x0800,
        method: stored ? 0 : 8,
        crc: zlibCrc32(content),
        compressed: stored ? content.length : expect.any(Number),
        size: content.length,
        local: { flags: r.flags, crc: r.crc, compressed: r.compressed, size: r.size },
      });
    }
    const bigRecord = records.at(-1)!;
    expect(bigRecord.compressed).toBeLessThan(bigRecord.size / 3);
  });

  test("refuses the same name twice, and an entry after finish", async () => {
    const zip = new ZipWriter(memorySink());
    await zip.add("a.csv", "x");
    await expect(zip.add("a.csv", "y")).rejects.toThrow("ZIP entry a.csv is there already");
    await zip.finish();
    await expect(zip.add("b.csv", "y")).rejects.toThrow("the archive is finished");
  });

  test("fails an entry whose content fails while it is read, with that error", async () => {
    async function* breaks(): AsyncGenerator<Uint8Array> {
      yield new Uint8Array(100_000);
      throw new Error("disk read error in v_sales.csv");
    }
    const zip = new ZipWriter(memorySink());
    await expect(zip.add("v_sales.csv", breaks())).rejects.toThrow("disk read error in v_sales.csv");
  });
});
