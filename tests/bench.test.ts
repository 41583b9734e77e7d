// Unit tests for scripts/lib/connect.ts, make bench's Kafka Connect peer: the schema'd JSON a row becomes, and
// the worker's and the connector's settings as Java reads them; and for bench --stages and --profile (whose
// one process is the pinned Bun profiling a loop). No Java, no broker.

import { describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { highWaterMark, medianRss, memoryMarks, parseStages, scriptCommand } from "../scripts/bench.ts";
import { parseDatabase } from "../scripts/lib/config.ts";
import {
  CONNECT_SCHEMA,
  connectValue,
  epochDay,
  jdbcUrl,
  jsonDecimal,
  propertiesText,
  sinkProperties,
  workerProperties,
  type SinkRun,
} from "../scripts/lib/connect.ts";
import { cleanRow, mapHeader, type CleanRow } from "../scripts/lib/record.ts";
import { superstoreRow } from "./fixtures/superstore.ts";
import { tempDir } from "./helpers.ts";

/** The first row of the Kaggle file, with a name that has quotes and a comma (for the JSON and the CSV). */
const SOURCE = superstoreRow({ "Product Name": 'Bush Somerset Collection Bookcase, 5" "Tall"' });

function clean(source: Record<string, string>): CleanRow {
  const result = cleanRow(source, mapHeader(Object.keys(source)));
  if (!result.ok) throw new Error(result.reason);
  return result.row;
}

const parsed = (row: CleanRow) => JSON.parse(connectValue(row)) as { schema: { fields: { field: string; type: string; optional?: boolean; name?: string }[] }; payload: Record<string, unknown> };

describe("connectValue", () => {
  test("carries the schema beside the payload, a field of the schema for each key of the payload", () => {
    const message = parsed(clean(SOURCE));
    expect(message.schema).toEqual(JSON.parse(CONNECT_SCHEMA));
    expect(message.schema.fields.map((f) => f.field)).toEqual(Object.keys(message.payload));
  });

  test("types the fields: the Row ID as int64, dates as Connect's Date, decimals as Connect's Decimal", () => {
    const { schema } = parsed(clean(SOURCE));
    const field = (name: string) => schema.fields.find((f) => f.field === name);
    expect(field("row_id")).toEqual({ field: "row_id", type: "int64" });
    expect(field("order_date")).toMatchObject({ type: "int32", name: "org.apache.kafka.connect.data.Date" });
    expect(field("ship_date")).toMatchObject({ type: "int32", name: "org.apache.kafka.connect.data.Date", optional: true });
    expect(field("sales")).toMatchObject({ type: "bytes", name: "org.apache.kafka.connect.data.Decimal" });
    expect(field("sales")?.optional).toBeUndefined();
    expect(field("quantity")).toMatchObject({ type: "int32" });
    expect(field("postal_code")).toMatchObject({ type: "string", optional: true });
  });

  test("writes the cleaned values: days since 1970 for dates, decimals digit for digit, absent fields as null", () => {
    const text = connectValue(clean(SOURCE));
    expect(text).toContain('"sales":261.96,');
    expect(text).toContain('"profit":41.9136,');
    expect(parsed(clean(SOURCE)).payload).toMatchObject({
      row_id: 1,
      order_id: "CA-2016-152156",
      order_date: 17113,
      ship_date: 17116,
      quantity: 2,
      discount: 0,
      product_name: 'Bush Somerset Collection Bookcase, 5" "Tall"',
      market: null,
      shipping_cost: null,
    });
  });

  test("keeps a decimal exact past a double's digits", () => {
    expect(connectValue(clean({ ...SOURCE, Sales: "12345678901234567.891" }))).toContain('"sales":12345678901234567.891,');
  });

  test("refuses a row without a Row ID: the sink upserts by it", () => {
    const { "Row ID": _, ...withoutId } = SOURCE;
    expect(() => connectValue(clean(withoutId))).toThrow("Row ID");
  });
});

describe("jsonDecimal", () => {
  test.each([
    ["261.96", "261.96"],
    ["+5", "5"],
    ["5.", "5"],
    [".5", "0.5"],
    ["-.25", "-0.25"],
    ["007.10", "7.10"],
    ["-0", "-0"],
  ])("%s -> %s, a JSON number", (value, json) => {
    expect(jsonDecimal(value)).toBe(json);
    expect(() => JSON.parse(json)).not.toThrow();
  });
});

describe("epochDay", () => {
  test("counts days from 1970-01-01, leap days included", () => {
    expect(epochDay("1970-01-01")).toBe(0);
    expect(epochDay("2016-11-08")).toBe(17113);
    expect(epochDay("2016-03-01") - epochDay("2016-02-28")).toBe(2);
    expect(epochDay("1969-12-31")).toBe(-1);
  });
});

const DB = parseDatabase({ DATABASE_URL: "postgres://bench:s3cr%C3%A9t%5C@db.example:5433/bench_x_connect_1" });
const RUN: SinkRun = {
  name: "bench_x_connect_1",
  topic: "bench_x_connect_2",
  table: "sales_rows",
  database: DB,
  brokers: ["127.0.0.1:9092", "127.0.0.1:9094"],
  dir: "/tmp/run",
  plugins: "/tmp/plugins",
  tuned: false,
};

describe("Connect's settings", () => {
  test("the worker reads schema'd JSON values and string keys, finds plugins by their manifests, on any free port", () => {
    expect(workerProperties(RUN)).toEqual({
      "bootstrap.servers": "127.0.0.1:9092,127.0.0.1:9094",
      "key.converter": "org.apache.kafka.connect.storage.StringConverter",
      "value.converter": "org.apache.kafka.connect.json.JsonConverter",
      "value.converter.schemas.enable": "true",
      "offset.storage.file.filename": "/tmp/run/connect.offsets",
      "plugin.path": "/tmp/plugins",
      "plugin.discovery": "service_load",
      listeners: "http://127.0.0.1:0",
    });
  });

  test("the connector upserts by the Row ID into its table, with Debezium's defaults", () => {
    expect(sinkProperties(RUN)).toEqual({
      name: "bench_x_connect_1",
      "connector.class": "io.debezium.connector.jdbc.JdbcSinkConnector",
      "tasks.max": "1",
      topics: "bench_x_connect_2",
      "connection.url": "jdbc:postgresql://db.example:5433/bench_x_connect_1",
      "connection.username": "bench",
      "connection.password": "s3crét\\",
      "insert.mode": "upsert",
      "primary.key.mode": "record_value",
      "primary.key.fields": "row_id",
      "schema.evolution": "basic",
      "collection.name.format": "sales_rows",
    });
  });

  test("tuned: batches of 2,000 in the sink and the worker's consumer, multi-row inserts in the driver", () => {
    const tuned = { ...RUN, tuned: true };
    expect(sinkProperties(tuned)["batch.size"]).toBe("2000");
    expect(sinkProperties(tuned)["connection.url"]).toBe("jdbc:postgresql://db.example:5433/bench_x_connect_1?reWriteBatchedInserts=true");
    expect(workerProperties(tuned)["consumer.max.poll.records"]).toBe("2000");
  });

  test("the JDBC URL keeps sslmode, brackets an IPv6 host and refuses a Unix socket", () => {
    expect(jdbcUrl({ ...DB, host: "::1", ssl: "require" }, true)).toBe("jdbc:postgresql://[::1]:5433/bench_x_connect_1?sslmode=require&reWriteBatchedInserts=true");
    expect(() => jdbcUrl({ ...DB, host: "/var/run/postgresql" }, false)).toThrow("Unix socket");
  });

  test("a properties file escapes what Java's reader would change: backslashes, breaks, non-ASCII, a key's separators", () => {
    const text = propertiesText({ "connection.password": "s3crét\\\n", "a=b c": " x😀" }, "header");
    expect(text).toBe("# header\nconnection.password=s3cr\\u00e9t\\\\\\n\na\\=b\\ c=\\ x\\ud83d\\ude00\n");
  });
});

describe("bench --stages", () => {
  test("runs every stage when none is named", () => {
    expect([...parseStages(undefined)]).toEqual(["producer", "consumer", "loader", "together", "connect", "scale"]);
  });

  test("adds what a stage reads: the loader the consumer's files, the consumer the producer's topic", () => {
    expect([...parseStages("loader")].sort()).toEqual(["consumer", "loader", "producer"]);
    expect([...parseStages("scale, connect")].sort()).toEqual(["connect", "scale"]);
  });

  test("refuses a stage it does not know, naming it and the stages there are", () => {
    expect(() => parseStages("scale,loadr")).toThrow('--stages: unknown stage "loadr" (stages: producer, consumer, loader, together, connect, scale)');
  });
});

describe("a child's peak memory", () => {
  test("is read from VmHWM in /proc/<pid>/status, in bytes", () => {
    expect(highWaterMark("Name:\tload.ts\nVmPeak:\t 6625652 kB\nVmHWM:\t  167628 kB\nVmRSS:\t  150000 kB\n")).toBe(167_628 * 1024);
    expect(highWaterMark("Name:\tx\nState:\tZ (zombie)\n")).toBeUndefined();
  });

  test("is this process's own: a child spawned from a process holding 300 MB is not charged with them", () => {
    const held = Buffer.alloc(300 * 2 ** 20, 1);
    const child = Bun.spawnSync(["cat", "/proc/self/status"]);
    expect(held.length).toBe(300 * 2 ** 20);
    expect(highWaterMark(child.stdout.toString())!).toBeLessThan(50 * 2 ** 20);
    expect(child.resourceUsage.maxRSS).toBeGreaterThan(300 * 2 ** 20); // what the exit's rusage says instead
  });
});

describe("bench --profile", () => {
  test("runs a script plainly without a profile folder, and under Bun's CPU profiler with one", () => {
    const plain = scriptCommand("load.ts", ["--dir", "x"]);
    expect(plain).toEqual([process.execPath, join(import.meta.dir, "../scripts/load.ts"), "--dir", "x"]);
    const profiled = scriptCommand("load.ts", ["--dir", "x"], { dir: "/p", run: 3 });
    expect(profiled).toEqual([process.execPath, "--cpu-prof-md", "--cpu-prof-dir=/p", "--cpu-prof-name=03-load.md", ...plain.slice(1)]);
  });

  test("the pinned Bun writes the Markdown profile those flags ask for when the script exits", () => {
    const tmp = tempDir("sales-profile-");
    try {
      writeFileSync(join(tmp.path, "spin.ts"), "let n = 0; for (let i = 0; i < 3e7; i++) n += i % 7; console.log(n);\n");
      const [bun, ...flags] = scriptCommand("x.ts", [], { dir: tmp.path, run: 1 });
      const run = Bun.spawnSync([bun!, ...flags.slice(0, 3), join(tmp.path, "spin.ts")]);
      expect(run.exitCode).toBe(0);
      const profile = readFileSync(join(tmp.path, "01-x.md"), "utf8");
      expect(profile).toStartWith("# CPU Profile");
      expect(profile).toContain("spin.ts");
    } finally {
      tmp.remove();
    }
  });
});

describe("soak memory marks", () => {
  // A saw: 100 MB after each collection, up to 140 MB before the next, a sample every 2 s for 10 minutes.
  const saw = (grow = 0) => Array.from({ length: 300 }, (_, i) => ({ at: i * 2000, rss: 100 + (i % 5) * 10 + (grow * i) / 300 }));

  test("takes the median of the minute around the early mark and of the last minute, not one sample", () => {
    const marks = memoryMarks(saw(), 120_000);
    expect(marks).toEqual({ early: 120, end: 120, endMs: 598_000 });
  });

  test("shows growth that lasts: memory rising 50 MB over the run ends about 40 MB above minute 2", () => {
    const marks = memoryMarks(saw(50), 120_000);
    expect(marks.end! - marks.early!).toBeGreaterThan(35);
    expect(marks.end! - marks.early!).toBeLessThan(45);
  });

  test("has no mark without samples in its window", () => {
    expect(memoryMarks([], 120_000)).toEqual({});
    expect(medianRss([{ at: 0, rss: 1 }], 60_000, 90_000)).toBeUndefined();
    expect(medianRss([{ at: 0, rss: 1 }, { at: 1, rss: 4 }], 0, 1)).toBe(2.5);
  });
});
