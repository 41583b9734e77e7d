// Unit tests for scripts/lib/input.ts: opening standard input and pipes, detecting the encoding, refusing what
// cannot be read correctly, and counting lines with every kind of line end.

import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { Readable } from "node:stream";
import { detectEncoding, openInput, readLines, UnreadableInputError } from "../scripts/lib/input.ts";
import { scratchFiles } from "./helpers.ts";

const scratch = scratchFiles("input-test-");
afterAll(() => scratch.remove());
const file = scratch.file;
const dir = scratch.dir;

const bytes = (...parts: (string | number[])[]) =>
  new Uint8Array(parts.flatMap((p) => (typeof p === "string" ? [...Buffer.from(p)] : p)));

describe("detectEncoding", () => {
  test("reports UTF-8 without a BOM and counts lines", async () => {
    expect(await detectEncoding(file("a,b\n1,é\n2,“x”\n"))).toEqual({ encoding: "utf-8", bom: false, lines: 3 });
  });

  test("reports a UTF-8 BOM", async () => {
    expect(await detectEncoding(file("\uFEFFa,b\r\n1,2\r\n"))).toEqual({ encoding: "utf-8", bom: true, lines: 2 });
  });

  test("counts CR, CRLF and LF line ends and a last line without one", async () => {
    expect((await detectEncoding(file("a\rb\r\nc\nd"))).lines).toBe(4);
    expect((await detectEncoding(file("a\rb\r"))).lines).toBe(2);
  });

  test("falls back to Windows-1252 when the bytes are not UTF-8 and nothing in the file is", async () => {
    const path = file(bytes("a,b\r\n1,", [0x93, 0x78, 0x94], "\r\n2,", [0xe9]));
    expect(await detectEncoding(path)).toEqual({ encoding: "windows-1252", bom: false, lines: 3 });
  });

  test("reads UTF-16 with a byte-order mark, little or big endian", async () => {
    const le = file(new Uint8Array([0xff, 0xfe, ...Buffer.from("a,b\n1,2\n", "utf16le")]));
    expect(await detectEncoding(le)).toEqual({ encoding: "utf-16le", bom: true, lines: 2 });
    const be = file(new Uint8Array([0xfe, 0xff, ...Buffer.from("a,b\n", "utf16le").swap16()]));
    expect((await detectEncoding(be)).encoding).toBe("utf-16be");
  });

  test("counts every line of a file larger than one read", async () => {
    const text = "a,b\n" + "1,2\n".repeat(200_000);
    expect(await detectEncoding(file(text))).toEqual({ encoding: "utf-8", bom: false, lines: 200_001 });
  });

  test("reports an empty file as UTF-8 with no lines", async () => {
    expect(await detectEncoding(file(""))).toEqual({ encoding: "utf-8", bom: false, lines: 0 });
  });

  test.each([
    ["a file mixing UTF-8 and other bytes, naming the first bad line", bytes("a,b\n1,é\n2,", [0xe9], "\n"), /line 3: bytes that are not UTF-8, in a file that is UTF-8 from line 2/],
    ["a UTF-8 BOM followed by other bytes", bytes([0xef, 0xbb, 0xbf], "a\n", [0x93], "\n"), /line 2: .*starts with a UTF-8 byte-order mark/],
    ["bytes undefined in Windows-1252 (Shift-JIS, GBK)", bytes("a,b\n1,", [0x83, 0x65, 0x81, 0x5b], "\n"), /line 2: bytes that are neither UTF-8 nor Windows-1252/],
    ["UTF-32", new Uint8Array([0xff, 0xfe, 0, 0, 0x61, 0, 0, 0]), /is UTF-32/],
    ["UTF-16 without a byte-order mark", new Uint8Array(Buffer.from("Row ID,Sales\n1,2\n", "utf16le")), /UTF-16 without a byte-order mark/],
    ["an Excel workbook", bytes([0x50, 0x4b, 0x03, 0x04], "xl/workbook.xml"), /ZIP archive \(an Excel \.xlsx file\?\)/],
    ["a gzip file", bytes([0x1f, 0x8b, 0x08, 0], "data"), /gzip-compressed/],
  ])("refuses %s up front", async (_, content, message) => {
    const path = file(content);
    const error = await detectEncoding(path).catch((e: Error) => e);
    expect(error).toBeInstanceOf(UnreadableInputError);
    expect((error as Error).message).toStartWith(`${path}: `);
    expect((error as Error).message).toMatch(message);
  });

  test("leaves a single NUL in a row to that row (the loader rejects it)", async () => {
    expect((await detectEncoding(file(bytes("a,b\n1,x", [0], "y\n2,3\n")))).encoding).toBe("utf-8");
  });
});

describe("readLines", () => {
  async function lines(content: string | Uint8Array, encoding: "utf-8" | "utf-16le" = "utf-8") {
    const out = [];
    for await (const line of readLines(file(content), encoding)) out.push([line.number, line.text, line.end]);
    return out;
  }

  test("ends lines at LF, CRLF and CR, keeping each ending", async () => {
    expect(await lines("a\nb\r\nc\rd")).toEqual([
      [1, "a", "\n"],
      [2, "b", "\r\n"],
      [3, "c", "\r"],
      [4, "d", ""],
    ]);
  });

  test("decodes UTF-16 and drops its byte-order mark", async () => {
    expect(await lines(new Uint8Array([0xff, 0xfe, ...Buffer.from("é,b\r\n", "utf16le")]), "utf-16le")).toEqual([[1, "é,b", "\r\n"]]);
  });

  test("names the line of bytes that are not UTF-8 when UTF-8 is forced", async () => {
    const path = file(bytes("a,b\n1,", [0x93], "\n"));
    const read = async () => {
      for await (const _ of readLines(path, "utf-8")) {
        // reading is the test
      }
    };
    await expect(read()).rejects.toThrow(`${path}: line 2: not valid utf-8`);
  });
});

describe("openInput", () => {
  test("reads a regular file where it lies", async () => {
    const path = file("a\n");
    const input = await openInput(path);
    expect(input.path).toBe(path);
    await input.close();
  });

  test("copies standard input to a temporary file it removes on close", async () => {
    const input = await openInput("-", Readable.from([Buffer.from("Row ID,Sales\r\n"), Buffer.from("1,2\r\n")]));
    expect(input.path).not.toBe("-");
    expect(await Bun.file(input.path).text()).toBe("Row ID,Sales\r\n1,2\r\n");
    await input.close();
    expect(await Bun.file(input.path).exists()).toBe(false);
  });

  test("refuses a missing file and a folder, naming them", async () => {
    await expect(openInput(join(dir, "nope.csv"))).rejects.toThrow(`${join(dir, "nope.csv")}: no such file`);
    await expect(openInput(dir)).rejects.toThrow(`${dir}: is a folder, not a file`);
  });
});
