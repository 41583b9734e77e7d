// Dashboard: the live view of the pipeline, no Tableau needed. KPIs, sales and profit over time, top products,
// sales by segment and by region, and the pipeline's health, moving by themselves while rows stream in.
//
//   PostgreSQL views + Kafka + batches/  ->  http://127.0.0.1:8050/            make dashboard (and make stream)
//
// How it stays live without asking the database every second: the loader announces each commit in the same
// transaction (NOTIFY sales_loaded); this server LISTENs, gathers one snapshot from the views Tableau reads
// (one read-only transaction), and pushes it to every open page over server-sent events. So the database is
// queried once per change, not once per viewer, and at most once a second: any role may NOTIFY, so a
// notification is only a hint to read again. Kafka and the batch folder are looked at every two seconds
// (cheap, and not the database). The page, its script and the chart library (Apache ECharts, from
// node_modules) are served from here: it works offline.
//
// Filters: a page may show a slice of the rows (region, segment, an order-date range), named in its address
// (/?region=West&from=2016-01-01) and in the data routes' query strings. The server keeps one state per slice
// that open pages follow, gathers each once per change and fans it out to that slice's pages; the pipeline's
// health is the same on every page.
//
// Slow and hostile clients: a page is sent a snapshot only when its connection has taken the one before; one
// that falls behind gets the newest when it catches up, never a queue, and is dropped after a minute without
// taking anything (createFanOut). Requests that do not name this server as their host, or come from a page of
// another origin, are refused (a DNS-rebinding page reaches 127.0.0.1 under its own name).
//
// It logs in as the read-only role bi_reader (both its pool and its LISTEN connection), to the host, port and
// database of DATABASE_URL, with BI_READER_PASSWORD or the password make migrate stored in
// BI_READER_PASSWORD_FILE: it reads the views bi_reader may read, and cannot change anything.
//
// GET /metrics: the pipeline's health for Prometheus (text format 0.0.4; lib/metrics.ts), the facts `make status`
// prints (lib/health.ts). Gathered on scrape, not taken from the page's snapshot: the snapshot's database part is
// read only when a load is announced, and per-partition lag, the group's members and the loader's sessions are
// not in it. A gathering is kept for a second (createHealthReader), so a storm of scrapes reads Kafka and
// PostgreSQL once a second.
//
// Env: DASHBOARD_PORT, DATABASE_URL (or PG*), BI_READER_PASSWORD, BI_READER_PASSWORD_FILE, KAFKA_BROKERS,
// KAFKA_TOPIC, KAFKA_GROUP_ID, KAFKA_SSL*, KAFKA_SASL_*, BATCHES_DIR, LOG_LEVEL.
// Flags: --port, --help.

import { join } from "node:path";
import { readerTarget } from "./lib/bi_reader.ts";
import { fail, parseCli } from "./lib/cli.ts";
import { KAFKA_SECURITY_ENV, parsePort, readConfig, type Config, type DatabaseTarget } from "./lib/config.ts";
import { connect, describeDatabase, describeDatabaseFailure, type Sql, type TransactionSql } from "./lib/db.ts";
import {
  createHealthReader,
  databaseFailure,
  databaseHealth,
  filesHealth,
  kafkaHealth,
  loadedSince,
  type DatabaseHealth,
  type FilesHealth,
  type KafkaHealth,
  type Part,
  type PipelineHealth,
} from "./lib/health.ts";
import { checkKafkaAccess } from "./lib/kafka_errors.ts";
import { LOADED_CHANNEL } from "./lib/load/transaction.ts";
import { createLogger, type Logger } from "./lib/log.ts";
import { metricsResponse } from "./lib/metrics.ts";
import { backoffDelay, retryWhile, sleep, type Backoff } from "./lib/retry.ts";
import { createShutdown } from "./lib/shutdown.ts";

const command = {
  script: "scripts/dashboard.ts",
  summary: "Serve the live dashboard on 127.0.0.1: KPIs, charts and pipeline health, pushed to the page as rows load.",
  flags: {
    port: { type: "string", short: "p", arg: "PORT", help: "port (default $DASHBOARD_PORT = 8050)" },
  },
  env: ["DASHBOARD_PORT", "DATABASE_URL", "BI_READER_PASSWORD", "BI_READER_PASSWORD_FILE", "KAFKA_BROKERS", "KAFKA_TOPIC", "KAFKA_GROUP_ID", ...KAFKA_SECURITY_ENV, "BATCHES_DIR", "LOG_LEVEL"],
  notes: "Run by: make dashboard (and make stream, beside the three scripts)\n" +
    "Filters: the page's address, /api/snapshot and /api/events take region, segment, from and to (YYYY-MM-DD),\n" +
    "e.g. http://127.0.0.1:8050/?region=West&segment=Consumer&from=2016-01-01&to=2016-06-30",
} as const;

const PAGE_DIR = join(import.meta.dir, "dashboard");
const ECHARTS = join(import.meta.dir, "..", "node_modules", "echarts", "dist", "echarts.min.js");
/** How often Kafka and the batch folder are looked at. */
const PIPELINE_EVERY_MS = 2000;
/** The views are read at most once per this long, however many notifications arrive. */
export const MIN_GATHER_MS = 1000;
/** While PostgreSQL cannot be read or listened to, attempts (and the line each logs) come this far apart, doubling. */
const DATABASE_BACKOFF: Backoff = { initialMs: 500, maxMs: 10_000, jitter: 0.2 };
/** Open event streams at most; more are refused (503) until some close. */
export const MAX_PAGES = 200;
/** A page that has not taken a message for this long while one waits for it is dropped (the browser reconnects). */
export const BEHIND_LIMIT_MS = 60_000;
/** Distinct filters followed at once (besides all rows); more are refused (503) until pages of some close. */
export const MAX_FILTERS = 50;
/** The longest region or segment a filter may name (the columns hold 50 characters). */
const MAX_FILTER_VALUE = 100;

/** The business numbers, exact as stored (numeric values are strings). */
export interface Business {
  readonly kpis: { orders: string; lines: string; sales: string; profit: string; margin: string | null; aov: string | null };
  readonly monthly: { month: string; sales: string; profit: string }[];
  readonly products: { product: string; sales: string; profit: string }[];
  readonly segments: { segment: string; sales: string; profit: string; orders: string }[];
  readonly regions: { region: string; sales: string; profit: string }[];
  /** the regions and segments of all rows, whatever the filter: the choices of the page's filters */
  readonly choices: { regions: string[]; segments: string[] };
}

/** The rows a page shows: those of v_sales matching every field given (both dates inclusive, YYYY-MM-DD). */
export interface Filter {
  readonly region?: string;
  readonly segment?: string;
  readonly from?: string;
  readonly to?: string;
}

const FILTER_PARAMETERS = ["region", "segment", "from", "to"] as const;

/** A real calendar day written YYYY-MM-DD (PostgreSQL has no year 0). */
function isDay(value: string): boolean {
  if (!/^\d{4}-\d{2}-\d{2}$/.test(value) || value.startsWith("0000")) return false;
  const day = new Date(`${value}T00:00:00Z`);
  return !Number.isNaN(day.getTime()) && day.toISOString().startsWith(value);
}

/**
 * The filter a query string names, or why it names none: the message of a 400, naming the parameter. An empty
 * value means no filter on that field; a region or segment that matches no row is a filter (it shows zeros).
 */
export function parseFilter(params: URLSearchParams): { filter: Filter } | { error: string } {
  const filter: Record<string, string> = {};
  for (const [name, value] of params) {
    if (!(FILTER_PARAMETERS as readonly string[]).includes(name)) {
      return { error: `unknown parameter ${JSON.stringify(name)}: the dashboard takes ${FILTER_PARAMETERS.join(", ")}` };
    }
    if (params.getAll(name).length > 1) return { error: `parameter "${name}" is given more than once` };
    if (value === "") continue;
    if ((name === "from" || name === "to") && !isDay(value)) return { error: `parameter "${name}": ${JSON.stringify(value)} is not a date (YYYY-MM-DD)` };
    if (value.length > MAX_FILTER_VALUE) return { error: `parameter "${name}" is longer than ${MAX_FILTER_VALUE} characters` };
    // PostgreSQL's text holds no NUL: sent on, it would fail the slice's reads and show PostgreSQL as away.
    if (value.includes("\0")) return { error: `parameter "${name}" holds a NUL character (%00), which no value in PostgreSQL can` };
    filter[name] = value;
  }
  if (filter.from && filter.to && filter.from > filter.to) return { error: `parameter "from" (${filter.from}) is after parameter "to" (${filter.to})` };
  return { filter };
}

/** The filter as a query string in a fixed order, "" for all rows: one key per slice, and the address to share. */
export function filterQuery(filter: Filter): string {
  const params = new URLSearchParams();
  for (const name of FILTER_PARAMETERS) if (filter[name] !== undefined) params.set(name, filter[name]);
  return params.toString();
}

export interface Snapshot {
  /** the database whose numbers these are (make stream's is <name>_live), shown at the top of the page */
  readonly database: string;
  /** when the database part was gathered (ISO), null before the first time */
  readonly at: string | null;
  /** database snapshots of this filter since it was first followed: one per change, whatever the number of pages */
  readonly gathered: number;
  /** the rows these numbers are of */
  readonly filter: Filter;
  /** the same as a query string ("" for all rows), as /api/events and the page's address take it */
  readonly query: string;
  readonly business: Business | null;
  readonly health: {
    readonly postgres: Part<DatabaseHealth> & { readonly where: string };
    readonly kafka: Part<KafkaHealth> | null;
    readonly files: FilesHealth | null;
  };
}

/** The conditions on v_sales of a filter, after `where true`; PostgreSQL compares the dates. */
function sliceOf(tx: TransactionSql, filter: Filter) {
  return [
    filter.region === undefined ? tx`` : tx`and region = ${filter.region}`,
    filter.segment === undefined ? tx`` : tx`and segment = ${filter.segment}`,
    filter.from === undefined ? tx`` : tx`and order_date >= ${filter.from}::date`,
    filter.to === undefined ? tx`` : tx`and order_date <= ${filter.to}::date`,
  ];
}

/**
 * The KPIs and the four charts of the rows of v_sales the filter keeps (all of them for {}), summed by
 * PostgreSQL as exact numeric. Product names are those of v_product_performance (the name each id last sold
 * under), ranked by the filtered sales. Only the views are read: bi_reader may read nothing else.
 */
async function readBusiness(tx: TransactionSql, filter: Filter): Promise<Business> {
  const slice = sliceOf(tx, filter);
  const [kpis] = await tx<Business["kpis"][]>`
    select count(distinct order_id)::text as orders, count(*)::text as lines,
           coalesce(sum(sales), 0)::text as sales, coalesce(sum(profit), 0)::text as profit,
           (sum(profit) / nullif(sum(sales), 0))::text as margin,
           (sum(sales) / nullif(count(distinct order_id), 0))::text as aov
    from v_sales where true ${slice}
  `;
  const monthly = await tx<Business["monthly"]>`
    select to_char(order_date, 'YYYY-MM') as month, sum(sales)::text as sales, sum(profit)::text as profit
    from v_sales where true ${slice} group by 1 order by 1
  `;
  const products = await tx<Business["products"]>`
    select p.product_name as product, s.sales::text as sales, s.profit::text as profit
    from (select product_id, sum(sales) as sales, sum(profit) as profit from v_sales where true ${slice} group by product_id) s
    join v_product_performance p on p.product_id = s.product_id
    order by s.sales desc, s.product_id limit 10
  `;
  const segments = await tx<Business["segments"]>`
    select segment, sum(sales)::text as sales, sum(profit)::text as profit, count(distinct order_id)::text as orders
    from v_sales where true ${slice} group by segment order by segment
  `;
  const regions = await tx<Business["regions"]>`
    select region, sum(sales)::text as sales, sum(profit)::text as profit from v_sales where true ${slice} group by region order by region
  `;
  const [choices] = await tx<Business["choices"][]>`
    select coalesce(array_agg(distinct region order by region) filter (where region is not null), '{}') as regions,
           coalesce(array_agg(distinct segment order by segment) filter (where segment is not null), '{}') as segments
    from v_sales
  `;
  return { kpis: kpis!, monthly: [...monthly], products: [...products], segments: [...segments], regions: [...regions], choices: choices! };
}

/** One consistent read of the views: the filter's KPIs and charts, and the pipeline's row counts (unfiltered). */
async function gather(sql: Sql, target: DatabaseTarget, filter: Filter): Promise<{ business: Business; health: Part<DatabaseHealth> }> {
  return (await sql.begin("isolation level repeatable read read only", async (tx) => {
    const business = await readBusiness(tx, filter);
    return { business, health: await databaseHealth(tx, target) };
  })) as { business: Business; health: Part<DatabaseHealth> };
}

/** An open page: the newest message it was not sent yet, and whether its connection asked for more. */
interface Page {
  readonly controller: ReadableStreamDefaultController<Uint8Array>;
  /** the latest snapshot not sent yet; a newer one replaces it, so a page behind holds one message, not a queue */
  pending: Uint8Array | undefined;
  /** the connection took everything it was given and asks for more (the stream's pull) */
  wants: boolean;
  /** since when a message has waited for this page (ms, performance.now), undefined while it keeps up */
  behindSince: number | undefined;
  /** told when the page is dropped: the server closes its connection (a stream that ends cannot flush to a client that never reads) */
  readonly onDrop: (() => void) | undefined;
}

/** Hands `message` to the page's connection; a page that went away leaves the set. */
function give(pages: Set<Page>, page: Page, message: Uint8Array, leave: (page: Page) => void): void {
  try {
    page.controller.enqueue(message);
    page.wants = false;
    page.behindSince = undefined;
  } catch {
    leave(page); // the page went away
  }
}

/** A message waits for the page; after BEHIND_LIMIT_MS of that, its stream ends and its connection is closed. */
function behind(page: Page, now: number, leave: (page: Page) => void): void {
  page.behindSince ??= now;
  if (now - page.behindSince <= BEHIND_LIMIT_MS) return;
  leave(page);
  try {
    page.controller.close();
  } catch {
    // already closed by the page
  }
  page.onDrop?.();
}

/**
 * The pages that follow the snapshot over server-sent events, with back-pressure. A message goes out only when a
 * page's connection asks for more (the stream's pull, which Bun calls when the socket has taken what it was
 * given); a page that falls behind keeps only the newest snapshot, sent when it catches up, and is dropped once
 * it has taken nothing for BEHIND_LIMIT_MS. Memory per page is one reference to a shared message, whatever the
 * clients do, and at most MAX_PAGES are open. `onLeave` is told each time a page leaves, whatever the reason.
 */
export function createFanOut(now: () => number = () => performance.now(), onLeave: () => void = () => {}) {
  const pages = new Set<Page>();
  const leave = (page: Page) => {
    if (pages.delete(page)) onLeave();
  };
  return {
    get size() {
      return pages.size;
    },
    /** A new page's stream; it starts with `first`. Undefined when MAX_PAGES are open already. */
    follow(first: Uint8Array, onDrop?: () => void): ReadableStream<Uint8Array> | undefined {
      if (pages.size >= MAX_PAGES) return undefined;
      let page: Page;
      // highWaterMark 0: nothing is queued ahead of the connection, a message is handed over when it asks (pull).
      return new ReadableStream<Uint8Array>(
        {
          start(controller) {
            page = { controller, pending: undefined, wants: false, behindSince: undefined, onDrop };
            pages.add(page);
            controller.enqueue(first);
          },
          pull() {
            const message = page.pending;
            page.pending = undefined;
            if (message) give(pages, page, message, leave);
            else page.wants = true;
          },
          cancel: () => leave(page),
        },
        { highWaterMark: 0 },
      );
    },
    /** A snapshot for every page: sent to those that ask, kept (replacing an older one) for those behind. */
    send(message: Uint8Array) {
      for (const page of pages) {
        if (page.wants) give(pages, page, message, leave);
        else {
          page.pending = message;
          behind(page, now(), leave);
        }
      }
    },
    /** A comment for pages that are idle and caught up; one that cannot take it is behind, and keeps its snapshot. */
    ping(comment: Uint8Array) {
      for (const page of pages) {
        if (page.wants) give(pages, page, comment, leave);
        else behind(page, now(), leave);
      }
    },
    close() {
      for (const page of pages) {
        try {
          page.controller.close();
        } catch {
          // already closed by the page
        }
      }
      pages.clear();
    },
  };
}

/**
 * Runs `step` so that runs never overlap and never pile up: a call during a run asks for one more after it, and
 * each run starts at least `pause()` ms after the one before.
 */
function serialRefresh(step: () => Promise<void>, pause: () => number, signal: AbortSignal): () => Promise<void> {
  let running: Promise<void> | undefined;
  let again = false;
  let last = -Infinity;
  return () => {
    if (running) {
      again = true;
      return running;
    }
    running = (async () => {
      do {
        again = false;
        await sleep(last + pause() - performance.now(), signal);
        if (signal.aborted) return;
        last = performance.now();
        await step();
      } while (again);
    })().finally(() => (running = undefined));
    return running;
  };
}

/** The snapshot before anything was read. */
function firstSnapshot(config: Config, where: string): Snapshot {
  return {
    database: config.database.database,
    at: null,
    gathered: 0,
    filter: {},
    query: "",
    business: null,
    health: { postgres: { ok: false, error: "not read yet", where }, kafka: null, files: null },
  };
}

/** The query of all rows: the slice the server always keeps, followed by pages or not. */
const ALL_ROWS = "";

/** The rows a set of pages follows: its snapshot, its pages, and its own reads of the views. */
interface Slice {
  readonly query: string;
  readonly pages: ReturnType<typeof createFanOut>;
  snapshot: Snapshot;
  /** failed reads in a row: each makes the next wait longer (DATABASE_BACKOFF) */
  failures: number;
  /** reads the views for this slice: never overlapping, never piling up, at least MIN_GATHER_MS apart */
  readonly refresh: () => Promise<void>;
  /** its first read, which a snapshot request waits for (all rows: none, the listener reads them) */
  first: Promise<void>;
  /** snapshot requests waiting for `first`: a filtered slice with neither these nor pages is dropped */
  waiting: number;
}

/** A slice of `filter`, starting from `from`'s health with no numbers; `onIdle` is told when a page leaves it. */
function createSlice(filter: Filter, from: Snapshot, read: (slice: Slice) => Promise<void>, signal: AbortSignal, onIdle: (slice: Slice) => void): Slice {
  const query = filterQuery(filter);
  const pause = () => (slice.failures === 0 ? MIN_GATHER_MS : Math.max(MIN_GATHER_MS, backoffDelay(slice.failures, DATABASE_BACKOFF)));
  const slice: Slice = {
    query,
    pages: createFanOut(undefined, () => onIdle(slice)),
    snapshot: { ...from, at: null, gathered: 0, filter, query, business: null },
    failures: 0,
    refresh: serialRefresh(() => read(slice), pause, signal),
    first: Promise.resolve(),
    waiting: 0,
  };
  return slice;
}

/**
 * Reads a slice's numbers and PostgreSQL's health in one transaction and pushes them to its pages. Database
 * refreshes never overlap and never pile up (serialRefresh); each starts at least MIN_GATHER_MS after the one
 * before, longer (DATABASE_BACKOFF) after each failed one in a row. A notification is a hint to read the views
 * again, never data (its payload is not read): any role may send NOTIFY sales_loaded, as often as it likes.
 */
function createReader(config: Config, sql: Sql, log: Logger, broadcast: (slice: Slice) => void) {
  const where = describeDatabase(config.database);
  const loaded = new Set<string>();
  let loadedUpTo: Date | undefined;
  let gathered = 0;
  const setPostgres = (slice: Slice, postgres: Part<DatabaseHealth>) => {
    slice.snapshot = { ...slice.snapshot, health: { ...slice.snapshot.health, postgres: { ...postgres, where } } };
  };
  const read = async (slice: Slice) => {
    try {
      const { business, health } = await gather(sql, config.database, slice.snapshot.filter);
      if (slice.query === ALL_ROWS) {
        // The files the ledger gained, for the batch folder's health: read with all rows, which every change reads.
        const since = await loadedSince(sql, loadedUpTo);
        for (const name of since.names) loaded.add(name);
        loadedUpTo = since.latest;
      }
      gathered++;
      slice.snapshot = { ...slice.snapshot, at: new Date().toISOString(), gathered: slice.snapshot.gathered + 1, business };
      setPostgres(slice, health);
      slice.failures = 0;
    } catch (error) {
      slice.failures++;
      const failure = databaseFailure(error, config.database);
      const of = slice.query === ALL_ROWS ? "" : ` for ${slice.query}`;
      log.warn(failure.problem ? failure.error : `cannot read PostgreSQL at ${where}${of} (${failure.error})`);
      setPostgres(slice, failure);
    }
    broadcast(slice);
  };
  return { where, loaded, read, setPostgres, gathered: () => gathered };
}

const busy = (text: string) => new Response(`${text}\n`, { status: 503, headers: { "retry-after": "10" } });

/**
 * The slices followed now, by query: all rows always, and each filter while pages follow it or a snapshot
 * request waits for it, at most MAX_FILTERS of them. Each is read on its own and pushed to its own pages.
 */
function createSlices(config: Config, reader: ReturnType<typeof createReader>, broadcast: (slice: Slice) => void, signal: AbortSignal) {
  const slices = new Map<string, Slice>();
  // A filter no page follows any more is forgotten: its next page starts it afresh.
  const dropIfIdle = (slice: Slice) => {
    if (slice.query !== ALL_ROWS && slice.pages.size === 0 && slice.waiting === 0 && slices.get(slice.query) === slice) slices.delete(slice.query);
  };
  const all = createSlice({}, firstSnapshot(config, reader.where), reader.read, signal, dropIfIdle);
  slices.set(ALL_ROWS, all);
  return {
    all,
    dropIfIdle,
    /** filters followed now, all rows not counted */
    get filters() {
      return slices.size - 1;
    },
    /** event streams open now, all slices together */
    get pages() {
      return [...slices.values()].reduce((n, slice) => n + slice.pages.size, 0);
    },
    list: () => [...slices.values()],
    /** The slice of `filter`, read at once when new; undefined when MAX_FILTERS others are followed already. */
    open(filter: Filter): Slice | undefined {
      const known = slices.get(filterQuery(filter));
      if (known) return known;
      if (slices.size > MAX_FILTERS) return undefined;
      const slice = createSlice(filter, all.snapshot, reader.read, signal, dropIfIdle);
      slices.set(slice.query, slice);
      slice.first = slice.refresh();
      return slice;
    },
    /** The pipeline's health, the same for every slice; pages are sent it only when it changed. */
    setPipeline(kafka: Part<KafkaHealth>, files: FilesHealth) {
      const changed = JSON.stringify([kafka, files]) !== JSON.stringify([all.snapshot.health.kafka, all.snapshot.health.files]);
      for (const slice of slices.values()) {
        slice.snapshot = { ...slice.snapshot, health: { ...slice.snapshot.health, kafka, files } };
        if (changed) broadcast(slice);
      }
    },
    /** PostgreSQL went away, or cannot be used: pages say why and keep their last numbers, marked as such. */
    postgresDown(failure: Part<never>) {
      for (const slice of slices.values()) {
        const shown = slice.snapshot.health.postgres;
        if (!shown.ok && shown.error === failure.error) continue;
        reader.setPostgres(slice, failure);
        broadcast(slice);
      }
    },
  };
}

type Slices = ReturnType<typeof createSlices>;

/** The snapshot of `filter` for /api/snapshot, with the counts of pages and filters; read now if no page follows it. */
async function answerSnapshot(slices: Slices, filter: Filter): Promise<Response> {
  const slice = slices.open(filter);
  if (!slice) return busy(`more than ${MAX_FILTERS} filters are in use`);
  slice.waiting++;
  await slice.first.finally(() => slice.waiting--);
  slices.dropIfIdle(slice);
  const counts = { pages: slices.pages, filterPages: slice.pages.size, filters: slices.filters };
  return Response.json({ ...slice.snapshot, ...counts }, { headers: { "cache-control": "no-store" } });
}

/** A page's event stream on `filter`: the slice's snapshot at once, then the latest one each time it can take one. */
function followSlice(slices: Slices, encoder: TextEncoder, filter: Filter, onDrop: () => void): Response {
  if (slices.pages >= MAX_PAGES) return busy(`more than ${MAX_PAGES} pages are open`);
  const slice = slices.open(filter);
  if (!slice) return busy(`more than ${MAX_FILTERS} filters are in use`);
  const stream = slice.pages.follow(encoder.encode(`retry: 2000\ndata: ${JSON.stringify(slice.snapshot)}\n\n`), onDrop);
  if (!stream) {
    slices.dropIfIdle(slice);
    return busy(`more than ${MAX_PAGES} pages are open`);
  }
  return new Response(stream, { headers: { "content-type": "text/event-stream", "cache-control": "no-store", connection: "keep-alive" } });
}

/**
 * The dashboard's state: one slice per filter that open pages follow (all rows always), each gathered once per
 * change and fanned out to its own pages, and the pipeline's health, the same for all.
 */
function createHub(config: Config, sql: Sql, log: Logger, signal: AbortSignal) {
  const encoder = new TextEncoder();
  // Encoded once for all the pages of a slice.
  const broadcast = (slice: Slice) => slice.pages.send(encoder.encode(`data: ${JSON.stringify(slice.snapshot)}\n\n`));
  const reader = createReader(config, sql, log, broadcast);
  const slices = createSlices(config, reader, broadcast, signal);
  return {
    /** all rows' snapshot */
    get snapshot() {
      return slices.all.snapshot;
    },
    /** event streams open now, all filters together */
    get pages() {
      return slices.pages;
    },
    /** snapshots gathered since start, all filters together */
    get gathered() {
      return reader.gathered();
    },
    /** filters followed now besides all rows (at most MAX_FILTERS) */
    get filters() {
      return slices.filters;
    },
    /** A change: every slice followed reads the views again (each once, however many pages follow it). */
    async refreshDatabase(): Promise<void> {
      await Promise.all(slices.list().map((slice) => slice.refresh()));
    },
    /** Kafka and the batch folder looked at again: every slice shows it, pushed to pages when it changed. */
    async refreshPipeline(): Promise<void> {
      slices.setPipeline(...(await Promise.all([kafkaHealth(config), filesHealth(config.batchesDir, reader.loaded)])));
    },
    postgresDown: slices.postgresDown,
    /** The snapshot of `filter` as /api/snapshot answers it; a filter no page follows is read for this answer. */
    answer: (filter: Filter) => answerSnapshot(slices, filter),
    /** A new page on `filter` (followSlice); `onDrop` closes its connection when it fell too far behind. */
    follow: (filter: Filter, onDrop: () => void) => followSlice(slices, encoder, filter, onDrop),
    /** A comment line now and then keeps proxies and idle timeouts from closing the streams. */
    ping() {
      const comment = encoder.encode(": ping\n\n");
      for (const slice of slices.list()) slice.pages.ping(comment);
    },
    close() {
      for (const slice of slices.list()) slice.pages.close();
    },
  };
}

/**
 * The data routes, for the rows their query string names (/api/events?region=West&from=2016-01-01): 400 with
 * a message naming the parameter when it names none. `keepOpen` lifts the idle timeout off an event stream;
 * `onDrop` closes the connection of a page dropped for falling behind.
 */
function answerApi(hub: ReturnType<typeof createHub>, url: URL, keepOpen: () => void, onDrop: () => void): Response | Promise<Response> {
  const parsed = parseFilter(url.searchParams);
  if ("error" in parsed) return new Response(`${parsed.error}\n`, { status: 400 });
  if (url.pathname === "/api/snapshot") return hub.answer(parsed.filter);
  keepOpen();
  return hub.follow(parsed.filter, onDrop);
}

/**
 * LISTENs for the loader's commits on a connection of its own, and keeps listening: when that connection
 * closes (PostgreSQL restarted, the session was cut), the page is told PostgreSQL is away, and LISTEN is
 * issued again with backoff until it succeeds, whatever the failure: the server down, the database not
 * created yet (make migrate), the login refused. Each attempt logs one line. Each (re)subscription reads the
 * views afresh, since commits made meanwhile were not announced to anyone.
 */
function listenForLoads(config: Config, hub: ReturnType<typeof createHub>, log: Logger, signal: AbortSignal): { close(): Promise<void> } {
  let subscribing = false;
  const subscribe = async () => {
    if (subscribing || signal.aborted) return;
    subscribing = true;
    try {
      await retryWhile(() => true, () => listener.unsafe(`listen "${LOADED_CHANNEL}"`), {
        backoff: DATABASE_BACKOFF,
        signal,
        onRetry: (error, _n, delay) => {
          hub.postgresDown(databaseFailure(error, config.database));
          log.warn(`waiting for PostgreSQL (${describeDatabaseFailure(error, config.database)}); listening again in ${(delay / 1000).toFixed(1)}s`);
        },
      });
    } catch {
      return; // only a stop request ends the attempts
    } finally {
      subscribing = false;
    }
    await hub.refreshDatabase();
  };
  const listener = connect(config.database, log, {
    max: 1,
    keepOpen: true,
    onnotify: (channel) => {
      if (channel === LOADED_CHANNEL) void hub.refreshDatabase();
    },
    onclose: () => {
      // A connection of a failed attempt: the attempts' own backoff and message go on.
      if (signal.aborted || subscribing) return;
      hub.postgresDown({ ok: false, error: "the connection to PostgreSQL closed" });
      void subscribe();
    },
  });
  void subscribe();
  return { close: () => listener.end({ timeout: 1 }) };
}

/**
 * 403 for a request that does not name this dashboard as its host, or comes from a page of another origin. A
 * DNS-rebinding page (evil.example resolving to 127.0.0.1) reaches the port with its own name in Host; a page of
 * another site that calls the API sends its own Origin. The dashboard's own names are 127.0.0.1:PORT and
 * localhost:PORT.
 */
export function refuseForeign(request: Request, port: number): Response | undefined {
  const own = [`127.0.0.1:${port}`, `localhost:${port}`];
  const host = request.headers.get("host")?.toLowerCase();
  const origin = request.headers.get("origin")?.toLowerCase();
  if (host !== undefined && own.includes(host) && (origin === undefined || own.some((h) => origin === `http://${h}`))) return undefined;
  const why = host === undefined || !own.includes(host) ? `Host ${JSON.stringify(host ?? "")}` : `Origin ${JSON.stringify(origin)}`;
  return new Response(`refused: ${why} is not this dashboard (open http://127.0.0.1:${port}/)\n`, { status: 403 });
}

/**
 * The page, its script and the chart library, the data routes (/api/snapshot, /api/events, both filtered by the
 * query) and /metrics, on 127.0.0.1 only; requests that do not name this dashboard are refused (refuseForeign).
 */
function serve(port: number, hub: ReturnType<typeof createHub>, readHealth: () => Promise<PipelineHealth>) {
  const files: Record<string, { path: string; type: string }> = {
    "/": { path: join(PAGE_DIR, "index.html"), type: "text/html; charset=utf-8" },
    "/client.js": { path: join(PAGE_DIR, "client.js"), type: "text/javascript; charset=utf-8" },
    "/echarts.js": { path: ECHARTS, type: "text/javascript; charset=utf-8" },
  };
  return Bun.serve({
    hostname: "127.0.0.1",
    port,
    idleTimeout: 30, // a connection that sends no request is closed; event streams are exempt below
    fetch(request, server) {
      const refused = refuseForeign(request, server.port!);
      if (refused) return refused;
      const url = new URL(request.url);
      const { pathname } = url;
      if (pathname === "/api/events" || pathname === "/api/snapshot") {
        // Server-sent events stay open until the page is dropped: then 2 s without progress close it.
        return answerApi(hub, url, () => server.timeout(request, 0), () => server.timeout(request, 2));
      }
      if (pathname === "/metrics") return readHealth().then(metricsResponse);
      const file = files[pathname];
      if (file) return new Response(Bun.file(file.path), { headers: { "content-type": file.type } });
      return new Response("not found\n", { status: 404 });
    },
  });
}

async function main(): Promise<void> {
  const flags = parseCli(command);
  if (!flags) return;
  // Everything below reads the database as bi_reader: DATABASE_URL's server and database, bi_reader's login.
  const settings = readConfig();
  const config: Config = { ...settings, database: readerTarget(settings) };
  const log = createLogger("dashboard", config.logLevel);
  const port = flags.port === undefined ? config.dashboardPort : parsePort(flags.port, "--port");
  // Kafka that refuses us, or an address where something else answers, needs a setting changed: say so and stop.
  // A broker that is away is shown on the page and looked at again every two seconds.
  await checkKafkaAccess(config);
  const sql = connect(config.database, log, { max: 2 });
  const shutdown = createShutdown(log);
  const hub = createHub(config, sql, log, shutdown.signal);
  const readHealth = createHealthReader(config, sql);

  const server = serve(port, hub, readHealth);
  log.info(
    `dashboard at http://127.0.0.1:${server.port}/ showing database ${config.database.database} at ${config.database.host}:${config.database.port} ` +
      `as ${config.database.user} (Ctrl-C to stop)`,
  );

  const pipelineTimer = setInterval(() => void hub.refreshPipeline(), PIPELINE_EVERY_MS);
  const pingTimer = setInterval(() => hub.ping(), 15_000);
  shutdown.onStop("stop the timers", () => {
    clearInterval(pipelineTimer);
    clearInterval(pingTimer);
  });
  shutdown.onStop("close the pages and the server", () => {
    hub.close();
    server.stop(true);
  });
  const listening = listenForLoads(config, hub, log, shutdown.signal);
  shutdown.onStop("close database connections", async () => {
    await listening.close();
    await sql.end({ timeout: 5 });
  });

  try {
    await hub.refreshPipeline();
    await shutdown.whenRequested;
  } finally {
    await shutdown.run();
  }
  log.info(`done: ${hub.gathered} snapshots gathered`);
}

if (import.meta.main) main().catch(fail);
