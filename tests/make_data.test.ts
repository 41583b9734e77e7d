// Unit tests for the pure parts of scripts/make_data.ts: Windows-1252 encoding and US dates.

import { describe, expect, test } from "bun:test";
import { parseDate } from "../scripts/lib/record.ts";
import { encodeCp1252, toUsDate } from "../scripts/make_data.ts";

describe("encodeCp1252", () => {
  test("writes ASCII as its own bytes", () => {
    expect(encodeCp1252('Row ID,"x"\r\n')).toEqual(new Uint8Array([...Buffer.from('Row ID,"x"\r\n')]));
  });

  test("writes é, curly quotes, a no-break space and the euro sign as single bytes", () => {
    expect(encodeCp1252("é")).toEqual(new Uint8Array([0xe9]));
    expect(encodeCp1252("“x”")).toEqual(new Uint8Array([0x93, 0x78, 0x94]));
    expect(encodeCp1252("\u00A0")).toEqual(new Uint8Array([0xa0]));
    expect(encodeCp1252("€")).toEqual(new Uint8Array([0x80]));
  });

  test("is read back by a Windows-1252 decoder as the same text", () => {
    const text = "Eldon “Base” for Stackable Storage Shelf – Café Größe ½ ™ € Œ ‰\u00A0ÿ";
    expect(new TextDecoder("windows-1252").decode(encodeCp1252(text))).toBe(text);
  });

  test("encodes every character Windows-1252 has", () => {
    const bytes = new Uint8Array(256).map((_, i) => i);
    const text = new TextDecoder("windows-1252").decode(bytes);
    expect(encodeCp1252(text)).toEqual(bytes);
  });

  test("throws on a character it has no byte for, naming its code point", () => {
    expect(() => encodeCp1252("ok ✓")).toThrow("character U+2713 has no Windows-1252 byte");
  });

  test("names a character outside the BMP by its full code point", () => {
    expect(() => encodeCp1252("😀")).toThrow("character U+1F600 has no Windows-1252 byte");
  });

  test("puts the caller's location before the message", () => {
    expect(() => encodeCp1252("Ω", "row 12: ")).toThrow("row 12: character U+03A9 has no Windows-1252 byte");
  });

  test("writes nothing for empty text", () => {
    expect(encodeCp1252("")).toEqual(new Uint8Array([]));
  });
});

describe("toUsDate", () => {
  test("writes month/day/year without leading zeros", () => {
    expect(toUsDate("2016-11-08")).toBe("11/8/2016");
    expect(toUsDate("2017-01-05")).toBe("1/5/2017");
    expect(toUsDate("2014-12-31")).toBe("12/31/2014");
  });

  test("leaves anything that is not an ISO date as it is", () => {
    for (const value of ["11/8/2016", "", "2016-1-5", "2016-11-08T00:00:00", "n/a"]) {
      expect(toUsDate(value)).toBe(value);
    }
  });

  test("writes dates the loader reads back to the same day", () => {
    for (const iso of ["2016-11-08", "2017-01-05", "2016-02-29", "2015-12-31"]) {
      expect(parseDate(toUsDate(iso))).toBe(iso);
    }
  });
});
