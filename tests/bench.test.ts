// Unit tests for scripts/lib/connect.ts, make bench's Kafka Connect peer: the schema'd JSON a row becomes, and
// the worker's and the connector's settings as Java reads them; and the bench's --stages. Pure functions only: no
// Java, no broker.

import { describe, expect, test } from "bun:test";
import { parseStages, STAGES } from "../scripts/bench.ts";
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

/** The first row of the Kaggle file, as the producer sends it (header name -> value as read). */
const SOURCE: Record<string, string> = {
  "Row ID": "1",
  "Order ID": "CA-2016-152156",
  "Order Date": "11/8/2016",
  "Ship Date": "11/11/2016",
  "Ship Mode": "Second Class",
  "Customer ID": "CG-12520",
  "Customer Name": "Claire Gute",
  Segment: "Consumer",
  Country: "United States",
  City: "Henderson",
  State: "Kentucky",
  "Postal Code": "42420",
  Region: "South",
  "Product ID": "FUR-BO-10001798",
  Category: "Furniture",
  "Sub-Category": "Bookcases",
  "Product Name": 'Bush Somerset Collection Bookcase, 5" "Tall"',
  Sales: "261.96",
  Quantity: "2",
  Discount: "0",
  Profit: "41.9136",
};

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

describe("parseStages", () => {
  test("runs every stage without --stages", () => {
    expect([...parseStages(undefined)]).toEqual([...STAGES]);
  });

  test("runs the stages a named one reads from: the loader the consumer's files, the consumer the producer's topic", () => {
    expect([...parseStages("loader")].sort()).toEqual(["consumer", "loader", "producer"]);
    expect([...parseStages("producer, together")].sort()).toEqual(["producer", "together"]);
  });

  test("refuses an unknown stage, naming it", () => {
    expect(() => parseStages("producer,consumers")).toThrow('unknown stage "consumers"');
  });
});
