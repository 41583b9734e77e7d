// The pipeline's health, gathered the same way for `make status`, the live dashboard and its /metrics: what
// Kafka holds and how far the consumer group is behind (per partition), which batch files wait or were set
// aside, what PostgreSQL has loaded (from the view v_pipeline_health, which bi_reader may read), whether the
// producer, consumer and loader look alive, and which offsets the consumer recorded as lost (lost_offsets).
// A part that cannot be reached says so instead of failing the rest.

import { readdir } from "node:fs/promises";
import { join } from "node:path";
import type { Admin } from "kafkajs";
import type { Config, DatabaseTarget } from "./config.ts";
import { explainDatabaseFailure, type DatabaseProblem, type Sql, type TransactionSql } from "./db.ts";
import { createKafka, partitionLags, type PartitionLag } from "./kafka.ts";
import { explainKafkaFailure } from "./kafka_errors.ts";
import { createLogger, formatDuration } from "./log.ts";

/** How recent a record or a load must be for the producer or the loader to count as alive. */
export const ALIVE_WINDOW_SECONDS = 60;
/** The application_name the loader's sessions carry in pg_stat_activity (each script sets its file's name). */
export const LOADER_APPLICATION_NAME = "load";

export type Part<T> =
  | ({ readonly ok: true } & T)
  | { readonly ok: false; readonly error: string; /** PostgreSQL's part: which failure it is, when it is one of the three */ readonly problem?: DatabaseProblem };

export interface KafkaHealth {
  readonly topic: string;
  readonly group: string;
  readonly messages: number;
  readonly partitions: number;
  readonly lag: number;
}

export interface DatabaseHealth {
  readonly rowsLoaded: number;
  readonly filesLoaded: number;
  readonly rejectedOpen: number;
  readonly rowsWithWarnings: number;
  /** rows with the Row ID and values of a row of another source (orders.same_as_source): counted twice in totals */
  readonly rowsCrossSource: number;
  /** ISO time of the last committed batch file, or null */
  readonly lastLoadAt: string | null;
  /** the ledger's sums over every batch file loaded (loaded_files): rows inserted, duplicates, rejected */
  readonly ledgerInserted: number;
  readonly ledgerDuplicates: number;
  readonly ledgerRejected: number;
}

export interface FilesHealth {
  readonly dir: string;
  readonly total: number;
  /** batch files the ledger does not hold yet */
  readonly pending: number;
  /** files set aside in failed/ */
  readonly failed: number;
}

const message = (error: unknown) => (error as Error).message;

/** Why Kafka's part is missing: a refused login or an untrusted certificate says which setting to fix. */
async function kafkaProblem(error: unknown, config: Config): Promise<string> {
  const access = await explainKafkaFailure(error, config);
  return access ? access.message : `Kafka at ${config.kafkaBrokers.join(",")} does not answer (${message(error)})`;
}

/** Runs `read` with a quick-probe admin client: Kafka's part, or why it cannot be read. */
async function readKafka<T extends object>(config: Config, read: (admin: Admin) => Promise<T>): Promise<Part<T>> {
  const admin = createKafka(config, createLogger("health", "silent"), { probe: true }).admin();
  try {
    await admin.connect();
    return { ok: true, ...(await read(admin)) };
  } catch (error) {
    return { ok: false, error: await kafkaProblem(error, config) };
  } finally {
    await admin.disconnect().catch(() => undefined);
  }
}

/** Messages held, partitions and the group's total lag, from each partition's offsets. */
function summarize(topic: string, group: string, partitions: readonly PartitionLag[]): KafkaHealth {
  const messages = partitions.reduce((n, p) => n + p.high - p.low, 0);
  return { topic, group, messages, partitions: partitions.length, lag: partitions.reduce((n, p) => n + p.lag, 0) };
}

/** Messages in the topic and the group's lag; a quick probe that fails fast when the broker is away. */
export function kafkaHealth(config: Config): Promise<Part<KafkaHealth>> {
  const { kafkaTopic: topic, kafkaGroupId: group } = config;
  return readKafka(config, async (admin) => {
    if (!(await admin.listTopics()).includes(topic)) return summarize(topic, group, []);
    return summarize(topic, group, await partitionLags(admin, group, topic));
  });
}

export interface KafkaDetail extends KafkaHealth {
  /** each partition's offsets and the group's lag on it, by partition; empty when the topic does not exist */
  readonly byPartition: readonly PartitionLag[];
  /** members of the consumer group now (Kafka's describe group) */
  readonly members: number;
  /** the group's state: Stable, Empty, PreparingRebalance, ...; Dead for a group Kafka does not know */
  readonly groupState: string;
  /** records appended to the topic in the last ALIVE_WINDOW_SECONDS, found through Kafka's time index */
  readonly recentRecords: number;
}

/**
 * Kafka's part in full: kafkaHealth's numbers, each partition's lag, the group's members, and how many records
 * the topic received within the alive window. That count asks Kafka for the first offset of each partition
 * whose record is at most ALIVE_WINDOW_SECONDS old (its time index, by the records' timestamps: the producer's
 * clock, or the broker's with log.message.timestamp.type=LogAppendTime): the end offset minus it is what was
 * appended since. Stateless, so a one-off `make status` answers as well as a server that scrapes every second.
 */
export function kafkaDetail(config: Config, now = Date.now()): Promise<Part<KafkaDetail>> {
  const { kafkaTopic: topic, kafkaGroupId: group } = config;
  return readKafka(config, async (admin) => {
    // Without the topic there is no consumer (it creates the topic before it joins), and on a new broker the
    // group's coordinator may not be ready yet: the group is not asked about.
    if (!(await admin.listTopics()).includes(topic)) {
      return { ...summarize(topic, group, []), byPartition: [], members: 0, groupState: `no topic ${topic}`, recentRecords: 0 };
    }
    const [described, since] = await Promise.all([
      admin.describeGroups([group]),
      admin.fetchTopicOffsetsByTimestamp(topic, now - ALIVE_WINDOW_SECONDS * 1000),
    ]);
    // The end offsets after the offsets by time: a record written in between counts as recent, not as nothing.
    const byPartition = await partitionLags(admin, group, topic);
    const firstRecent = new Map(since.map((p) => [p.partition, Number(p.offset)]));
    const recentRecords = byPartition.reduce((n, p) => n + Math.max(0, p.high - (firstRecent.get(p.partition) ?? p.high)), 0);
    const description = described.groups.find((g) => g.groupId === group);
    return {
      ...summarize(topic, group, byPartition),
      byPartition,
      members: description?.members.length ?? 0,
      groupState: description?.state ?? "Dead",
      recentRecords,
    };
  });
}

export interface PartitionPlacement {
  readonly partition: number;
  /** node id of the leader; -1 while none (every replica in sync is down) */
  readonly leader: number;
  readonly replicas: readonly number[];
  /** replicas in sync with the leader */
  readonly isr: readonly number[];
}

export interface KafkaTopology {
  /** brokers the cluster counts as alive, by node id */
  readonly brokers: readonly { readonly id: number; readonly address: string }[];
  readonly controller: number | null;
  /** the topic's partitions; empty when the topic does not exist */
  readonly partitions: readonly PartitionPlacement[];
}

/** Brokers alive, the active controller, and where each partition of the topic leads and replicates. */
export async function kafkaTopology(config: Config): Promise<Part<KafkaTopology>> {
  const admin = createKafka(config, createLogger("health", "silent"), { probe: true }).admin();
  try {
    await admin.connect();
    const cluster = await admin.describeCluster();
    const brokers = cluster.brokers.map((b) => ({ id: b.nodeId, address: `${b.host}:${b.port}` })).sort((a, b) => a.id - b.id);
    const exists = (await admin.listTopics()).includes(config.kafkaTopic);
    const metadata = exists ? await admin.fetchTopicMetadata({ topics: [config.kafkaTopic] }) : { topics: [] };
    const partitions = (metadata.topics[0]?.partitions ?? [])
      .map((p) => ({ partition: p.partitionId, leader: p.leader, replicas: p.replicas, isr: p.isr }))
      .sort((a, b) => a.partition - b.partition);
    return { ok: true, brokers, controller: cluster.controller, partitions };
  } catch (error) {
    return { ok: false, error: await kafkaProblem(error, config) };
  } finally {
    await admin.disconnect().catch(() => undefined);
  }
}

/** Partitions with fewer replicas in sync than assigned, or without a leader. */
export function underReplicated(partitions: readonly PartitionPlacement[]): PartitionPlacement[] {
  return partitions.filter((p) => p.leader < 0 || p.isr.length < p.replicas.length);
}

/** PostgreSQL's part when it cannot be read: the server down, the database missing or the login refused said as such. */
export function databaseFailure(error: unknown, target: DatabaseTarget): Part<never> {
  const explained = explainDatabaseFailure(error, target);
  return explained ? { ok: false, error: explained.message, problem: explained.problem } : { ok: false, error: message(error) };
}

/** A row of v_pipeline_health: counts as text (bigint), the last load as a time. */
type HealthRow = Record<"rows_loaded" | "files_loaded" | "rejected_open" | "rows_with_warnings" | "rows_cross_source", string> &
  Record<"ledger_inserted" | "ledger_duplicates" | "ledger_rejected", string> & { last_load_at: Date | null };

/** What PostgreSQL at `target` has loaded, from v_pipeline_health (one statement). */
export async function databaseHealth(sql: Sql | TransactionSql, target: DatabaseTarget): Promise<Part<DatabaseHealth>> {
  try {
    const [row] = await sql<HealthRow[]>`
      select rows_loaded, files_loaded, rejected_open, rows_with_warnings, rows_cross_source, last_load_at,
             ledger_inserted, ledger_duplicates, ledger_rejected
      from v_pipeline_health
    `;
    return {
      ok: true,
      rowsLoaded: Number(row!.rows_loaded),
      filesLoaded: Number(row!.files_loaded),
      rejectedOpen: Number(row!.rejected_open),
      rowsWithWarnings: Number(row!.rows_with_warnings),
      rowsCrossSource: Number(row!.rows_cross_source),
      lastLoadAt: row!.last_load_at?.toISOString() ?? null,
      ledgerInserted: Number(row!.ledger_inserted),
      ledgerDuplicates: Number(row!.ledger_duplicates),
      ledgerRejected: Number(row!.ledger_rejected),
    };
  } catch (error) {
    return databaseFailure(error, target);
  }
}

/** Sessions on this database whose application_name is the loader's (any role may read other sessions' names). */
export async function loaderSessions(sql: Sql | TransactionSql): Promise<number> {
  const [row] = await sql<{ n: number }[]>`
    select count(*)::int as n from pg_stat_activity
    where datname = current_database() and application_name = ${LOADER_APPLICATION_NAME}
  `;
  return row!.n;
}

export interface DatabaseFacts extends DatabaseHealth {
  /** sessions named LOADER_APPLICATION_NAME on this database now */
  readonly loaderSessions: number;
}

/** databaseHealth and the loader's sessions: PostgreSQL's part of pipelineHealth. */
export async function databaseFacts(sql: Sql, target: DatabaseTarget): Promise<Part<DatabaseFacts>> {
  const [health, sessions] = await Promise.all([databaseHealth(sql, target), loaderSessions(sql).catch((error: unknown) => databaseFailure(error, target))]);
  if (!health.ok) return health;
  if (typeof sessions !== "number") return sessions;
  return { ...health, loaderSessions: sessions };
}

/** Whether a component looks alive: null when the part that would tell cannot be read; `why` says on what grounds. */
export interface Verdict {
  readonly alive: boolean | null;
  readonly why: string;
}

export interface Alive {
  readonly producer: Verdict;
  readonly consumer: Verdict;
  readonly loader: Verdict;
}

const plural = (n: number, one: string, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;

/**
 * What the facts say of each process, as far as Kafka and PostgreSQL can tell (none of them reports to us):
 * - producer: the topic received records within the window (a producer between two files, or done, looks idle);
 * - consumer: the consumer group has members (a consumer that stopped has left it; one that crashed stays a
 *   member until its session times out);
 * - loader: a session named LOADER_APPLICATION_NAME is open on the database, or a batch file loaded within the
 *   window (a one-off load that just ended).
 */
export function judgeAlive(kafka: Part<KafkaDetail>, database: Part<DatabaseFacts>, now: number, windowSeconds = ALIVE_WINDOW_SECONDS): Alive {
  const within = `in the last ${windowSeconds} s`;
  const unknown = (what: string): Verdict => ({ alive: null, why: `${what} cannot be read` });
  const producer: Verdict = !kafka.ok
    ? unknown("Kafka")
    : kafka.recentRecords > 0
      ? { alive: true, why: `${plural(kafka.recentRecords, "record")} appended to ${kafka.topic} ${within}` }
      : { alive: false, why: `no record appended to ${kafka.topic} ${within}` };
  const consumer: Verdict = !kafka.ok
    ? unknown("Kafka")
    : { alive: kafka.members > 0, why: `group ${kafka.group} has ${kafka.members === 0 ? "no member" : plural(kafka.members, "member")} (${kafka.groupState})` };
  return { producer, consumer, loader: judgeLoader(database, now, windowSeconds) };
}

function judgeLoader(database: Part<DatabaseFacts>, now: number, windowSeconds: number): Verdict {
  if (!database.ok) return { alive: null, why: "PostgreSQL cannot be read" };
  const sessions = `${database.loaderSessions === 0 ? "no session" : plural(database.loaderSessions, "session")} named ${LOADER_APPLICATION_NAME}`;
  const ago = database.lastLoadAt === null ? undefined : Math.max(0, now - Date.parse(database.lastLoadAt));
  const last = ago === undefined ? "no load yet" : `last load ${formatDuration(ago)} ago`;
  const recent = ago !== undefined && ago <= windowSeconds * 1000;
  return { alive: database.loaderSessions > 0 || recent, why: `${sessions}, ${last}` };
}

export interface BatchFiles extends FilesHealth {
  /** why the ledger's file names could not be read, null when they were; `pending` then counts every file */
  readonly ledgerError: string | null;
}

/** Everything make status and /metrics say of the pipeline, gathered at `at`. */
export interface PipelineHealth {
  readonly at: Date;
  readonly kafka: Part<KafkaDetail>;
  readonly database: Part<DatabaseFacts>;
  readonly files: BatchFiles;
  readonly alive: Alive;
}

/** The names in the ledger, kept up to date by reading only what was loaded since the last read (loadedSince). */
export function loadedFiles(): { refresh(sql: Sql): Promise<ReadonlySet<string>> } {
  const names = new Set<string>();
  let upTo: Date | undefined;
  return {
    async refresh(sql) {
      const since = await loadedSince(sql, upTo);
      for (const name of since.names) names.add(name);
      upTo = since.latest;
      return names;
    },
  };
}

/** Kafka, PostgreSQL and the batch folder at once; each part that cannot be read says why, the rest stands. */
export async function pipelineHealth(config: Config, sql: Sql, loaded = loadedFiles()): Promise<PipelineHealth> {
  const at = new Date();
  const [kafka, database, names] = await Promise.all([
    kafkaDetail(config, at.getTime()),
    databaseFacts(sql, config.database),
    loaded.refresh(sql).then(
      (set) => ({ set, error: null }),
      (error: unknown) => ({ set: new Set<string>(), error: databaseFailure(error, config.database).error }),
    ),
  ]);
  const files = { ...(await filesHealth(config.batchesDir, names.set)), ledgerError: names.error };
  return { at, kafka, database, files, alive: judgeAlive(kafka, database, at.getTime()) };
}

/**
 * pipelineHealth for a server asked often (the dashboard's /metrics): gathered when asked, then kept for
 * `maxAgeMs` after it is complete; callers meanwhile, and during a gathering, share it. So a storm of scrapes
 * costs Kafka and PostgreSQL one read a second. The ledger's names are read incrementally across calls.
 */
export function createHealthReader(config: Config, sql: Sql, maxAgeMs = 1000): () => Promise<PipelineHealth> {
  const loaded = loadedFiles();
  let current: Promise<PipelineHealth> | undefined;
  let gathering = false;
  let doneAt = -Infinity;
  return () => {
    if (current && (gathering || performance.now() - doneAt < maxAgeMs)) return current;
    gathering = true;
    current = pipelineHealth(config, sql, loaded).finally(() => {
      gathering = false;
      doneAt = performance.now();
    });
    return current;
  };
}

/** One range of lost_offsets, as status prints it. */
export interface LostOffsets {
  readonly group: string;
  readonly topic: string;
  readonly partition: number;
  readonly first: string;
  /** null when the end is unknown */
  readonly last: string | null;
  readonly kind: string;
}

export interface LostOffsetsHealth {
  readonly ranges: number;
  /** records in the ranges whose end is known */
  readonly records: number;
  /** ranges whose end is unknown (a re-created topic's old log) */
  readonly unknownEnds: number;
  /** the latest ranges recorded, newest first (at most `limit`) */
  readonly latest: readonly LostOffsets[];
}

/** What the consumer recorded as lost: offsets Kafka no longer had when the group reached them. */
export async function lostOffsetsHealth(sql: Sql | TransactionSql, limit = 5): Promise<Part<LostOffsetsHealth>> {
  try {
    const [totals] = await sql<{ ranges: number; records: string; unknown_ends: number }[]>`
      select count(*)::int as ranges, coalesce(sum(records), 0)::text as records, count(*) filter (where last_offset is null)::int as unknown_ends
      from lost_offsets
    `;
    const latest = await sql<{ group: string; topic: string; partition: number; first: string; last: string | null; kind: string }[]>`
      select consumer_group as group, kafka_topic as topic, kafka_partition as partition, first_offset::text as first,
             last_offset::text as last, kind
      from lost_offsets order by recorded_at desc, id desc limit ${limit}
    `;
    return { ok: true, ranges: totals!.ranges, records: Number(totals!.records), unknownEnds: totals!.unknown_ends, latest: latest.map((r) => ({ ...r })) };
  } catch (error) {
    return { ok: false, error: message(error) };
  }
}

/** Batch files in `dir`: how many, how many the ledger does not hold yet, how many were set aside. */
export async function filesHealth(dir: string, loaded: ReadonlySet<string>): Promise<FilesHealth> {
  const names = (await readdir(dir).catch(() => [] as string[])).filter((f) => f.endsWith(".csv") && !f.startsWith("."));
  const failed = (await readdir(join(dir, "failed")).catch(() => [] as string[])).filter((f) => f.endsWith(".csv")).length;
  return { dir, total: names.length, pending: names.filter((f) => !loaded.has(f)).length, failed };
}

/**
 * Names in the ledger loaded after `since` (all when undefined), to keep a set of loaded names up to date. Read
 * from the view v_loaded_files (sql/009), which bi_reader, the dashboard's role, may read; loaded_files it may not.
 */
export async function loadedSince(sql: Sql | TransactionSql, since: Date | undefined): Promise<{ names: string[]; latest: Date | undefined }> {
  const rows = since
    ? await sql<{ file_name: string; loaded_at: Date }[]>`select file_name, loaded_at from v_loaded_files where loaded_at >= ${since}`
    : await sql<{ file_name: string; loaded_at: Date }[]>`select file_name, loaded_at from v_loaded_files`;
  const latest = rows.reduce<Date | undefined>((max, r) => (!max || r.loaded_at > max ? r.loaded_at : max), since);
  return { names: rows.map((r) => r.file_name), latest };
}
