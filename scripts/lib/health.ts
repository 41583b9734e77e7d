// The pipeline's health, gathered the same way for `make status` and the live dashboard: what Kafka holds
// and how far the consumer group is behind, which batch files wait or were set aside, what PostgreSQL has
// loaded (from the view v_pipeline_health), and which offsets the consumer recorded as lost (lost_offsets).
// A part that cannot be reached says so instead of failing the rest.

import { readdir } from "node:fs/promises";
import { join } from "node:path";
import type { Config, DatabaseTarget } from "./config.ts";
import { explainDatabaseFailure, type DatabaseProblem, type Sql, type TransactionSql } from "./db.ts";
import { consumerLag, createKafka } from "./kafka.ts";
import { explainKafkaFailure } from "./kafka_errors.ts";
import { createLogger } from "./log.ts";

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

/** Messages in the topic and the group's lag; a quick probe that fails fast when the broker is away. */
export async function kafkaHealth(config: Config): Promise<Part<KafkaHealth>> {
  const admin = createKafka(config, createLogger("health", "silent"), { probe: true }).admin();
  const topic = config.kafkaTopic;
  const group = config.kafkaGroupId;
  try {
    await admin.connect();
    if (!(await admin.listTopics()).includes(topic)) return { ok: true, topic, group, messages: 0, partitions: 0, lag: 0 };
    const offsets = await admin.fetchTopicOffsets(topic);
    const messages = offsets.reduce((n, p) => n + Number(p.high) - Number(p.low), 0);
    return { ok: true, topic, group, messages, partitions: offsets.length, lag: await consumerLag(admin, group, topic) };
  } catch (error) {
    return { ok: false, error: await kafkaProblem(error, config) };
  } finally {
    await admin.disconnect().catch(() => undefined);
  }
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

/** What PostgreSQL at `target` has loaded, from v_pipeline_health (one statement). */
export async function databaseHealth(sql: Sql | TransactionSql, target: DatabaseTarget): Promise<Part<DatabaseHealth>> {
  try {
    const [row] = await sql<
      { rows_loaded: string; files_loaded: string; rejected_open: string; rows_with_warnings: string; rows_cross_source: string; last_load_at: Date | null }[]
    >`
      select rows_loaded, files_loaded, rejected_open, rows_with_warnings, rows_cross_source, last_load_at from v_pipeline_health
    `;
    return {
      ok: true,
      rowsLoaded: Number(row!.rows_loaded),
      filesLoaded: Number(row!.files_loaded),
      rejectedOpen: Number(row!.rejected_open),
      rowsWithWarnings: Number(row!.rows_with_warnings),
      rowsCrossSource: Number(row!.rows_cross_source),
      lastLoadAt: row!.last_load_at?.toISOString() ?? null,
    };
  } catch (error) {
    return databaseFailure(error, target);
  }
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
