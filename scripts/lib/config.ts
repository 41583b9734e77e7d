// Reads the environment once into a typed, frozen object. Defaults match docker-compose.yml and local
// mode, so nothing needs to be set for the walkthrough. A bad value stops the script at start-up and
// names the variable. Bun loads `.env` by itself (see .env.example); flags override these per run.

import { isLevel, type Level } from "./log.ts";

export interface Config {
  readonly kafkaBrokers: readonly string[];
  readonly kafkaTopic: string;
  readonly kafkaGroupId: string;
  readonly kafkaClientId: string;
  readonly kafkaPartitions: number;
  /** undefined: let postgres.js read PGHOST, PGDATABASE, ... */
  readonly databaseUrl: string | undefined;
  readonly dataFile: string;
  readonly batchesDir: string;
  readonly batchSize: number;
  readonly batchQuietSeconds: number;
  /** messages per second; Infinity for "max" */
  readonly producerRate: number;
  readonly logLevel: Level;
}

export const DEFAULT_DATABASE_URL = "postgres://postgres:postgres@127.0.0.1:5432/sales";

/** Every variable a script may read, with its default, for `--help`. */
export const ENV_DOCS: Readonly<Record<string, string>> = {
  KAFKA_BROKERS: "127.0.0.1:9092 (comma-separated host:port list)",
  KAFKA_TOPIC: "sales_topic",
  KAFKA_GROUP_ID: "sales-batcher",
  KAFKA_CLIENT_ID: "sales-pipeline",
  KAFKA_PARTITIONS: "1 (used when the producer or consumer creates the topic)",
  DATABASE_URL: `${DEFAULT_DATABASE_URL} (or PGHOST, PGPORT, PGUSER, PGDATABASE, ...)`,
  DATA_FILE: "data/Sample-Superstore.csv",
  BATCHES_DIR: "batches",
  BATCH_SIZE: "100",
  BATCH_QUIET_SECONDS: "5",
  PRODUCER_RATE: '1 (messages per second, or "max")',
  LOG_LEVEL: "info (error | warn | info | debug)",
};

type Env = Record<string, string | undefined>;

function text(env: Env, name: string, fallback: string): string {
  const value = env[name]?.trim();
  return value ? value : fallback;
}

export function parsePositiveInt(value: string, name: string, max = Number.MAX_SAFE_INTEGER): number {
  if (!/^\d+$/.test(value.trim()) || Number(value) < 1 || Number(value) > max) {
    throw new Error(`${name} must be a whole number from 1 to ${max}, got "${value}"`);
  }
  return Number(value);
}

export function parsePositiveNumber(value: string, name: string): number {
  const n = Number(value);
  if (value.trim() === "" || !Number.isFinite(n) || n <= 0) {
    throw new Error(`${name} must be a number greater than 0, got "${value}"`);
  }
  return n;
}

/** "1", "0.5", "250" or "max" (Infinity). */
export function parseRate(value: string, name: string): number {
  return value.trim().toLowerCase() === "max" ? Infinity : parsePositiveNumber(value, name);
}

export function parseBrokers(value: string, name: string): string[] {
  const brokers = value
    .split(",")
    .map((b) => b.trim())
    .filter(Boolean);
  const bad = brokers.find((b) => !/^[^\s:]+:\d{1,5}$/.test(b));
  if (brokers.length === 0 || bad !== undefined) {
    throw new Error(`${name} must be a comma-separated list of host:port, got "${value}"`);
  }
  return brokers;
}

function databaseUrl(env: Env): string | undefined {
  const url = env.DATABASE_URL?.trim();
  if (url) {
    if (!/^postgres(ql)?:\/\//.test(url)) {
      throw new Error(`DATABASE_URL must start with postgres:// or postgresql://, got "${url}"`);
    }
    return url;
  }
  // With PG* variables and no URL, postgres.js builds the connection from them.
  const usesPgVars = ["PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD"].some((k) => env[k]);
  return usesPgVars ? undefined : DEFAULT_DATABASE_URL;
}

export function readConfig(env: Env = process.env): Config {
  const logLevel = text(env, "LOG_LEVEL", "info").toLowerCase();
  if (!isLevel(logLevel)) throw new Error(`LOG_LEVEL must be error, warn, info or debug, got "${logLevel}"`);
  const topic = text(env, "KAFKA_TOPIC", "sales_topic");
  if (!/^[a-zA-Z0-9._-]{1,249}$/.test(topic)) {
    throw new Error(`KAFKA_TOPIC may hold only letters, digits, '.', '_' and '-', got "${topic}"`);
  }
  return Object.freeze({
    kafkaBrokers: Object.freeze(parseBrokers(text(env, "KAFKA_BROKERS", "127.0.0.1:9092"), "KAFKA_BROKERS")),
    kafkaTopic: topic,
    kafkaGroupId: text(env, "KAFKA_GROUP_ID", "sales-batcher"),
    kafkaClientId: text(env, "KAFKA_CLIENT_ID", "sales-pipeline"),
    kafkaPartitions: parsePositiveInt(text(env, "KAFKA_PARTITIONS", "1"), "KAFKA_PARTITIONS", 1000),
    databaseUrl: databaseUrl(env),
    dataFile: text(env, "DATA_FILE", "data/Sample-Superstore.csv"),
    batchesDir: text(env, "BATCHES_DIR", "batches"),
    batchSize: parsePositiveInt(text(env, "BATCH_SIZE", "100"), "BATCH_SIZE", 1_000_000),
    batchQuietSeconds: parsePositiveNumber(text(env, "BATCH_QUIET_SECONDS", "5"), "BATCH_QUIET_SECONDS"),
    producerRate: parseRate(text(env, "PRODUCER_RATE", "1"), "PRODUCER_RATE"),
    logLevel,
  });
}
