// The environment, read once, in this module only: a typed, frozen object. Defaults match docker-compose.yml
// and local mode, so nothing needs to be set for the walkthrough. A bad value stops the script at start-up
// and names the variable; a value that may hold a password is never printed back. Bun loads `.env` by itself
// (see .env.example); flags override these per run and are checked by the same parse* functions.

import { addSecret, isLevel, type Level } from "./log.ts";

export type StackMode = "auto" | "docker" | "local";

/** Where PostgreSQL is, resolved once from DATABASE_URL or the PG* variables. */
export interface DatabaseTarget {
  /** host name, or the folder of a Unix socket */
  readonly host: string;
  readonly port: number;
  readonly database: string;
  readonly user: string;
  /** secret: never logged (the logger masks it) */
  readonly password: string | undefined;
  /** postgres.js "ssl" setting, from ?sslmode= */
  readonly ssl: string | undefined;
}

export interface Config {
  readonly kafkaBrokers: readonly string[];
  /** Kafka nodes `make up` runs: 1, or 3 (a cluster); the default KAFKA_BROKERS follows it */
  readonly kafkaNodes: number;
  readonly kafkaTopic: string;
  readonly kafkaGroupId: string;
  readonly kafkaClientId: string;
  readonly kafkaPartitions: number;
  readonly database: DatabaseTarget;
  readonly dataFile: string;
  readonly batchesDir: string;
  readonly batchSize: number;
  readonly batchQuietSeconds: number;
  /** messages per second; Infinity for "max" */
  readonly producerRate: number;
  readonly logLevel: Level;
  readonly stackMode: StackMode;
  /** CONFIRM=1: destructive commands do not ask */
  readonly confirm: boolean;
  readonly dashboardPort: number;
  /** password of the read-only role for Tableau and the dashboard; secret */
  readonly biReaderPassword: string | undefined;
  /** test hook of the consumer (SALES_CRASH_AT): die like a power cut at this point of the first batch */
  readonly crashAt: string | undefined;
  /** CI's switch (REQUIRE_ALL_TESTS=1): tests whose tools are missing (Java, a browser, xmllint) fail instead of skipping */
  readonly requireAllTests: boolean;
  /** the cluster fault tests: runs of each case (CHAOS_RUNS, make chaos) and rows per run (CHAOS_ROWS) */
  readonly chaosRuns: number;
  readonly chaosRows: number;
}

export const DEFAULT_DATABASE_URL = "postgres://postgres:postgres@127.0.0.1:5432/sales";

/** Every variable a script may read, with its default, for `--help`. */
export const ENV_DOCS: Readonly<Record<string, string>> = {
  KAFKA_BROKERS: "127.0.0.1:9092 (comma-separated host:port list; with KAFKA_NODES=3: 127.0.0.1:9092,127.0.0.1:9094,127.0.0.1:9096)",
  KAFKA_NODES: "1 (make up: 1 Kafka node, or 3 for a cluster)",
  KAFKA_TOPIC: "sales_topic",
  KAFKA_GROUP_ID: "sales-batcher",
  KAFKA_CLIENT_ID: "sales-pipeline",
  KAFKA_PARTITIONS: "1 (used when the producer or consumer creates the topic)",
  DATABASE_URL: `${DEFAULT_DATABASE_URL.replace(":postgres@", ":***@")} (or PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE)`,
  DATA_FILE: "data/Sample-Superstore.csv",
  BATCHES_DIR: "batches",
  BATCH_SIZE: "100",
  BATCH_QUIET_SECONDS: "5",
  PRODUCER_RATE: '1 (messages per second, or "max")',
  LOG_LEVEL: "info (error | warn | info | debug)",
  STACK_MODE: "auto (docker when Docker runs containers, else local)",
  CONFIRM: "unset (1: do not ask before deleting data)",
  DASHBOARD_PORT: "8050",
  BI_READER_PASSWORD: "unset (set it to create the read-only login bi_reader)",
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
  const bad = brokers.find((b) => !/^[^\s:]+:\d{1,5}$/.test(b) || Number(b.split(":")[1]) > 65535);
  if (brokers.length === 0 || bad !== undefined) {
    throw new Error(`${name} must be a comma-separated list of host:port, got "${value}"`);
  }
  return brokers;
}

/** Kafka's own rule for topic names (kafka.common.internals.Topic): 1-249 of [a-zA-Z0-9._-], not "." or "..". */
export function parseTopic(value: string, name: string): string {
  if (value === "." || value === "..") throw new Error(`${name} cannot be "." or ".." (Kafka's rule), got "${value}"`);
  if (value.length > 249) throw new Error(`${name} may be at most 249 characters long (Kafka's rule), got ${value.length}`);
  if (!/^[a-zA-Z0-9._-]+$/.test(value)) {
    throw new Error(`${name} may hold only letters, digits, '.', '_' and '-' (Kafka's rule), got ${JSON.stringify(value)}`);
  }
  return value;
}

/** Kafka takes any non-empty group id that fits a protocol string (32,767 bytes of UTF-8). */
export function parseGroupId(value: string, name: string): string {
  if (value === "") throw new Error(`${name} cannot be empty`);
  if (Buffer.byteLength(value) > 32_767) throw new Error(`${name} may be at most 32,767 bytes long (Kafka's rule)`);
  return value;
}

export function parsePort(value: string, name: string): number {
  return parsePositiveInt(value, name, 65_535);
}

/** The scheme and host of a URL-like value, for messages that must not echo a password. */
function urlShape(value: string): string {
  const scheme = /^([a-z][a-z0-9+.-]*):/i.exec(value)?.[1];
  return scheme ? `a value starting with "${scheme}:"` : "a value that is not a URL";
}

/** DATABASE_URL, or the PG* variables postgres.js and psql read, into one target. */
export function parseDatabase(env: Env): DatabaseTarget {
  const raw = env.DATABASE_URL?.trim();
  if (raw) {
    if (!/^postgres(ql)?:\/\//i.test(raw)) {
      throw new Error(`DATABASE_URL must start with postgres:// or postgresql://, got ${urlShape(raw)}`);
    }
    let url: URL;
    try {
      url = new URL(raw);
    } catch {
      throw new Error(
        "DATABASE_URL is not a valid URL: expected postgres://user:password@host:5432/database " +
          "(characters such as spaces, '/', '?' or '#' in the password must be percent-encoded)",
      );
    }
    const password = url.password === "" ? undefined : decodeURIComponent(url.password);
    if (password) addSecret(password);
    const database = decodeURIComponent(url.pathname.replace(/^\//, ""));
    const user = decodeURIComponent(url.username) || "postgres";
    return Object.freeze({
      host: decodeURIComponent(url.hostname).replace(/^\[(.*)\]$/, "$1") || "localhost",
      port: url.port ? parsePort(url.port, "DATABASE_URL's port") : 5432,
      database: database || user,
      user,
      password,
      ssl: url.searchParams.get("sslmode") ?? undefined,
    });
  }
  if (!["PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD"].some((k) => env[k]?.trim())) {
    return parseDatabase({ DATABASE_URL: DEFAULT_DATABASE_URL });
  }
  const user = text(env, "PGUSER", "postgres");
  const password = env.PGPASSWORD || undefined;
  if (password) addSecret(password);
  return Object.freeze({
    host: text(env, "PGHOST", "localhost"),
    port: parsePort(text(env, "PGPORT", "5432"), "PGPORT"),
    database: text(env, "PGDATABASE", user),
    user,
    password,
    ssl: env.PGSSLMODE?.trim() || undefined,
  });
}

/** The addresses of `make up`'s Kafka nodes on this machine: 9092, 9094, 9096 (compose's ports). */
export function localKafkaBrokers(nodes: number): string[] {
  return Array.from({ length: nodes }, (_, i) => `127.0.0.1:${9092 + 2 * i}`);
}

export function parseKafkaNodes(value: string, name: string): number {
  if (value.trim() !== "1" && value.trim() !== "3") throw new Error(`${name} must be 1 or 3 (a cluster), got "${value}"`);
  return Number(value);
}

export function parseStackMode(value: string, name: string): StackMode {
  const mode = value.toLowerCase();
  if (mode === "auto" || mode === "docker" || mode === "local") return mode;
  throw new Error(`${name} must be auto, docker or local, got "${value}"`);
}

/** LOG_LEVEL without failing, for the logger and error printer that run before (or without) readConfig. */
export function envLogLevel(env: Env = process.env): Level {
  const value = (env.LOG_LEVEL ?? "").trim().toLowerCase();
  return isLevel(value) ? value : "info";
}

export function readConfig(env: Env = process.env): Config {
  const logLevel = text(env, "LOG_LEVEL", "info").toLowerCase();
  if (!isLevel(logLevel)) throw new Error(`LOG_LEVEL must be error, warn, info or debug, got "${logLevel}"`);
  const biReaderPassword = env.BI_READER_PASSWORD || undefined;
  if (biReaderPassword) addSecret(biReaderPassword);
  const kafkaNodes = parseKafkaNodes(text(env, "KAFKA_NODES", "1"), "KAFKA_NODES");
  return Object.freeze({
    kafkaBrokers: Object.freeze(parseBrokers(text(env, "KAFKA_BROKERS", localKafkaBrokers(kafkaNodes).join(",")), "KAFKA_BROKERS")),
    kafkaNodes,
    kafkaTopic: parseTopic(text(env, "KAFKA_TOPIC", "sales_topic"), "KAFKA_TOPIC"),
    kafkaGroupId: parseGroupId(text(env, "KAFKA_GROUP_ID", "sales-batcher"), "KAFKA_GROUP_ID"),
    kafkaClientId: text(env, "KAFKA_CLIENT_ID", "sales-pipeline"),
    kafkaPartitions: parsePositiveInt(text(env, "KAFKA_PARTITIONS", "1"), "KAFKA_PARTITIONS", 1000),
    database: parseDatabase(env),
    dataFile: text(env, "DATA_FILE", "data/Sample-Superstore.csv"),
    batchesDir: text(env, "BATCHES_DIR", "batches"),
    batchSize: parsePositiveInt(text(env, "BATCH_SIZE", "100"), "BATCH_SIZE", 1_000_000),
    batchQuietSeconds: parsePositiveNumber(text(env, "BATCH_QUIET_SECONDS", "5"), "BATCH_QUIET_SECONDS"),
    producerRate: parseRate(text(env, "PRODUCER_RATE", "1"), "PRODUCER_RATE"),
    logLevel,
    stackMode: parseStackMode(text(env, "STACK_MODE", "auto"), "STACK_MODE"),
    confirm: text(env, "CONFIRM", "") === "1",
    dashboardPort: parsePort(text(env, "DASHBOARD_PORT", "8050"), "DASHBOARD_PORT"),
    biReaderPassword,
    crashAt: text(env, "SALES_CRASH_AT", "") || undefined,
    requireAllTests: text(env, "REQUIRE_ALL_TESTS", "") === "1",
    chaosRuns: parsePositiveInt(text(env, "CHAOS_RUNS", "1"), "CHAOS_RUNS", 100),
    chaosRows: parsePositiveInt(text(env, "CHAOS_ROWS", "6000"), "CHAOS_ROWS", 10_000_000),
  });
}
