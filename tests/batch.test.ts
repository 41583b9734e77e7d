// Unit tests for scripts/lib/batch.ts: batch and gap file names and the durable write.

import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  batchFileName,
  gapFile,
  type LostRange,
  META_COLUMNS,
  parseBatchFileName,
  parseGapFileName,
  sha256,
  syncFolder,
  writeFileDurably,
} from "../scripts/lib/batch.ts";
import { parseCsv } from "../scripts/lib/csv.ts";

const CONTENT = "Row ID,_offset\n1,100\n";
const HASH = createHash("sha256").update(CONTENT).digest("hex").slice(0, 12);

describe("batchFileName", () => {
  test("encodes topic, partition, zero-padded offsets and a content hash", () => {
    expect(batchFileName("sales_topic", 0, 100n, 199n, CONTENT)).toBe(
      `sales_topic_p0_000000000100-000000000199_${HASH}.csv`,
    );
  });

  test("keeps offsets wider than the padding whole", () => {
    expect(batchFileName("t", 12, 1_234_567_890_123n, 1_234_567_890_124n, CONTENT)).toBe(
      `t_p12_1234567890123-1234567890124_${HASH}.csv`,
    );
  });

  test("gives the same name to the same records", () => {
    const rewritten = ["Row ID,_offset", "1,100", ""].join("\n");
    expect(batchFileName("t", 1, 5n, 9n, rewritten)).toBe(batchFileName("t", 1, 5n, 9n, CONTENT));
  });

  test("changes the hash when the content changes", () => {
    const a = parseBatchFileName(batchFileName("t", 0, 0n, 1n, CONTENT));
    const b = parseBatchFileName(batchFileName("t", 0, 0n, 1n, `${CONTENT}2,101\n`));
    expect(a?.hash).toBe(HASH);
    expect(b?.hash).toMatch(/^[0-9a-f]{12}$/);
    expect(b?.hash).not.toBe(a?.hash);
  });

  test("sorts the names of one partition by offset", () => {
    const offsets = [1000n, 9n, 100n, 10n, 0n, 99_999n];
    const names = offsets.map((o) => batchFileName("sales_topic", 2, o, o + 9n, `${o}`));
    const byName = [...names].sort().map((n) => parseBatchFileName(n)?.first);
    expect(byName).toEqual([0n, 9n, 10n, 100n, 1000n, 99_999n]);
  });
});

describe("parseBatchFileName", () => {
  test("reads back what batchFileName wrote", () => {
    const name = batchFileName("sales_topic", 7, 42n, 141n, CONTENT);
    expect(parseBatchFileName(name)).toEqual({ topic: "sales_topic", partition: 7, first: 42n, last: 141n, hash: HASH });
  });

  test("reads a topic that itself looks like a partition suffix", () => {
    const name = batchFileName("my_p1_topic.v2", 3, 0n, 0n, CONTENT);
    expect(parseBatchFileName(name)).toEqual({ topic: "my_p1_topic.v2", partition: 3, first: 0n, last: 0n, hash: HASH });
  });

  test("returns undefined for other names", () => {
    for (const name of [
      "notes.txt",
      "sales_topic.csv",
      "rejected",
      `.sales_topic_p0_000000000000-000000000099_${HASH}.csv.tmp`,
      `sales_topic_p0_000000000000-000000000099_${HASH}.csv.reason.txt`,
      `sales_topic_p0_0-99_${HASH}.csv`,
      `sales_topic_p0_000000000000-000000000099_${HASH.toUpperCase()}.csv`,
      "sales_topic_p0_000000000000-000000000099_abc.csv",
      `sales_topic_px_000000000000-000000000099_${HASH}.csv`,
    ]) {
      expect(parseBatchFileName(name)).toBeUndefined();
    }
  });
});

describe("gapFile", () => {
  const range: LostRange = { topic: "sales_topic", partition: 2, first: 200n, last: 399n, kind: "deleted", group: "g", reason: "gone, sadly" };

  test("names the partition, the range and the content's hash, and holds the range as one CSV row", () => {
    const { name, content } = gapFile(range);
    expect(name).toBe(`sales_topic_p2_000000000200-000000000399_lost_${sha256(content).slice(0, 12)}.csv`);
    expect(parseCsv(content, name).rows.map((r) => ({ ...r.values }))).toEqual([
      { topic: "sales_topic", partition: "2", first_offset: "200", last_offset: "399", kind: "deleted", consumer_group: "g", reason: "gone, sadly" },
    ]);
    expect(parseGapFileName(name)).toEqual({ partition: 2, first: 200n, hash: sha256(content).slice(0, 12) });
    expect(parseBatchFileName(name)).toBeUndefined();
  });

  test("writes an unknown last offset as unknown, and the same range always the same way", () => {
    const { name, content } = gapFile({ ...range, last: null, kind: "recreated" });
    expect(name).toMatch(/^sales_topic_p2_000000000200-unknown_lost_[0-9a-f]{12}\.csv$/);
    expect(content).toContain(",,recreated,");
    expect(gapFile(range)).toEqual(gapFile(range));
  });

  test("reads no batch file name as a gap file name", () => {
    expect(parseGapFileName(batchFileName("t", 0, 0n, 99n, CONTENT))).toBeUndefined();
  });
});

describe("sha256", () => {
  test("hashes text and bytes alike", () => {
    const hex = createHash("sha256").update("abc").digest("hex");
    expect(sha256("abc")).toBe(hex);
    expect(sha256(new TextEncoder().encode("abc"))).toBe(hex);
  });
});

describe("META_COLUMNS", () => {
  test("lists where a row came from, in file order", () => {
    expect([...META_COLUMNS]).toEqual([
      "_source_file",
      "_source_line",
      "_source_lines",
      "_topic",
      "_partition",
      "_offset",
      "_timestamp",
      "_error",
      "_raw",
    ]);
  });
});

describe("writeFileDurably", () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), "batch-test-"));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  test("writes the content and returns the path", async () => {
    const path = await writeFileDurably(dir, "a.csv", CONTENT);
    expect(path).toBe(join(dir, "a.csv"));
    expect(readFileSync(path, "utf8")).toBe(CONTENT);
  });

  test("leaves no temporary file behind", async () => {
    await writeFileDurably(dir, "a.csv", CONTENT);
    expect(readdirSync(dir)).toEqual(["a.csv"]);
  });

  test("writes bytes as they are", async () => {
    const bytes = new Uint8Array([0x93, 0x00, 0xff, 0x0a]);
    const path = await writeFileDurably(dir, "b.bin", bytes);
    expect(new Uint8Array(readFileSync(path))).toEqual(bytes);
  });

  test("replaces an existing file whole", async () => {
    writeFileSync(join(dir, "a.csv"), "old content that is longer than the new one\n");
    await writeFileDurably(dir, "a.csv", "new\n");
    expect(readFileSync(join(dir, "a.csv"), "utf8")).toBe("new\n");
    expect(readdirSync(dir)).toEqual(["a.csv"]);
  });

  test("fails when the folder does not exist", async () => {
    await expect(writeFileDurably(join(dir, "missing"), "a.csv", CONTENT)).rejects.toThrow();
  });

  test("runs beforeRename while only the temporary file exists; syncFolder refuses a folder that is not there", async () => {
    let seen: string[] = [];
    await writeFileDurably(dir, "a.csv", CONTENT, { beforeRename: () => (seen = readdirSync(dir)), syncFolder: false });
    expect(seen).toEqual([".a.csv.tmp"]);
    expect(readdirSync(dir)).toEqual(["a.csv"]);
    await syncFolder(dir);
    await expect(syncFolder(join(dir, "missing"))).rejects.toThrow();
  });
});
