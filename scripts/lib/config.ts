// The environment, read once, in this module only: a typed, frozen object. Defaults match docker-compose.yml
// and local mode, so nothing needs to be set for the walkthrough. A bad value stops the script at start-up
// and names the variable; a value that may hold a password is never printed back. The repository's `.env`
// (see .env.example) fills in what the environment does not set, wherever the script is started; flags
// override these per run and are checked by the same parse* functions.
// Kafka's TLS and SASL settings (KAFKA_SSL*, KAFKA_SASL_*) are checked here too: the certificate and key files
// are read once, and a file that is missing or not PEM stops the script before it connects.
//
// Paths come from the project, not from the working directory (cron, systemd and schedulers start scripts
// elsewhere): a default, or a relative path in the environment or .env, is taken from the repository
// (projectPath). A relative path in a flag is the user's, typed in a shell: it is taken from the working
// directory, as every command-line tool does.

import { createPrivateKey, X509Certificate } from "node:crypto";
import { existsSync, readFileSync, realpathSync } from "node:fs";
import { isAbsolute, join, relative, resolve, sep } from "node:path";
import { parseEnv } from "node:util";
import { addSecret, isLevel, isProgressMode, type Level, type ProgressMode } from "./log.ts";

/** The repository: this file is scripts/lib/config.ts in it. */
export const REPO_ROOT = resolve(import.meta.dir, "..", "..");

/**
 * A path of the project (a default, or a value of the environment or .env): relative ones are taken from the
 * repository. The result is absolute, or relative to the working directory when it lies inside it, so
 * messages stay as short as they were when the scripts ran from the repository's root only.
 */
export function projectPath(path: string, cwd = process.cwd()): string {
  const absolute = resolve(REPO_ROOT, path);
  const inside = relative(cwd, absolute);
  if (inside === "") return ".";
  return inside === ".." || inside.startsWith(`..${sep}`) || isAbsolute(inside) ? absolute : inside;
}

/** For --help: how the scripts' paths resolve. */
export const PATHS_HELP = [
  "Paths: a relative path in a flag is taken from the current folder; a default, or a relative path in the",
  `environment or .env, from the repository (${REPO_ROOT}). The repository's .env is read wherever the script`,
  "starts, and never overrides a variable that is already set.",
].join("\n");

export type StackMode = "auto" | "docker" | "local";

/** What the loader does with a loaded batch file (BATCH_RETENTION): see scripts/lib/load/retention.ts. */
export const RETENTION_MODES = ["keep", "move", "delete"] as const;
export type RetentionMode = (typeof RETENTION_MODES)[number];

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
  /** the variables it came from, for messages: "DATABASE_URL", or the PG* ones */
  readonly setting: string;
  /**
   * What to do when the server refuses this login, for a role the pipeline gives its password (bi_reader, see
   * lib/bi_reader.ts); undefined: check the user and password in `setting`.
   */
  readonly loginHelp?: string;
}

export const SASL_MECHANISMS = ["plain", "scram-sha-256", "scram-sha-512"] as const;
export type SaslMechanism = (typeof SASL_MECHANISMS)[number];

/** TLS to the brokers (KAFKA_SSL, KAFKA_SSL_*_FILE): the files' PEM text, read once. */
export interface KafkaTls {
  /** KAFKA_SSL_CA_FILE, resolved; undefined: the public CAs Bun trusts */
  readonly caFile: string | undefined;
  readonly ca: string | undefined;
  /** KAFKA_SSL_CERT_FILE, resolved: the client certificate for mutual TLS */
  readonly certFile: string | undefined;
  readonly cert: string | undefined;
  /** the client certificate's private key (KAFKA_SSL_KEY_FILE); secret */
  readonly key: string | undefined;
}

/** The SASL login (KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD). */
export interface KafkaSasl {
  readonly mechanism: SaslMechanism;
  readonly username: string;
  /** secret: never logged (the logger masks it) */
  readonly password: string;
}

export interface Config {
  readonly kafkaBrokers: readonly string[];
  /** TLS to Kafka; undefined: plaintext */
  readonly kafkaSsl: KafkaTls | undefined;
  /** SASL login to Kafka; undefined: none */
  readonly kafkaSasl: KafkaSasl | undefined;
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
  /** a partial batch is written once its first record has waited this long, however fast records come */
  readonly batchMaxSeconds: number;
  /** BATCH_RETENTION: keep loaded batch files, move them to BATCHES_DIR/loaded/YYYY-MM-DD/, or delete them */
  readonly batchRetention: RetentionMode;
  /** BATCH_RETENTION_DAYS: loaded files whose load is older are deleted; undefined: never */
  readonly batchRetentionDays: number | undefined;
  /** messages per second; Infinity for "max" */
  readonly producerRate: number;
  readonly logLevel: Level;
  /** LOG_PROGRESS: "lines" where several processes share a terminal (make stream), else "auto" */
  readonly logProgress: ProgressMode;
  readonly stackMode: StackMode;
  /** CONFIRM=1: destructive commands do not ask */
  readonly confirm: boolean;
  readonly dashboardPort: number;
  /** password of the read-only role for Tableau and the dashboard; secret */
  readonly biReaderPassword: string | undefined;
  /** where make migrate stores bi_reader's password when BI_READER_PASSWORD is not set (mode 0600) */
  readonly biReaderPasswordFile: string;
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
  KAFKA_SSL: "false (true: TLS to the brokers; implied by KAFKA_SSL_CA_FILE)",
  KAFKA_SSL_CA_FILE: "unset: the public CAs Bun trusts (PEM file of the CA that signed the brokers' certificates)",
  KAFKA_SSL_CERT_FILE: "unset (PEM client certificate for mutual TLS, with KAFKA_SSL_KEY_FILE)",
  KAFKA_SSL_KEY_FILE: "unset (PEM private key of KAFKA_SSL_CERT_FILE, not encrypted)",
  KAFKA_SASL_MECHANISM: "unset: no SASL login (plain | scram-sha-256 | scram-sha-512)",
  KAFKA_SASL_USERNAME: "unset (the SASL user)",
  KAFKA_SASL_PASSWORD: "unset (the SASL password; never printed)",
  DATABASE_URL: `${DEFAULT_DATABASE_URL.replace(":postgres@", ":***@")} (or PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE)`,
  DATA_FILE: "data/Sample-Superstore.csv",
  BATCHES_DIR: "batches",
  BATCH_SIZE: "100",
  BATCH_QUIET_SECONDS: "5",
  BATCH_MAX_SECONDS: "10 (a batch file is written at BATCH_SIZE records or once its first record has waited this long)",
  BATCH_RETENTION:
    "keep (what the loader does with a loaded batch file: keep | move, to BATCHES_DIR/loaded/YYYY-MM-DD/ | delete, once BATCH_RETENTION_DAYS old)",
  BATCH_RETENTION_DAYS: "unset: never delete (N: loaded files whose load is N days old are deleted, in BATCHES_DIR and its loaded/; 0: at once)",
  PRODUCER_RATE: '1 (messages per second, or "max")',
  LOG_LEVEL: "info (error | warn | info | debug)",
  LOG_PROGRESS: "auto (progress redrawn in place on a terminal; lines: a whole line every 10 s, for a terminal processes share, as in make stream)",
  STACK_MODE: "auto (docker when Docker runs containers, else local)",
  CONFIRM: "unset (1: do not ask before deleting data)",
  DASHBOARD_PORT: "8050",
  BI_READER_PASSWORD: "unset: the password in BI_READER_PASSWORD_FILE (the read-only login bi_reader's password; never printed)",
  BI_READER_PASSWORD_FILE: ".local/bi_reader.password (make migrate writes a random password there, mode 0600, the first time, when BI_READER_PASSWORD is unset)",
};

/** The TLS and SASL variables, for the --help of every script that talks to Kafka. */
export const KAFKA_SECURITY_ENV = [
  "KAFKA_SSL",
  "KAFKA_SSL_CA_FILE",
  "KAFKA_SSL_CERT_FILE",
  "KAFKA_SSL_KEY_FILE",
  "KAFKA_SASL_MECHANISM",
  "KAFKA_SASL_USERNAME",
  "KAFKA_SASL_PASSWORD",
] as const;

type Env = Record<string, string | undefined>;

/** The files Bun reads from the working directory by itself, whatever NODE_ENV says (bun.sh/docs/runtime/env). */
const BUN_ENV_FILES = [".env", ".env.local", ".env.development", ".env.production", ".env.test"];

/** `$NAME` and `${NAME}` in a .env value, as Bun expands them (unset: empty); `\$` is a dollar sign. */
export function expandEnvValue(value: string, lookup: (name: string) => string | undefined): string {
  return value.replace(/\\\$|\$\{(\w+)\}|\$(\w+)/g, (match, braced?: string, bare?: string) =>
    match === "\\$" ? "$" : (lookup((braced ?? bare)!) ?? ""),
  );
}

/** The variables of a .env file in their order, unexpanded; none when it does not exist. */
function readEnvFile(path: string): [string, string][] {
  return existsSync(path) ? Object.entries(parseEnv(readFileSync(path, "utf8"))).map(([name, value]) => [name, value ?? ""]) : [];
}

/** The names the process was started with, before Bun added any .env: Linux keeps them in /proc/self/environ. */
function startupNames(): ReadonlySet<string> | null {
  try {
    return new Set(readFileSync("/proc/self/environ", "utf8").split("\0").map((entry) => entry.slice(0, entry.indexOf("="))));
  } catch {
    return null; // not Linux: told apart by value below
  }
}

function sameFolder(a: string, b: string): boolean {
  try {
    return realpathSync(a) === realpathSync(b);
  } catch {
    return false;
  }
}

/**
 * Bun reads .env from the working directory only, so a script started elsewhere would miss the repository's
 * settings and take another folder's instead. Here the variables another folder's .env files added are taken
 * out again (those the process was not started with), and the repository's .env fills in what the
 * environment does not set. From the repository's root Bun has done the same already: nothing changes.
 */
export function useRepositoryEnv(
  env: Env = process.env,
  { cwd = process.cwd(), repo = REPO_ROOT, started = startupNames() }: { cwd?: string; repo?: string; started?: ReadonlySet<string> | null } = {},
): void {
  if (sameFolder(cwd, repo)) return;
  for (const file of BUN_ENV_FILES) {
    for (const [name, value] of readEnvFile(join(cwd, file))) {
      // Without /proc: a variable holding exactly the file's value is taken for the file's.
      const fromFile = started ? !started.has(name) : env[name] === value || env[name] === expandEnvValue(value, (n) => env[n]);
      if (fromFile) delete env[name];
    }
  }
  for (const [name, value] of readEnvFile(join(repo, ".env"))) {
    if (env[name] === undefined) env[name] = expandEnvValue(value, (n) => env[n]);
  }
}

// On import, before anything reads the environment: every script reaches this module through its imports.
useRepositoryEnv();

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

export function parseRetentionMode(value: string, name: string): RetentionMode {
  const mode = value.trim().toLowerCase();
  if (!(RETENTION_MODES as readonly string[]).includes(mode)) throw new Error(`${name} must be ${RETENTION_MODES.join(", ").replace(/, (\w+)$/, " or $1")}, got "${value}"`);
  return mode as RetentionMode;
}

/** A number of days, 0 included (0: at once). */
export function parseRetentionDays(value: string, name: string): number {
  if (!/^\d+$/.test(value.trim()) || Number(value) > 36_500) throw new Error(`${name} must be a whole number of days from 0 to 36500, got "${value}"`);
  return Number(value);
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

/**
 * A percent-encoded part of DATABASE_URL, decoded. A "%" that does not start an escape (a password typed as
 * it is, "50%off") is named with the part it is in; the value itself is never printed.
 */
function decodeUrlPart(value: string, part: string): string {
  try {
    return decodeURIComponent(value);
  } catch {
    throw new Error(
      `DATABASE_URL: the ${part} holds a "%" that is not followed by two hex digits; the ${part} must be percent-encoded ` +
        "(% as %25, and likewise @ as %40, / as %2F, ? as %3F, # as %23, : as %3A)",
    );
  }
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
    const password = url.password === "" ? undefined : decodeUrlPart(url.password, "password");
    if (password) addSecret(password);
    const database = decodeUrlPart(url.pathname.replace(/^\//, ""), "database name");
    const user = decodeUrlPart(url.username, "user name") || "postgres";
    return Object.freeze({
      host: decodeUrlPart(url.hostname, "host").replace(/^\[(.*)\]$/, "$1") || "localhost",
      port: url.port ? parsePort(url.port, "DATABASE_URL's port") : 5432,
      database: database || user,
      user,
      password,
      ssl: url.searchParams.get("sslmode") ?? undefined,
      setting: "DATABASE_URL",
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
    setting: "PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE",
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

export function parseBoolean(value: string, name: string): boolean {
  const v = value.trim().toLowerCase();
  if (v === "true" || v === "1") return true;
  if (v === "false" || v === "0") return false;
  throw new Error(`${name} must be true or false, got "${value}"`);
}

/** "plain, scram-sha-256 or scram-sha-512", for messages. */
const MECHANISM_CHOICES = `${SASL_MECHANISMS.slice(0, -1).join(", ")} or ${SASL_MECHANISMS.at(-1)}`;

export function parseSaslMechanism(value: string, name: string): SaslMechanism {
  const mechanism = value.trim().toLowerCase();
  if ((SASL_MECHANISMS as readonly string[]).includes(mechanism)) return mechanism as SaslMechanism;
  throw new Error(`${name} must be ${MECHANISM_CHOICES}, got "${value}"`);
}

/** The text of the file `name` points at, with a message naming the variable when it cannot be read. */
function readSettingFile(path: string, name: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const why = code === "ENOENT" ? "no such file" : code === "EACCES" ? "permission denied" : code === "EISDIR" ? "it is a folder" : code;
    throw new Error(`${name}: cannot read ${path} (${why})`);
  }
}

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

/** A PEM file of one or more certificates (a CA bundle, or a client certificate and its chain), each checked. */
export function readCertificates(path: string, name: string): string {
  const text = readSettingFile(path, name);
  const blocks = text.match(PEM_CERTIFICATE) ?? [];
  if (blocks.length === 0) throw new Error(`${name}: ${path} is not a PEM certificate file (no "-----BEGIN CERTIFICATE-----" block)`);
  blocks.forEach((block, i) => {
    try {
      new X509Certificate(block);
    } catch {
      throw new Error(`${name}: ${path}: certificate ${i + 1} of ${blocks.length} is not a valid X.509 certificate`);
    }
  });
  return text;
}

/** An unencrypted PEM private key; its text never appears in a message. */
export function readPrivateKey(path: string, name: string): string {
  const text = readSettingFile(path, name);
  if (/-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type: 4,ENCRYPTED/.test(text)) {
    throw new Error(`${name}: ${path} is encrypted with a passphrase; give the key without one (openssl pkey -in key.pem -out plain.pem)`);
  }
  if (!/-----BEGIN (RSA |EC )?PRIVATE KEY-----/.test(text)) {
    throw new Error(`${name}: ${path} is not a PEM private key (no "-----BEGIN PRIVATE KEY-----" block)`);
  }
  try {
    createPrivateKey(text);
  } catch {
    throw new Error(`${name}: ${path} holds a private key that cannot be read`);
  }
  addSecret(text);
  return text;
}

/** KAFKA_SSL and its files: undefined for plaintext. A CA or a client certificate implies TLS. */
export function parseKafkaTls(env: Env): KafkaTls | undefined {
  // Settings, not flags: a relative path is taken from the repository, wherever the script runs.
  const file = (name: string) => (text(env, name, "") ? resolve(REPO_ROOT, text(env, name, "")) : undefined);
  const [caFile, certFile, keyFile] = [file("KAFKA_SSL_CA_FILE"), file("KAFKA_SSL_CERT_FILE"), file("KAFKA_SSL_KEY_FILE")];
  const files = ["KAFKA_SSL_CA_FILE", "KAFKA_SSL_CERT_FILE", "KAFKA_SSL_KEY_FILE"].filter((name) => file(name));
  const flag = text(env, "KAFKA_SSL", "");
  const on = flag ? parseBoolean(flag, "KAFKA_SSL") : files.length > 0;
  if (!on && files.length > 0) {
    const named = files.join(" and ");
    throw new Error(`KAFKA_SSL is false, but ${named} ${files.length > 1 ? "are" : "is"} set (used only over TLS): set KAFKA_SSL=true, or unset ${named}`);
  }
  if (!on) return undefined;
  if (Boolean(certFile) !== Boolean(keyFile)) {
    const [set, unset] = certFile ? ["KAFKA_SSL_CERT_FILE", "KAFKA_SSL_KEY_FILE"] : ["KAFKA_SSL_KEY_FILE", "KAFKA_SSL_CERT_FILE"];
    throw new Error(`${set} is set without ${unset}: mutual TLS needs both, the client certificate and its private key`);
  }
  const key = keyFile ? readPrivateKey(keyFile, "KAFKA_SSL_KEY_FILE") : undefined;
  const cert = certFile ? readCertificates(certFile, "KAFKA_SSL_CERT_FILE") : undefined;
  if (cert && key && !new X509Certificate(cert).checkPrivateKey(createPrivateKey(key))) {
    throw new Error(`KAFKA_SSL_KEY_FILE (${keyFile}) is not the private key of the certificate in KAFKA_SSL_CERT_FILE (${certFile})`);
  }
  const ca = caFile ? readCertificates(caFile, "KAFKA_SSL_CA_FILE") : undefined;
  return Object.freeze({ caFile, ca, certFile, cert, key });
}

/** KAFKA_SASL_*: undefined when no mechanism is set; a mechanism needs a user name and a password. */
export function parseKafkaSasl(env: Env): KafkaSasl | undefined {
  const mechanismText = text(env, "KAFKA_SASL_MECHANISM", "");
  const username = text(env, "KAFKA_SASL_USERNAME", "");
  // A password is taken as it is: spaces at either end may be part of it.
  const password = env.KAFKA_SASL_PASSWORD ?? "";
  if (password) addSecret(password);
  if (!mechanismText) {
    const stray = [username && "KAFKA_SASL_USERNAME", password && "KAFKA_SASL_PASSWORD"].filter(Boolean);
    if (stray.length === 0) return undefined;
    throw new Error(`${stray.join(" and ")} ${stray.length > 1 ? "are" : "is"} set, but KAFKA_SASL_MECHANISM is not: set it to ${MECHANISM_CHOICES}`);
  }
  const mechanism = parseSaslMechanism(mechanismText, "KAFKA_SASL_MECHANISM");
  const missing = [!username && "KAFKA_SASL_USERNAME", !password && "KAFKA_SASL_PASSWORD"].filter(Boolean);
  if (missing.length > 0) throw new Error(`KAFKA_SASL_MECHANISM=${mechanism} needs ${missing.join(" and ")}`);
  return Object.freeze({ mechanism, username, password });
}

/** LOG_LEVEL without failing, for the logger and error printer that run before (or without) readConfig. */
export function envLogLevel(env: Env = process.env): Level {
  const value = (env.LOG_LEVEL ?? "").trim().toLowerCase();
  return isLevel(value) ? value : "info";
}

export function readConfig(env: Env = process.env): Config {
  const logLevel = text(env, "LOG_LEVEL", "info").toLowerCase();
  if (!isLevel(logLevel)) throw new Error(`LOG_LEVEL must be error, warn, info or debug, got "${logLevel}"`);
  const logProgress = text(env, "LOG_PROGRESS", "auto").toLowerCase();
  if (!isProgressMode(logProgress)) throw new Error(`LOG_PROGRESS must be auto or lines, got "${logProgress}"`);
  const biReaderPassword = env.BI_READER_PASSWORD || undefined;
  if (biReaderPassword) addSecret(biReaderPassword);
  // First of the Kafka checks: the password is registered with the logger before any of them can fail.
  const kafkaSasl = parseKafkaSasl(env);
  const kafkaNodes = parseKafkaNodes(text(env, "KAFKA_NODES", "1"), "KAFKA_NODES");
  return Object.freeze({
    kafkaBrokers: Object.freeze(parseBrokers(text(env, "KAFKA_BROKERS", localKafkaBrokers(kafkaNodes).join(",")), "KAFKA_BROKERS")),
    kafkaSsl: parseKafkaTls(env),
    kafkaSasl,
    kafkaNodes,
    kafkaTopic: parseTopic(text(env, "KAFKA_TOPIC", "sales_topic"), "KAFKA_TOPIC"),
    kafkaGroupId: parseGroupId(text(env, "KAFKA_GROUP_ID", "sales-batcher"), "KAFKA_GROUP_ID"),
    kafkaClientId: text(env, "KAFKA_CLIENT_ID", "sales-pipeline"),
    kafkaPartitions: parsePositiveInt(text(env, "KAFKA_PARTITIONS", "1"), "KAFKA_PARTITIONS", 1000),
    database: parseDatabase(env),
    dataFile: projectPath(text(env, "DATA_FILE", "data/Sample-Superstore.csv")),
    batchesDir: projectPath(text(env, "BATCHES_DIR", "batches")),
    batchSize: parsePositiveInt(text(env, "BATCH_SIZE", "100"), "BATCH_SIZE", 1_000_000),
    batchQuietSeconds: parsePositiveNumber(text(env, "BATCH_QUIET_SECONDS", "5"), "BATCH_QUIET_SECONDS"),
    batchMaxSeconds: parsePositiveNumber(text(env, "BATCH_MAX_SECONDS", "10"), "BATCH_MAX_SECONDS"),
    batchRetention: parseRetentionMode(text(env, "BATCH_RETENTION", "keep"), "BATCH_RETENTION"),
    batchRetentionDays: text(env, "BATCH_RETENTION_DAYS", "") === "" ? undefined : parseRetentionDays(text(env, "BATCH_RETENTION_DAYS", ""), "BATCH_RETENTION_DAYS"),
    producerRate: parseRate(text(env, "PRODUCER_RATE", "1"), "PRODUCER_RATE"),
    logLevel,
    logProgress,
    stackMode: parseStackMode(text(env, "STACK_MODE", "auto"), "STACK_MODE"),
    confirm: text(env, "CONFIRM", "") === "1",
    dashboardPort: parsePort(text(env, "DASHBOARD_PORT", "8050"), "DASHBOARD_PORT"),
    biReaderPassword,
    biReaderPasswordFile: projectPath(text(env, "BI_READER_PASSWORD_FILE", ".local/bi_reader.password")),
    crashAt: text(env, "SALES_CRASH_AT", "") || undefined,
    requireAllTests: text(env, "REQUIRE_ALL_TESTS", "") === "1",
    chaosRuns: parsePositiveInt(text(env, "CHAOS_RUNS", "1"), "CHAOS_RUNS", 100),
    chaosRows: parsePositiveInt(text(env, "CHAOS_ROWS", "6000"), "CHAOS_ROWS", 10_000_000),
  });
}
