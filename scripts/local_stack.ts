// The stack under the pipeline: Kafka and PostgreSQL, with or without Docker.
//
//   up       Docker can run containers -> `docker compose up -d --wait` (docker-compose.yml).
//            Otherwise local mode: the same Kafka version as the compose image, from the official Apache
//            Kafka artifacts on Maven Central (Java 17 + Maven), one KRaft node on 127.0.0.1; its settings
//            are read from docker-compose.yml, so both modes run the same broker configuration. PostgreSQL
//            is the server at DATABASE_URL; if nothing answers there, a local one is started.
//   down     stops exactly what `up` started (recorded in .local/stack.json); keeps all data.
//   destroy  down, then deletes the data: Kafka's log folder (or the compose volumes) and the database.
//            Asks first unless CONFIRM=1.
//   status   what runs, and where.
//
//   make up | make down | make destroy | make status
//
// Env: STACK_MODE (auto | docker | local), KAFKA_BROKERS, DATABASE_URL, CONFIRM, LOG_LEVEL.

import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createInterface } from "node:readline/promises";
import { join, resolve } from "node:path";
import { fail, parseCli, UsageError } from "./lib/cli.ts";
import { readConfig, type Config } from "./lib/config.ts";
import { connect, databaseName, describeDatabase, withDatabase } from "./lib/db.ts";
import { createKafka } from "./lib/kafka.ts";
import { createLogger, type Logger } from "./lib/log.ts";
import { sleep } from "./lib/shutdown.ts";

export const STATE_DIR = ".local";
const STATE_FILE = join(STATE_DIR, "stack.json");
const COMPOSE_FILE = "docker-compose.yml";
/** Compose project name: names the containers and volumes (sales-stream_kafka-data, ...). */
const COMPOSE_PROJECT = "sales-stream";

type Mode = "docker" | "local";

/** What `up` started, so `down` stops exactly that. */
interface State {
  mode: Mode;
  kafka?: { pid: number; version: string; home: string };
  postgres?: { how: "pg_ctlcluster"; version: string; cluster: string } | { how: "pg_ctl"; bin: string; data: string; user?: string };
}

const command = {
  script: "scripts/local_stack.ts",
  summary: "Start, stop or inspect Kafka and PostgreSQL: with Docker Compose when Docker runs, else locally.",
  flags: {
    mode: { type: "string", arg: "MODE", help: "auto (default, or $STACK_MODE), docker or local" },
  },
  env: ["KAFKA_BROKERS", "DATABASE_URL", "LOG_LEVEL"],
  notes: [
    "Commands: up | down | destroy | status   (bun scripts/local_stack.ts up)",
    "STACK_MODE=local forces local mode even where Docker runs; CONFIRM=1 skips destroy's question.",
  ].join("\n"),
} as const;

// ---------------------------------------------------------------------------------------------------------
// docker-compose.yml is the single source of the broker's version and settings.

export interface ComposeFacts {
  readonly kafkaImage: string;
  readonly kafkaVersion: string;
  /** KAFKA_* environment of the kafka service, as written */
  readonly kafkaEnv: Readonly<Record<string, string>>;
  readonly postgresImage: string;
  readonly postgresMajor: number;
  readonly postgresEnv: Readonly<Record<string, string>>;
  readonly ports: Readonly<Record<string, readonly string[]>>;
}

function envOf(service: Record<string, unknown>): Record<string, string> {
  const env = service.environment;
  const out: Record<string, string> = {};
  if (Array.isArray(env)) {
    for (const item of env) {
      const [k, ...v] = String(item).split("=");
      out[k!] = v.join("=");
    }
  } else if (env && typeof env === "object") {
    for (const [k, v] of Object.entries(env)) out[k] = String(v);
  }
  return out;
}

export function readCompose(text: string): ComposeFacts {
  const doc = Bun.YAML.parse(text) as { services?: Record<string, Record<string, unknown>> };
  const kafka = doc.services?.kafka;
  const pg = doc.services?.postgres;
  if (!kafka || !pg) throw new Error(`${COMPOSE_FILE}: expected services "kafka" and "postgres"`);
  const kafkaImage = String(kafka.image);
  const postgresImage = String(pg.image);
  const kafkaVersion = /^apache\/kafka:(\d+\.\d+\.\d+)$/.exec(kafkaImage)?.[1];
  if (!kafkaVersion) throw new Error(`${COMPOSE_FILE}: kafka image must be apache/kafka:X.Y.Z, got ${kafkaImage}`);
  const postgresMajor = Number(/^postgres:(\d+)/.exec(postgresImage)?.[1]);
  if (!postgresMajor) throw new Error(`${COMPOSE_FILE}: postgres image must be postgres:MAJOR..., got ${postgresImage}`);
  const ports = (service: Record<string, unknown>) => ((service.ports as unknown[]) ?? []).map(String);
  return {
    kafkaImage,
    kafkaVersion,
    kafkaEnv: envOf(kafka),
    postgresImage,
    postgresMajor,
    postgresEnv: envOf(pg),
    ports: { kafka: ports(kafka), postgres: ports(pg) },
  };
}

/** KAFKA_FOO_BAR -> foo.bar, as the apache/kafka image does (KAFKA___ -> "-", KAFKA__ -> "_"). */
export function propertyName(variable: string): string {
  return variable
    .replace(/^KAFKA_/, "")
    .toLowerCase()
    .replace(/___/g, "-")
    .replace(/__/g, "\u0000")
    .replace(/_/g, ".")
    .replace(/\u0000/g, "_");
}

/** Settings about where the broker listens; local mode replaces them, everything else comes from compose. */
export const NETWORK_PROPERTIES = [
  "listeners",
  "advertised.listeners",
  "listener.security.protocol.map",
  "inter.broker.listener.name",
  "controller.listener.names",
  "controller.quorum.voters",
  "log.dirs",
] as const;

/** The broker's server.properties for local mode: compose's settings, listening on host:port only. */
export function localServerProperties(
  facts: ComposeFacts,
  where: { host: string; port: number; controllerPort: number; logDir: string },
): Record<string, string> {
  const props: Record<string, string> = {};
  for (const [variable, value] of Object.entries(facts.kafkaEnv)) {
    if (variable.startsWith("KAFKA_")) props[propertyName(variable)] = value;
  }
  return {
    ...props,
    listeners: `PLAINTEXT://${where.host}:${where.port},CONTROLLER://${where.host}:${where.controllerPort}`,
    "advertised.listeners": `PLAINTEXT://${where.host}:${where.port}`,
    "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
    "inter.broker.listener.name": "PLAINTEXT",
    "controller.listener.names": "CONTROLLER",
    "controller.quorum.voters": `${props["node.id"] ?? "1"}@${where.host}:${where.controllerPort}`,
    "log.dirs": where.logDir,
  };
}

// ---------------------------------------------------------------------------------------------------------

function readState(): State | undefined {
  return existsSync(STATE_FILE) ? (JSON.parse(readFileSync(STATE_FILE, "utf8")) as State) : undefined;
}

function writeState(state: State | undefined): void {
  mkdirSync(STATE_DIR, { recursive: true });
  if (state) writeFileSync(STATE_FILE, `${JSON.stringify(state, null, 2)}\n`);
  else rmSync(STATE_FILE, { force: true });
}

function run(cmd: string, args: string[], options: { quiet?: boolean; timeout?: number } = {}) {
  const result = spawnSync(cmd, args, {
    stdio: options.quiet ? "pipe" : ["ignore", "inherit", "inherit"],
    timeout: options.timeout,
    encoding: "utf8",
  });
  return { ok: result.status === 0, out: `${result.stdout ?? ""}${result.stderr ?? ""}`, missing: result.error !== undefined };
}

function has(cmd: string): boolean {
  return Bun.which(cmd) !== null;
}

function composeCommand(): string[] | undefined {
  const file = ["-p", COMPOSE_PROJECT, "-f", COMPOSE_FILE];
  if (has("docker") && run("docker", ["compose", "version"], { quiet: true, timeout: 10_000 }).ok) return ["docker", "compose", ...file];
  if (has("docker-compose")) return ["docker-compose", ...file];
  return undefined;
}

/** Docker mode needs an engine that answers, not only the client. */
function dockerRuns(): boolean {
  return has("docker") && run("docker", ["info"], { quiet: true, timeout: 10_000 }).ok && composeCommand() !== undefined;
}

export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function brokerAddress(config: Config): { host: string; port: number } {
  const [host, port] = config.kafkaBrokers[0]!.split(":");
  return { host: host!, port: Number(port) };
}

export async function kafkaAnswers(config: Config, log: Logger): Promise<boolean> {
  const admin = createKafka(config, createLogger(log.name, "silent"), { probe: true }).admin();
  try {
    await admin.connect();
    await admin.describeCluster();
    return true;
  } catch {
    return false;
  } finally {
    await admin.disconnect().catch(() => undefined);
  }
}

async function postgresAnswers(config: Config): Promise<string | undefined> {
  const url = config.databaseUrl ? withDatabase(config.databaseUrl, "postgres") : undefined;
  const sql = connect({ databaseUrl: url }, createLogger("stack", "silent"), { max: 1, database: url ? undefined : "postgres" });
  try {
    const [row] = await sql<{ version: string }[]>`select current_setting('server_version') as version`;
    return row?.version;
  } catch {
    return undefined;
  } finally {
    await sql.end({ timeout: 1 }).catch(() => undefined);
  }
}

async function waitFor(what: string, check: () => Promise<boolean>, seconds: number, alive?: () => string | undefined) {
  const deadline = performance.now() + seconds * 1000;
  while (performance.now() < deadline) {
    if (await check()) return;
    const died = alive?.();
    if (died) throw new Error(`${what} stopped while starting:\n${died}`);
    await sleep(500);
  }
  throw new Error(`${what} did not answer within ${seconds}s`);
}

function tail(path: string, lines = 30): string {
  if (!existsSync(path)) return `(no ${path})`;
  return readFileSync(path, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
}

// --- Kafka, local mode -----------------------------------------------------------------------------------

const LOG4J2 = (logFile: string) => `status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = ${logFile}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
logger.state.name = state.change.logger
logger.state.level = warn
`;

function kafkaPom(version: string): string {
  return `<project xmlns="http://maven.apache.org/POM/4.0.0">
  <!-- Written by scripts/local_stack.ts: the Apache Kafka ${version} broker and its runtime jars. -->
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.sales-stream</groupId>
  <artifactId>kafka-broker-runtime</artifactId>
  <version>${version}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>${version}</version></dependency>
    <!-- The binary distribution logs through log4j2; this binds Kafka's slf4j 1.7 calls to it. -->
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>2.24.3</version></dependency>
  </dependencies>
</project>
`;
}

function javaMajor(): number | undefined {
  const result = run("java", ["-version"], { quiet: true });
  if (result.missing) return undefined;
  const m = /version "(\d+)(?:\.(\d+))?/.exec(result.out);
  if (!m) return undefined;
  return m[1] === "1" ? Number(m[2]) : Number(m[1]);
}

/** Downloads the broker's jars once per version (Maven's own cache makes the next machine's run fast). */
function ensureKafkaJars(home: string, version: string, log: Logger): string {
  const libs = join(home, "libs");
  const marker = join(libs, `.complete-${version}`);
  if (existsSync(marker)) return libs;
  const java = javaMajor();
  if (java === undefined || java < 17) {
    throw new Error(
      `local mode runs Kafka ${version} on Java 17 or newer (found ${java ?? "no java"}): ` +
        "install openjdk-17-jre-headless, or use Docker",
    );
  }
  if (!has("mvn")) throw new Error("local mode fetches Kafka from Maven Central with Maven: install maven, or use Docker");
  mkdirSync(home, { recursive: true });
  writeFileSync(join(home, "pom.xml"), kafkaPom(version));
  log.info(`fetching Apache Kafka ${version} from Maven Central (once)...`);
  rmSync(libs, { recursive: true, force: true });
  const result = run("mvn", [
    "-q",
    "-B",
    "-f",
    join(home, "pom.xml"),
    "dependency:copy-dependencies",
    `-DoutputDirectory=${libs}`,
    "-DincludeScope=runtime",
  ]);
  if (!result.ok) throw new Error(`Maven could not fetch org.apache.kafka:kafka_2.13:${version} (see its output above)`);
  writeFileSync(marker, "");
  return libs;
}

export interface BrokerOptions {
  /** folder for server.properties, the logs and (in data/) the broker's storage */
  readonly dir: string;
  /** folder of the broker's jars (kafkaJars) */
  readonly libs: string;
  readonly port: number;
  readonly controllerPort: number;
  readonly facts: ComposeFacts;
  /** JVM heap, e.g. "1g" */
  readonly heap?: string;
}

/** The jars of Kafka `version`, fetched from Maven Central the first time. */
export function kafkaJars(version: string, log: Logger): string {
  return ensureKafkaJars(resolve(STATE_DIR, "kafka", version), version, log);
}

/**
 * Starts one KRaft broker+controller process on 127.0.0.1 with compose's settings, formatting its storage the
 * first time; returns the pid at once (see waitForBroker). The process outlives this script.
 */
export function launchBroker(options: BrokerOptions, log: Logger): number {
  const { dir, libs, port, controllerPort, facts } = options;
  mkdirSync(dir, { recursive: true });
  const dataDir = join(dir, "data");
  const properties = localServerProperties(facts, { host: "127.0.0.1", port, controllerPort, logDir: dataDir });
  const propsFile = join(dir, "server.properties");
  writeFileSync(
    propsFile,
    `# Written by scripts/local_stack.ts from ${COMPOSE_FILE}; edit that file, not this one.\n` +
      Object.entries(properties)
        .map(([k, v]) => `${k}=${v}`)
        .join("\n") +
      "\n",
  );
  writeFileSync(join(dir, "log4j2.properties"), LOG4J2(join(dir, "server.log")));
  const heap = options.heap ?? "1g";
  const java = (main: string, args: string[]) => [
    "-Xms256m",
    `-Xmx${heap}`,
    `-Dlog4j2.configurationFile=${join(dir, "log4j2.properties")}`,
    "-cp",
    `${libs}/*`,
    main,
    ...args,
  ];
  if (!existsSync(join(dataDir, "meta.properties"))) {
    const clusterId = randomBytes(16).toString("base64url");
    const format = run("java", java("kafka.tools.StorageTool", ["format", "-t", clusterId, "-c", propsFile]), { quiet: true });
    if (!format.ok) throw new Error(`formatting Kafka's storage failed:\n${format.out}`);
    log.info(`formatted KRaft storage in ${dataDir}`);
  }
  const console = openSync(join(dir, "console.log"), "a");
  const child = spawn("java", java("kafka.Kafka", [propsFile]), { detached: true, stdio: ["ignore", console, console] });
  child.unref();
  return child.pid!;
}

/** Waits until the broker at config's address answers; fails early with its log if process `pid` died. */
export async function waitForBroker(config: Config, pid: number, dir: string, log: Logger, seconds = 90): Promise<void> {
  await waitFor("Kafka", () => kafkaAnswers(config, log), seconds, () =>
    pidAlive(pid) ? undefined : `${tail(join(dir, "console.log"))}\n${tail(join(dir, "server.log"))}`,
  );
}

async function startKafka(config: Config, facts: ComposeFacts, log: Logger): Promise<State["kafka"]> {
  const { host, port } = brokerAddress(config);
  if (!["127.0.0.1", "localhost"].includes(host)) {
    throw new Error(`local mode runs Kafka on this machine, but KAFKA_BROKERS points at ${host}:${port}`);
  }
  const home = resolve(STATE_DIR, "kafka");
  const libs = kafkaJars(facts.kafkaVersion, log);
  const pid = launchBroker({ dir: home, libs, port, controllerPort: port + 1, facts }, log);
  log.info(`starting Kafka ${facts.kafkaVersion} (pid ${pid}) on 127.0.0.1:${port}, logs in ${home}/server.log`);
  await waitForBroker(config, pid, home, log);
  return { pid, version: facts.kafkaVersion, home };
}

export async function stopPid(pid: number, what: string, log: Logger): Promise<void> {
  if (!pidAlive(pid)) return;
  process.kill(pid, "SIGTERM");
  const deadline = performance.now() + 30_000;
  while (pidAlive(pid) && performance.now() < deadline) await sleep(200);
  if (pidAlive(pid)) {
    log.warn(`${what} (pid ${pid}) did not stop in 30s; killing it`);
    process.kill(pid, "SIGKILL");
  }
  log.info(`stopped ${what} (pid ${pid})`);
}

// --- PostgreSQL, local mode ------------------------------------------------------------------------------

function postgresPort(config: Config): number {
  return config.databaseUrl ? Number(new URL(config.databaseUrl).port || 5432) : Number(process.env.PGPORT ?? 5432);
}

async function startPostgres(config: Config, log: Logger): Promise<State["postgres"]> {
  const where = describeDatabase(config.databaseUrl);
  const host = config.databaseUrl ? new URL(config.databaseUrl).hostname : (process.env.PGHOST ?? "localhost");
  if (!["127.0.0.1", "localhost", "::1", "[::1]"].includes(host) && !host.startsWith("/")) {
    throw new Error(`PostgreSQL at ${where} does not answer, and it is not on this machine to start it`);
  }
  const port = postgresPort(config);
  // Debian / Ubuntu packages: a cluster on that port, started the packaged way.
  if (has("pg_lsclusters") && has("pg_ctlcluster")) {
    const clusters = run("pg_lsclusters", ["--no-header"], { quiet: true }).out.trim().split("\n");
    for (const line of clusters) {
      const [version, cluster, clusterPort] = line.trim().split(/\s+/);
      if (version && cluster && Number(clusterPort) === port) {
        log.info(`starting PostgreSQL ${version}/${cluster} on port ${port} (pg_ctlcluster)`);
        const started = run("pg_ctlcluster", ["--skip-systemctl-redirect", version, cluster, "start"]);
        if (!started.ok) throw new Error(`pg_ctlcluster ${version} ${cluster} start failed`);
        return { how: "pg_ctlcluster", version, cluster };
      }
    }
  }
  // Any other install with server binaries: a cluster of our own under .local/postgres.
  const dbUser = config.databaseUrl ? decodeURIComponent(new URL(config.databaseUrl).username || "postgres") : "postgres";
  log.info(`starting a local PostgreSQL in ${resolve(STATE_DIR, "postgres")} on port ${port}`);
  return launchPostgres({ data: resolve(STATE_DIR, "postgres"), port, superuser: dbUser }, where);
}

export type PostgresCluster = Extract<NonNullable<State["postgres"]>, { how: "pg_ctl" }>;

/**
 * A PostgreSQL cluster of our own in `data` (initdb the first time, trust auth, listening on 127.0.0.1:port),
 * started with pg_ctl. As root the server runs as the postgres user, because it refuses to run as root.
 */
export function launchPostgres(options: { data: string; port: number; superuser?: string }, where = "PostgreSQL"): PostgresCluster {
  const bin = [Bun.which("pg_ctl") ? "" : undefined, ...listPostgresBins()].find((b) => b !== undefined);
  if (bin === undefined) {
    throw new Error(
      `${where} does not answer and no PostgreSQL server is installed ` +
        "(apt-get install postgresql, or use Docker, or set DATABASE_URL)",
    );
  }
  const { data, port } = options;
  const tool = (name: string) => (bin ? join(bin, name) : name);
  const user = process.getuid?.() === 0 ? "postgres" : undefined;
  const as = (args: string[]) => (user ? ["runuser", ["-u", user, "--", ...args]] : [args[0]!, args.slice(1)]) as [string, string[]];
  if (!existsSync(join(data, "PG_VERSION"))) {
    mkdirSync(data, { recursive: true });
    if (user) run("chown", ["-R", user, data]);
    const init = run(...as([tool("initdb"), "-D", data, "-U", options.superuser ?? "postgres", "-A", "trust", "-E", "UTF8"]), { quiet: true });
    if (!init.ok) throw new Error(`initdb failed:\n${init.out}`);
  }
  const cluster: PostgresCluster = { how: "pg_ctl", bin, data, user };
  startCluster(cluster, port);
  return cluster;
}

/** (Re)starts a cluster made by launchPostgres; does nothing when it runs already. */
export function startCluster(cluster: PostgresCluster, port: number): void {
  if (pgCtl(cluster, ["status"]).ok) return;
  const options = `-p ${port} -k /tmp -c listen_addresses=127.0.0.1`;
  const start = pgCtl(cluster, ["-l", join(cluster.data, "server.log"), "-w", "-o", options, "start"]);
  if (!start.ok) throw new Error(`pg_ctl start failed (${start.out.trim()}), see ${join(cluster.data, "server.log")}`);
}

/** Can launchPostgres run here (initdb and pg_ctl installed)? */
export function postgresServerInstalled(): boolean {
  return Bun.which("pg_ctl") !== null || listPostgresBins().length > 0;
}

function listPostgresBins(): string[] {
  const root = "/usr/lib/postgresql";
  if (!existsSync(root)) return [];
  return (spawnSync("ls", [root], { encoding: "utf8" }).stdout ?? "")
    .split("\n")
    .filter(Boolean)
    .sort((a, b) => Number(b) - Number(a))
    .map((v) => join(root, v, "bin"))
    .filter((b) => existsSync(join(b, "pg_ctl")));
}

export function stopPostgres(state: NonNullable<State["postgres"]>, log: Logger): void {
  if (state.how === "pg_ctlcluster") {
    run("pg_ctlcluster", ["--skip-systemctl-redirect", state.version, state.cluster, "stop"]);
    log.info(`stopped PostgreSQL ${state.version}/${state.cluster}`);
  } else {
    const result = pgCtl(state, ["-m", "fast", "stop"]);
    if (!result.ok) log.warn(`pg_ctl stop: ${result.out.trim()}`);
    else log.info(`stopped the local PostgreSQL in ${state.data}`);
  }
}

/** Runs pg_ctl for a cluster made by launchPostgres (as its owner when we are root). */
function pgCtl(cluster: PostgresCluster, args: string[]) {
  const command = [cluster.bin ? join(cluster.bin, "pg_ctl") : "pg_ctl", "-D", cluster.data, ...args];
  return cluster.user
    ? run("runuser", ["-u", cluster.user, "--", ...command], { quiet: true })
    : run(command[0]!, command.slice(1), { quiet: true });
}

// --- commands --------------------------------------------------------------------------------------------

function chooseMode(flag: string | undefined, log: Logger): Mode {
  const wanted = (flag ?? process.env.STACK_MODE ?? "auto").toLowerCase();
  if (wanted === "docker" || wanted === "local") return wanted;
  if (wanted !== "auto") throw new UsageError(`--mode / STACK_MODE must be auto, docker or local, got "${wanted}"`);
  if (dockerRuns()) return "docker";
  log.info("Docker cannot run containers here: local mode (Kafka from Maven Central, local PostgreSQL)");
  return "local";
}

async function up(config: Config, mode: Mode, log: Logger): Promise<void> {
  const facts = readCompose(readFileSync(COMPOSE_FILE, "utf8"));
  const state: State = readState() ?? { mode };
  if (state.mode !== mode) throw new Error(`the stack is already up in ${state.mode} mode: run "make down" first`);
  if (mode === "docker") {
    const compose = composeCommand()!;
    // `--wait` (healthchecks) is Compose v2; with the older docker-compose, wait for the services here.
    const v2 = compose[0] === "docker";
    const result = run(compose[0]!, [...compose.slice(1), "up", "-d", ...(v2 ? ["--wait"] : [])]);
    if (!result.ok) throw new Error("docker compose up failed (see above)");
    writeState(state);
    await waitFor("Kafka", () => kafkaAnswers(config, log), 120);
    await waitFor("PostgreSQL", async () => (await postgresAnswers(config)) !== undefined, 120);
  } else {
    if (state.kafka && pidAlive(state.kafka.pid) && (await kafkaAnswers(config, log))) {
      log.info(`Kafka ${state.kafka.version} already running (pid ${state.kafka.pid})`);
    } else if (await kafkaAnswers(config, log)) {
      log.info(`a Kafka broker already answers at ${config.kafkaBrokers.join(",")}; using it (down will not stop it)`);
      delete state.kafka;
    } else {
      state.kafka = await startKafka(config, facts, log);
    }
    writeState(state);
    const version = await postgresAnswers(config);
    if (version) {
      log.info(`PostgreSQL ${version} answers at ${describeDatabase(config.databaseUrl)}`);
      if (Number.parseInt(version) !== facts.postgresMajor) {
        log.warn(`docker-compose.yml runs PostgreSQL ${facts.postgresMajor}; this server is ${version}`);
      }
    } else {
      state.postgres = await startPostgres(config, log);
      writeState(state);
      await waitFor("PostgreSQL", async () => (await postgresAnswers(config)) !== undefined, 60);
    }
  }
  log.info(`up (${mode} mode): Kafka ${config.kafkaBrokers.join(",")}, PostgreSQL ${describeDatabase(config.databaseUrl)}`);
}

async function down(log: Logger): Promise<State | undefined> {
  const state = readState();
  if (!state) {
    log.info("nothing to stop (make up did not start anything here)");
    return undefined;
  }
  if (state.mode === "docker") {
    const compose = composeCommand();
    if (compose) run(compose[0]!, [...compose.slice(1), "down"]);
  } else {
    if (state.kafka) await stopPid(state.kafka.pid, `Kafka ${state.kafka.version}`, log);
    if (state.postgres) stopPostgres(state.postgres, log);
  }
  writeState(undefined);
  return state;
}

async function confirm(question: string): Promise<boolean> {
  if (process.env.CONFIRM === "1") return true;
  if (!process.stdin.isTTY) return false;
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  try {
    return (await rl.question(`${question} Type "yes" to continue: `)).trim().toLowerCase() === "yes";
  } finally {
    rl.close();
  }
}

async function destroy(config: Config, mode: Mode, log: Logger): Promise<void> {
  const state = readState();
  const effective = state?.mode ?? mode;
  const db = databaseName(config.databaseUrl);
  const lost =
    effective === "docker"
      ? [
          "  - the compose volumes: every Kafka topic and committed offset, and the whole PostgreSQL data",
          "    directory, with every loaded row (docker compose down -v)",
        ]
      : [
          `  - Kafka's data in ${STATE_DIR}/kafka/data: every topic, message and committed offset`,
          `  - the database "${db}" at ${describeDatabase(config.databaseUrl)}: users, products, orders, rejected rows,`,
          "    the load ledger and migration history",
          ...(state?.postgres?.how === "pg_ctl" ? [`  - the local PostgreSQL cluster in ${STATE_DIR}/postgres`] : []),
        ];
  process.stderr.write(`This deletes, with no way back:\n${lost.join("\n")}\nBatch files in batches/ stay (make clean removes them).\n`);
  if (!(await confirm("Delete all of this?"))) {
    throw new UsageError('not confirmed; nothing deleted (answer "yes", or run with CONFIRM=1)');
  }
  if (effective === "docker") {
    const compose = composeCommand();
    if (!compose) throw new Error("docker compose is not available to remove the volumes");
    run(compose[0]!, [...compose.slice(1), "down", "-v"]);
    writeState(undefined);
  } else {
    // The database goes while PostgreSQL still runs; Kafka's folder once the broker has stopped.
    if ((await postgresAnswers(config)) !== undefined && config.databaseUrl) {
      const sql = connect({ databaseUrl: withDatabase(config.databaseUrl, "postgres") }, log, { max: 1 });
      try {
        await sql`drop database if exists ${sql(db)} with (force)`;
        log.info(`dropped database ${db}`);
      } finally {
        await sql.end({ timeout: 5 });
      }
    }
    const stopped = await down(log);
    rmSync(join(STATE_DIR, "kafka", "data"), { recursive: true, force: true });
    if (stopped?.postgres?.how === "pg_ctl") rmSync(stopped.postgres.data, { recursive: true, force: true });
  }
  log.info("deleted; make up starts from empty");
}

async function status(config: Config, log: Logger): Promise<void> {
  const state = readState();
  const kafka = await kafkaAnswers(config, log);
  const pg = await postgresAnswers(config);
  const out = [
    `mode:       ${state ? `${state.mode} (started by make up)` : "nothing started by make up"}`,
    `kafka:      ${config.kafkaBrokers.join(",")} ${kafka ? "answers" : "DOES NOT ANSWER"}` +
      (state?.kafka ? ` (local ${state.kafka.version}, pid ${state.kafka.pid})` : ""),
    `postgresql: ${describeDatabase(config.databaseUrl)} ${pg ? `answers (${pg})` : "DOES NOT ANSWER"}`,
  ];
  process.stdout.write(`${out.join("\n")}\n`);
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const verb = args.find((a) => !a.startsWith("-"));
  const flags = parseCli(command, args.filter((a) => a !== verb));
  if (!flags) return;
  const config = readConfig();
  const log = createLogger("stack", config.logLevel);
  switch (verb) {
    case "up":
      return up(config, chooseMode(flags.mode, log), log);
    case "down":
      await down(log);
      return;
    case "destroy":
      return destroy(config, chooseMode(flags.mode, log), log);
    case "status":
      return status(config, log);
    default:
      throw new UsageError(`expected up, down, destroy or status, got ${verb ?? "nothing"}`);
  }
}

if (import.meta.main) main().catch(fail);
