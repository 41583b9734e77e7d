// Kafka Connect with Debezium's JDBC sink: what a user would otherwise install to take a topic into a table,
// run by make bench beside the consumer and the loader. Connect's jars come from Maven Central the way the
// local broker's do (lib/stack/kafka.ts), in the broker's version, and Debezium's plugin archive (the connector
// with its own jars and the PostgreSQL driver) from Maven Central too; both are cached under .local/connect.
// The rows go in as schema'd JSON (JsonConverter with schemas.enable=true): each message carries its schema
// beside its payload. The worker and the connector are configured by properties files written here.

import { existsSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import type { DatabaseTarget } from "./config.ts";
import type { Logger } from "./log.ts";
import { FIELDS, type CleanRow, type FieldSpec } from "./record.ts";
import { has, run } from "./stack/process.ts";
import { STATE_DIR } from "./stack/state.ts";

/** Debezium's JDBC sink, from Maven Central (its plugin archive bundles the PostgreSQL driver). */
export const DEBEZIUM_VERSION = "3.4.3.Final";

/** Where Connect's jars are: the worker's classpath, and the folder Connect looks for plugins in. */
export interface ConnectJars {
  /** connect-runtime, connect-json, connect-file and what they need */
  readonly libs: string;
  /** plugin.path: holds debezium-connector-jdbc/ */
  readonly plugins: string;
}

function connectPom(version: string): string {
  return `<project xmlns="http://maven.apache.org/POM/4.0.0">
  <!-- Written by scripts/lib/connect.ts: Kafka Connect ${version} (standalone worker, JSON converter) for make bench. -->
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.sales-stream</groupId>
  <artifactId>kafka-connect-runtime</artifactId>
  <version>${version}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>connect-runtime</artifactId><version>${version}</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>connect-json</artifactId><version>${version}</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>connect-file</artifactId><version>${version}</version></dependency>
    <!-- As the broker: Connect's slf4j calls go to log4j2, which writes the worker's log file. -->
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>2.24.3</version></dependency>
  </dependencies>
</project>
`;
}

/** Runs Maven on `pom`; throws naming `what` when it fails (Maven's own output is shown above). */
function maven(pom: string, args: string[], what: string): void {
  if (!has("mvn")) throw new Error(`make bench fetches ${what} from Maven Central with Maven: install maven`);
  const fetched = run("mvn", ["-q", "-B", "-f", pom, ...args]);
  if (!fetched.ok) throw new Error(`Maven could not fetch ${what} (see its output above)`);
}

/**
 * The jars of Kafka Connect `kafkaVersion` and Debezium's JDBC sink, fetched from Maven Central the first time
 * (Maven's cache serves the next). The caller has checked Java (kafkaJars does).
 */
export function connectJars(kafkaVersion: string, log: Logger, debezium = DEBEZIUM_VERSION): ConnectJars {
  const home = resolve(STATE_DIR, "connect", kafkaVersion);
  const pom = join(home, "pom.xml");
  const libs = join(home, "libs");
  const plugins = resolve(STATE_DIR, "connect", `debezium-${debezium}`);
  const libsDone = join(libs, `.complete-${kafkaVersion}`);
  const pluginsDone = join(plugins, `.complete-${debezium}`);
  if (existsSync(libsDone) && existsSync(pluginsDone)) return { libs, plugins };
  mkdirSync(home, { recursive: true });
  writeFileSync(pom, connectPom(kafkaVersion));
  if (!existsSync(libsDone)) {
    log.info(`fetching Kafka Connect ${kafkaVersion} from Maven Central (once)...`);
    rmSync(libs, { recursive: true, force: true });
    maven(pom, ["dependency:copy-dependencies", `-DoutputDirectory=${libs}`, "-DincludeScope=runtime"], `org.apache.kafka:connect-runtime:${kafkaVersion}`);
    writeFileSync(libsDone, "");
  }
  if (!existsSync(pluginsDone)) {
    log.info(`fetching Debezium's JDBC sink ${debezium} from Maven Central (once)...`);
    rmSync(plugins, { recursive: true, force: true });
    const artifact = `io.debezium:debezium-connector-jdbc:${debezium}:tar.gz:plugin`;
    maven(pom, ["dependency:unpack", `-Dartifact=${artifact}`, `-DoutputDirectory=${plugins}`], artifact);
    if (!existsSync(join(plugins, "debezium-connector-jdbc"))) throw new Error(`${artifact} holds no debezium-connector-jdbc/ folder (in ${plugins})`);
    writeFileSync(pluginsDone, "");
  }
  return { libs, plugins };
}

/** The value's fields beside `row_id`: every field the loader cleans, by its `orders` column. */
const COLUMNS = Object.values(FIELDS) as readonly FieldSpec[];

/** Decimals go as Connect's Decimal with this scale: the Superstore's have at most 4 places. */
export const DECIMAL_SCALE = 4;

/** Connect's schema of one field: its type, and for dates and decimals the logical type Connect knows. */
function fieldSchema(spec: FieldSpec): Record<string, unknown> {
  const optional = spec.required ? {} : { optional: true };
  const base = { field: spec.column, ...optional };
  switch (spec.kind) {
    case "date":
      return { ...base, type: "int32", name: "org.apache.kafka.connect.data.Date", version: 1 };
    case "decimal":
      return { ...base, type: "bytes", name: "org.apache.kafka.connect.data.Decimal", version: 1, parameters: { scale: String(DECIMAL_SCALE) } };
    case "integer":
      return { ...base, type: "int32" };
    default:
      return { ...base, type: "string" };
  }
}

/** The value schema of every message: a struct of row_id (the Row ID, the sink's key) and the cleaned fields. */
export const CONNECT_SCHEMA = JSON.stringify({
  type: "struct",
  name: "superstore.order_line",
  fields: [{ field: "row_id", type: "int64" }, ...COLUMNS.map(fieldSchema)],
});

/** Days since 1970-01-01 of an ISO date: Connect's Date on the wire. */
export function epochDay(iso: string): number {
  const [y, m, d] = iso.split("-").map(Number) as [number, number, number];
  return Date.UTC(y, m - 1, d) / 86_400_000;
}

/**
 * A decimal as the cleaner keeps it ("+5", "5.", ".5", "-.25") as a JSON number, digit for digit: the
 * JsonConverter reads a number into a BigDecimal, so nothing passes through a double.
 */
export function jsonDecimal(value: string): string {
  const sign = value.startsWith("-") ? "-" : "";
  const [whole = "", fraction = ""] = value.replace(/^[+-]/, "").split(".");
  const digits = whole.replace(/^0+(?=\d)/, "") || "0";
  return `${sign}${digits}${fraction ? `.${fraction}` : ""}`;
}

function payloadValue(spec: FieldSpec, value: string | number | null): string {
  if (value === null) return "null";
  if (spec.kind === "date") return String(epochDay(String(value)));
  if (spec.kind === "decimal") return jsonDecimal(String(value));
  if (spec.kind === "integer") return String(value);
  return JSON.stringify(String(value));
}

/** One row as a schema'd JSON message value: {"schema":..., "payload":{"row_id":..., ...}}. */
export function connectValue(row: CleanRow): string {
  if (row.rowId === undefined) throw new Error("a row without a Row ID has no key for the sink's upsert");
  const fields = COLUMNS.map((spec) => `${JSON.stringify(spec.column)}:${payloadValue(spec, row.values[spec.column] ?? null)}`);
  return `{"schema":${CONNECT_SCHEMA},"payload":{"row_id":${row.rowId},${fields.join(",")}}}`;
}

/** One run of the sink: where it reads, where it writes, and whether it is tuned. */
export interface SinkRun {
  /** the connector's name; its consumer group is connect-<name> */
  readonly name: string;
  readonly topic: string;
  readonly table: string;
  readonly database: DatabaseTarget;
  readonly brokers: readonly string[];
  /** the run's own folder: the worker's offsets file */
  readonly dir: string;
  readonly plugins: string;
  /** batch.size 2000, max.poll.records 2000, reWriteBatchedInserts=true; else every default */
  readonly tuned: boolean;
}

/** Records per batch, both in the sink's statements and in the worker's consumer, when tuned. */
export const TUNED_BATCH = 2000;

/** The PostgreSQL driver's URL for `db`; tuned, the driver sends a batch of inserts as multi-row statements. */
export function jdbcUrl(db: DatabaseTarget, tuned: boolean): string {
  if (db.host.startsWith("/")) throw new Error(`the JDBC driver reaches PostgreSQL over TCP, but ${db.setting} names a Unix socket (${db.host})`);
  const host = db.host.includes(":") ? `[${db.host}]` : db.host;
  const params = new URLSearchParams();
  if (db.ssl) params.set("sslmode", db.ssl);
  if (tuned) params.set("reWriteBatchedInserts", "true");
  const query = params.size > 0 ? `?${params}` : "";
  return `jdbc:postgresql://${host}:${db.port}/${encodeURIComponent(db.database)}${query}`;
}

/** The standalone worker's settings: schema'd JSON values, string keys, plugins found by their manifests. */
export function workerProperties(sink: SinkRun): Record<string, string> {
  return {
    "bootstrap.servers": sink.brokers.join(","),
    "key.converter": "org.apache.kafka.connect.storage.StringConverter",
    "value.converter": "org.apache.kafka.connect.json.JsonConverter",
    "value.converter.schemas.enable": "true",
    "offset.storage.file.filename": join(sink.dir, "connect.offsets"),
    "plugin.path": sink.plugins,
    // Debezium's jars declare their plugins: reading the manifests spares the worker a scan of every class,
    // as Connect itself advises at start-up.
    "plugin.discovery": "service_load",
    // Any free port: the REST interface is not used, and several benchmarks may run on one machine.
    listeners: "http://127.0.0.1:0",
    ...(sink.tuned ? { "consumer.max.poll.records": String(TUNED_BATCH) } : {}),
  };
}

/** The connector's settings: upsert by the Row ID into `table`, created by the sink from the schema. */
export function sinkProperties(sink: SinkRun): Record<string, string> {
  return {
    name: sink.name,
    "connector.class": "io.debezium.connector.jdbc.JdbcSinkConnector",
    "tasks.max": "1",
    topics: sink.topic,
    "connection.url": jdbcUrl(sink.database, sink.tuned),
    "connection.username": sink.database.user,
    ...(sink.database.password === undefined ? {} : { "connection.password": sink.database.password }),
    "insert.mode": "upsert",
    "primary.key.mode": "record_value",
    "primary.key.fields": "row_id",
    "schema.evolution": "basic",
    "collection.name.format": sink.table,
    ...(sink.tuned ? { "batch.size": String(TUNED_BATCH) } : {}),
  };
}

/** Java's properties escapes for one key or value: backslash, line breaks, and \uXXXX beyond ASCII. */
function escapeProperty(text: string, key: boolean): string {
  let out = "";
  for (const char of text) {
    const code = char.charCodeAt(0);
    if (char === "\\") out += "\\\\";
    else if (char === "\n") out += "\\n";
    else if (char === "\r") out += "\\r";
    else if (char === "\t") out += "\\t";
    else if (key && (char === "=" || char === ":" || char === " " || char === "#" || char === "!")) out += `\\${char}`;
    else if (code < 0x20 || code > 0x7e) {
      // Each UTF-16 unit: a character beyond U+FFFF is written as its surrogate pair, as Java reads it.
      for (let i = 0; i < char.length; i++) out += `\\u${char.charCodeAt(i).toString(16).padStart(4, "0")}`;
    } else out += char;
  }
  // A leading space of a value would be dropped by the reader.
  return key ? out : out.replace(/^ /, "\\ ");
}

/** A .properties file's text, as Properties.load reads it (ISO 8859-1, hence the \u escapes). */
export function propertiesText(properties: Readonly<Record<string, string>>, header: string): string {
  const lines = Object.entries(properties).map(([k, v]) => `${escapeProperty(k, true)}=${escapeProperty(v, false)}`);
  return `# ${header}\n${lines.join("\n")}\n`;
}
