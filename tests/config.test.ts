// Unit tests for scripts/lib/config.ts: defaults, overrides and start-up errors that name the variable.

import { describe, expect, test } from "bun:test";
import {
  type Config,
  DEFAULT_DATABASE_URL,
  ENV_DOCS,
  parseBrokers,
  parsePositiveInt,
  parsePositiveNumber,
  parseRate,
  readConfig,
} from "../scripts/lib/config.ts";

const DEFAULTS: Config = {
  kafkaBrokers: ["127.0.0.1:9092"],
  kafkaTopic: "sales_topic",
  kafkaGroupId: "sales-batcher",
  kafkaClientId: "sales-pipeline",
  kafkaPartitions: 1,
  databaseUrl: DEFAULT_DATABASE_URL,
  dataFile: "data/Sample-Superstore.csv",
  batchesDir: "batches",
  batchSize: 100,
  batchQuietSeconds: 5,
  producerRate: 1,
  logLevel: "info",
};

describe("readConfig", () => {
  test("uses the docker-compose defaults when nothing is set", () => {
    expect(readConfig({})).toEqual(DEFAULTS);
  });

  test("points the default database URL at the compose PostgreSQL", () => {
    expect(DEFAULT_DATABASE_URL).toBe("postgres://postgres:postgres@127.0.0.1:5432/sales");
  });

  test("treats empty and blank values as unset", () => {
    expect(readConfig({ BATCH_SIZE: "", KAFKA_TOPIC: "  ", LOG_LEVEL: "", DATABASE_URL: " " })).toEqual(DEFAULTS);
  });

  test("reads every variable", () => {
    const config = readConfig({
      KAFKA_BROKERS: "kafka-1:9092, kafka-2:19092",
      KAFKA_TOPIC: "sales.v2",
      KAFKA_GROUP_ID: "g1",
      KAFKA_CLIENT_ID: "c1",
      KAFKA_PARTITIONS: "6",
      DATABASE_URL: "postgresql://u:p@db:5433/x",
      DATA_FILE: "data/other.csv",
      BATCHES_DIR: "/tmp/b",
      BATCH_SIZE: " 250 ",
      BATCH_QUIET_SECONDS: "0.5",
      PRODUCER_RATE: "50",
      LOG_LEVEL: "DEBUG",
    });
    expect(config).toEqual({
      kafkaBrokers: ["kafka-1:9092", "kafka-2:19092"],
      kafkaTopic: "sales.v2",
      kafkaGroupId: "g1",
      kafkaClientId: "c1",
      kafkaPartitions: 6,
      databaseUrl: "postgresql://u:p@db:5433/x",
      dataFile: "data/other.csv",
      batchesDir: "/tmp/b",
      batchSize: 250,
      batchQuietSeconds: 0.5,
      producerRate: 50,
      logLevel: "debug",
    });
  });

  test("returns a frozen object with a frozen broker list", () => {
    const config = readConfig({});
    expect(Object.isFrozen(config)).toBe(true);
    expect(Object.isFrozen(config.kafkaBrokers)).toBe(true);
    expect(() => {
      (config as { batchSize: number }).batchSize = 5;
    }).toThrow();
  });

  test("reads PRODUCER_RATE=max as Infinity, in any case", () => {
    expect(readConfig({ PRODUCER_RATE: "max" }).producerRate).toBe(Infinity);
    expect(readConfig({ PRODUCER_RATE: " MAX " }).producerRate).toBe(Infinity);
  });

  test("accepts a fractional PRODUCER_RATE", () => {
    expect(readConfig({ PRODUCER_RATE: "0.5" }).producerRate).toBe(0.5);
  });

  test("leaves the database URL to postgres.js when only PG* variables are set", () => {
    expect(readConfig({ PGHOST: "db" }).databaseUrl).toBeUndefined();
    expect(readConfig({ PGDATABASE: "sales", PGUSER: "me" }).databaseUrl).toBeUndefined();
  });

  test("prefers DATABASE_URL over PG* variables", () => {
    expect(readConfig({ PGHOST: "db", DATABASE_URL: "postgres://x@y/z" }).databaseUrl).toBe("postgres://x@y/z");
  });

  test.each([
    ["BATCH_SIZE", "0", 'BATCH_SIZE must be a whole number from 1 to 1000000, got "0"'],
    ["BATCH_SIZE", "abc", 'BATCH_SIZE must be a whole number from 1 to 1000000, got "abc"'],
    ["BATCH_SIZE", "1.5", 'BATCH_SIZE must be a whole number from 1 to 1000000, got "1.5"'],
    ["BATCH_SIZE", "-3", 'BATCH_SIZE must be a whole number from 1 to 1000000, got "-3"'],
    ["BATCH_SIZE", "1000001", 'BATCH_SIZE must be a whole number from 1 to 1000000, got "1000001"'],
    ["KAFKA_PARTITIONS", "1001", 'KAFKA_PARTITIONS must be a whole number from 1 to 1000, got "1001"'],
    ["KAFKA_BROKERS", "nope", 'KAFKA_BROKERS must be a comma-separated list of host:port, got "nope"'],
    ["KAFKA_BROKERS", "a:1,b", 'KAFKA_BROKERS must be a comma-separated list of host:port, got "a:1,b"'],
    ["KAFKA_BROKERS", ",", 'KAFKA_BROKERS must be a comma-separated list of host:port, got ","'],
    ["PRODUCER_RATE", "-1", 'PRODUCER_RATE must be a number greater than 0, got "-1"'],
    ["PRODUCER_RATE", "0", 'PRODUCER_RATE must be a number greater than 0, got "0"'],
    ["PRODUCER_RATE", "fast", 'PRODUCER_RATE must be a number greater than 0, got "fast"'],
    ["PRODUCER_RATE", "Infinity", 'PRODUCER_RATE must be a number greater than 0, got "Infinity"'],
    ["BATCH_QUIET_SECONDS", "0", 'BATCH_QUIET_SECONDS must be a number greater than 0, got "0"'],
    ["LOG_LEVEL", "loud", 'LOG_LEVEL must be error, warn, info or debug, got "loud"'],
    ["KAFKA_TOPIC", "sales topic", `KAFKA_TOPIC may hold only letters, digits, '.', '_' and '-', got "sales topic"`],
    ["KAFKA_TOPIC", "sales/topic", `KAFKA_TOPIC may hold only letters, digits, '.', '_' and '-', got "sales/topic"`],
    ["KAFKA_TOPIC", "t".repeat(250), `KAFKA_TOPIC may hold only letters, digits, '.', '_' and '-', got "${"t".repeat(250)}"`],
    ["DATABASE_URL", "mysql://x", 'DATABASE_URL must start with postgres:// or postgresql://, got "mysql://x"'],
  ])("refuses %s=%p, naming the variable", (name, value, message) => {
    expect(() => readConfig({ [name]: value })).toThrow(message);
  });
});

describe("parsePositiveInt", () => {
  test("reads a whole number within the limit", () => {
    expect(parsePositiveInt("1", "--limit")).toBe(1);
    expect(parsePositiveInt("1000", "--limit", 1000)).toBe(1000);
  });

  test("names the flag it checks", () => {
    expect(() => parsePositiveInt("x", "--limit")).toThrow(
      `--limit must be a whole number from 1 to ${Number.MAX_SAFE_INTEGER}, got "x"`,
    );
  });
});

describe("parsePositiveNumber", () => {
  test("reads decimals and refuses blank text", () => {
    expect(parsePositiveNumber("2.5", "--quiet")).toBe(2.5);
    expect(() => parsePositiveNumber(" ", "--quiet")).toThrow('--quiet must be a number greater than 0, got " "');
  });
});

describe("parseRate", () => {
  test("reads max as Infinity and numbers as themselves", () => {
    expect(parseRate("max", "--rate")).toBe(Infinity);
    expect(parseRate("250", "--rate")).toBe(250);
  });

  test("names the flag for a bad rate", () => {
    expect(() => parseRate("-1", "--rate")).toThrow('--rate must be a number greater than 0, got "-1"');
  });
});

describe("parseBrokers", () => {
  test("splits, trims and drops empty entries", () => {
    expect(parseBrokers(" a:1 ,, b.example.com:9092 ,", "KAFKA_BROKERS")).toEqual(["a:1", "b.example.com:9092"]);
  });

  test("refuses a broker without a port", () => {
    expect(() => parseBrokers("localhost", "--brokers")).toThrow(
      '--brokers must be a comma-separated list of host:port, got "localhost"',
    );
  });
});

describe("ENV_DOCS", () => {
  test("documents every variable readConfig reads", () => {
    expect(Object.keys(ENV_DOCS).sort()).toEqual(
      [
        "BATCHES_DIR",
        "BATCH_QUIET_SECONDS",
        "BATCH_SIZE",
        "DATABASE_URL",
        "DATA_FILE",
        "KAFKA_BROKERS",
        "KAFKA_CLIENT_ID",
        "KAFKA_GROUP_ID",
        "KAFKA_PARTITIONS",
        "KAFKA_TOPIC",
        "LOG_LEVEL",
        "PRODUCER_RATE",
      ].sort(),
    );
  });
});
