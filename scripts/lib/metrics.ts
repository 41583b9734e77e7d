// The pipeline's health as Prometheus metrics: the text exposition format (version 0.0.4) written by pure
// functions, and the families the dashboard's /metrics serves, made from lib/health.ts's facts.
//
//   PipelineHealth (lib/health.ts)  ->  pipelineFamilies  ->  renderFamilies  ->  GET /metrics (scripts/dashboard.ts)
//
// The format (https://prometheus.io/docs/instrumenting/exposition_formats/): per family a "# HELP name text" line
// (backslash and newline escaped), a "# TYPE name gauge|counter" line, then one line per sample,
// name{label="value",...} value, where a label value escapes backslash, double quote and newline. Other lines
// starting with # are comments: each part that could not be read says why in one, for people reading the page.

import { ALIVE_WINDOW_SECONDS, LOADER_APPLICATION_NAME, type PipelineHealth, type Verdict } from "./health.ts";

export const METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";
/** Every family's name starts with this. */
export const METRIC_PREFIX = "sales_pipeline_";

export interface Sample {
  readonly labels?: Readonly<Record<string, string | number>>;
  readonly value: number;
}

export interface Family {
  readonly name: string;
  readonly help: string;
  readonly type: "gauge" | "counter";
  readonly samples: readonly Sample[];
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

/** A label value as the format writes it between double quotes: \ -> \\, " -> \", newline -> \n. */
export function escapeLabelValue(value: string): string {
  return value.replace(/[\\"\n]/g, (c) => (c === "\n" ? "\\n" : `\\${c}`));
}

/** HELP text as the format writes it: \ -> \\, newline -> \n (a double quote stays as it is). */
export function escapeHelp(text: string): string {
  return text.replace(/[\\\n]/g, (c) => (c === "\n" ? "\\n" : "\\\\"));
}

/** A sample value: Go's float syntax the format takes, with NaN, +Inf and -Inf spelled as Prometheus spells them. */
export function formatValue(value: number): string {
  if (Number.isNaN(value)) return "NaN";
  if (value === Infinity) return "+Inf";
  if (value === -Infinity) return "-Inf";
  return String(value);
}

function renderSample(name: string, sample: Sample): string {
  const labels = Object.entries(sample.labels ?? {});
  for (const [label] of labels) {
    if (!LABEL_NAME.test(label) || label.startsWith("__")) throw new Error(`metric ${name}: "${label}" is not a valid label name`);
  }
  const text = labels.map(([label, value]) => `${label}="${escapeLabelValue(String(value))}"`).join(",");
  return `${name}${text ? `{${text}}` : ""} ${formatValue(sample.value)}`;
}

/**
 * Families in the text format, each with its HELP and TYPE lines (also a family without samples: it says the
 * metric exists). A name the format does not allow, or a counter's name not ending in _total, is a mistake in
 * the code and throws.
 */
export function renderFamilies(families: readonly Family[], comments: readonly string[] = []): string {
  const lines = comments.map((c) => `# ${c.replace(/[\r\n]+/g, " ")}`);
  for (const family of families) {
    if (!METRIC_NAME.test(family.name)) throw new Error(`"${family.name}" is not a valid metric name`);
    if (family.type === "counter" && !family.name.endsWith("_total")) throw new Error(`counter ${family.name}: a counter's name ends in _total`);
    lines.push(`# HELP ${family.name} ${escapeHelp(family.help)}`, `# TYPE ${family.name} ${family.type}`);
    for (const sample of family.samples) lines.push(renderSample(family.name, sample));
  }
  return `${lines.join("\n")}\n`;
}

const gauge = (name: string, help: string, samples: readonly Sample[]): Family => ({ name: `${METRIC_PREFIX}${name}`, help, type: "gauge", samples });
const counter = (name: string, help: string, samples: readonly Sample[]): Family => ({ name: `${METRIC_PREFIX}${name}`, help, type: "counter", samples });
/** One unlabelled sample, or none when the value is unknown. */
const one = (value: number | undefined): Sample[] => (value === undefined ? [] : [{ value }]);
/** A component's up sample, or none when its verdict is unknown. */
const upSample = (component: string, verdict: Verdict): Sample[] => (verdict.alive === null ? [] : [{ labels: { component }, value: verdict.alive ? 1 : 0 }]);

/** Kafka's families: per partition, the records held, the end offset and the group's lag; the group's members. */
function kafkaFamilies(health: PipelineHealth): Family[] {
  const kafka = health.kafka.ok ? health.kafka : undefined;
  const partitions = kafka?.byPartition ?? [];
  const at = (partition: number) => ({ topic: kafka!.topic, partition });
  return [
    gauge("kafka_partition_records", "Records the partition holds: its end offset minus its log start offset.", partitions.map((p) => ({ labels: at(p.partition), value: p.high - p.low }))),
    gauge("kafka_partition_end_offset", "The partition's end offset: the offset its next record gets (its rate is the rate of records produced).", partitions.map((p) => ({ labels: at(p.partition), value: p.high }))),
    gauge(
      "kafka_consumer_lag",
      "Records of the partition the consumer group has not committed yet: the end offset minus the committed offset (minus the log start offset while it has committed none).",
      partitions.map((p) => ({ labels: { ...at(p.partition), group: kafka!.group }, value: p.lag })),
    ),
    gauge("kafka_consumer_group_members", "Members of the consumer group now (Kafka's describe group).", kafka ? [{ labels: { group: kafka.group }, value: kafka.members }] : []),
  ];
}

/** PostgreSQL's families: the ledger's counters and the view's counts, from v_pipeline_health. */
function databaseFamilies(health: PipelineHealth): Family[] {
  const db = health.database.ok ? health.database : undefined;
  const lastLoad = db?.lastLoadAt ? Date.parse(db.lastLoadAt) / 1000 : undefined;
  return [
    counter("rows_loaded_total", "Rows inserted into orders, summed over the ledger of batch files loaded (loaded_files).", one(db?.ledgerInserted)),
    counter("rows_duplicate_total", "Rows skipped as already loaded, summed over the ledger of batch files loaded.", one(db?.ledgerDuplicates)),
    counter("rows_rejected_total", "Rows rejected (rejected_rows), summed over the ledger of batch files loaded.", one(db?.ledgerRejected)),
    counter("batch_files_loaded_total", "Batch files in the ledger (loaded_files).", one(db?.filesLoaded)),
    gauge("orders_rows", "Rows in orders now (falls when rows are deleted, unlike rows_loaded_total).", one(db?.rowsLoaded)),
    gauge("rejections_open", "Rejections still open (rejected_rows with status open): lines that are in no other place.", one(db?.rejectedOpen)),
    gauge("rows_with_warnings", "Rows in orders loaded with a plausibility warning.", one(db?.rowsWithWarnings)),
    gauge("rows_cross_source", "Rows in orders that repeat the Row ID and values of another source's row (they count twice in totals).", one(db?.rowsCrossSource)),
    gauge("last_load_timestamp_seconds", "When the last batch file was loaded, in seconds since the epoch; absent before the first load.", one(lastLoad)),
    gauge("loader_sessions", `Sessions on the database whose application_name is '${LOADER_APPLICATION_NAME}' (pg_stat_activity).`, one(db?.loaderSessions)),
  ];
}

/**
 * Every family of /metrics. A value that cannot be known right now (its part could not be read) is left out
 * rather than shown as 0; read_success says which part is missing.
 */
export function pipelineFamilies(health: PipelineHealth): Family[] {
  const files = health.files;
  const { producer, consumer, loader } = health.alive;
  const window = `${ALIVE_WINDOW_SECONDS} s`;
  return [
    ...kafkaFamilies(health),
    ...databaseFamilies(health),
    gauge("batch_files_pending", "Batch files in the batch folder the ledger does not hold yet; absent while the ledger cannot be read.", one(files.ledgerError === null ? files.pending : undefined)),
    gauge("batch_files_failed", "Batch files set aside in the batch folder's failed/ (they need a person).", one(files.failed)),
    gauge(
      "up",
      "1 when the component looks alive, as far as Kafka and PostgreSQL can tell (no process reports here); absent while the part that tells cannot be read. " +
        `producer: the topic's end offsets moved in the last ${window}, i.e. Kafka's time index holds records that recent (a producer between two files, or done, shows 0). ` +
        "consumer: the consumer group has members (a consumer that stopped left it; one that crashed stays until its session times out). " +
        `loader: a session named '${LOADER_APPLICATION_NAME}' is open on the database, or a batch file loaded in the last ${window}.`,
      [...upSample("producer", producer), ...upSample("consumer", consumer), ...upSample("loader", loader)],
    ),
    gauge("read_success", "1 when the source could be read at this scrape, 0 when not (its metrics are then absent; a comment above says why).", [
      { labels: { source: "kafka" }, value: health.kafka.ok ? 1 : 0 },
      { labels: { source: "postgresql" }, value: health.database.ok && files.ledgerError === null ? 1 : 0 },
    ]),
  ];
}

/** Why a part is missing, as comment lines at the top of the page. */
export function pipelineComments(health: PipelineHealth): string[] {
  const comments = [`gathered at ${health.at.toISOString()}`];
  if (!health.kafka.ok) comments.push(`kafka: ${health.kafka.error}`);
  if (!health.database.ok) comments.push(`postgresql: ${health.database.error}`);
  else if (health.files.ledgerError !== null) comments.push(`postgresql (ledger): ${health.files.ledgerError}`);
  return comments;
}

/** The /metrics response for these facts. */
export function metricsResponse(health: PipelineHealth): Response {
  return new Response(renderFamilies(pipelineFamilies(health), pipelineComments(health)), {
    headers: { "content-type": METRICS_CONTENT_TYPE, "cache-control": "no-store" },
  });
}
