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
// Slow and hostile clients: a page is sent a snapshot only when its connection has taken the one before; one
// that falls behind gets the newest when it catches up, never a queue, and is dropped after a minute without
// taking anything (createFanOut). Requests that do not name this server as their host, or come from a page of
// another origin, are refused (a DNS-rebinding page reaches 127.0.0.1 under its own name).
//
// GET /metrics: the pipeline's health for Prometheus (text format 0.0.4; lib/metrics.ts), the facts `make status`
// prints (lib/health.ts). Gathered on scrape, not taken from the page's snapshot: the snapshot's database part is
// read only when a load is announced, and per-partition lag, the group's members and the loader's sessions are
// not in it. A gathering is kept for a second (createHealthReader), so a storm of scrapes reads Kafka and
// PostgreSQL once a second.
//
// Env: DASHBOARD_PORT, DATABASE_URL (or PG*), KAFKA_BROKERS, KAFKA_TOPIC, KAFKA_GROUP_ID, KAFKA_SSL*, KAFKA_SASL_*,
// BATCHES_DIR, LOG_LEVEL.
// Flags: --port, --help.

import { join } from "node:path";
import { fail, parseCli } from "./lib/cli.ts";
import { KAFKA_SECURITY_ENV, parsePort, readConfig, type Config, type DatabaseTarget } from "./lib/config.ts";
import { connect, describeDatabase, describeDatabaseFailure, type Sql } from "./lib/db.ts";
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
  env: ["DASHBOARD_PORT", "DATABASE_URL", "KAFKA_BROKERS", "KAFKA_TOPIC", "KAFKA_GROUP_ID", ...KAFKA_SECURITY_ENV, "BATCHES_DIR", "LOG_LEVEL"],
  notes: "Run by: make dashboard (and make stream, beside the three scripts)",
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

/** The business numbers, exact as stored (numeric values are strings). */
export interface Business {
  readonly kpis: { orders: string; lines: string; sales: string; profit: string; margin: string | null; aov: string | null };
  readonly monthly: { month: string; sales: string; profit: string }[];
  readonly products: { product: string; sales: string; profit: string }[];
  readonly segments: { segment: string; sales: string; profit: string; orders: string }[];
  readonly regions: { region: string; sales: string; profit: string }[];
}

export interface Snapshot {
  /** the database whose numbers these are (make stream's is <name>_live), shown at the top of the page */
  readonly database: string;
  /** when the database part was gathered (ISO), null before the first time */
  readonly at: string | null;
  /** database snapshots gathered since start: one per change, whatever the number of pages */
  readonly gathered: number;
  readonly business: Business | null;
  readonly health: {
    readonly postgres: Part<DatabaseHealth> & { readonly where: string };
    readonly kafka: Part<KafkaHealth> | null;
    readonly files: FilesHealth | null;
  };
}

/** One consistent read of the views: KPIs, the four charts, and the pipeline's row counts. */
async function gather(sql: Sql, target: DatabaseTarget): Promise<{ business: Business; health: Part<DatabaseHealth> }> {
  return (await sql.begin("isolation level repeatable read read only", async (tx) => {
    const [kpis] = await tx<Business["kpis"][]>`
      select count(distinct order_id)::text as orders, count(*)::text as lines,
             coalesce(sum(sales), 0)::text as sales, coalesce(sum(profit), 0)::text as profit,
             (sum(profit) / nullif(sum(sales), 0))::text as margin,
             (sum(sales) / nullif(count(distinct order_id), 0))::text as aov
      from v_sales
    `;
    const monthly = await tx<Business["monthly"]>`
      select to_char(month, 'YYYY-MM') as month, sales::text as sales, profit::text as profit from v_monthly_sales order by month
    `;
    const products = await tx<Business["products"]>`
      select product_name as product, sales::text as sales, profit::text as profit
      from v_product_performance order by sales_rank, product_id limit 10
    `;
    const segments = await tx<Business["segments"]>`
      select segment, sales::text as sales, profit::text as profit, orders::text as orders from v_customer_segments order by segment
    `;
    const regions = await tx<Business["regions"]>`
      select region, sum(sales)::text as sales, sum(profit)::text as profit from v_region_sales group by region order by region
    `;
    const health = await databaseHealth(tx, target);
    return { business: { kpis: kpis!, monthly: [...monthly], products: [...products], segments: [...segments], regions: [...regions] }, health };
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
function give(pages: Set<Page>, page: Page, message: Uint8Array): void {
  try {
    page.controller.enqueue(message);
    page.wants = false;
    page.behindSince = undefined;
  } catch {
    pages.delete(page); // the page went away
  }
}

/** A message waits for the page; after BEHIND_LIMIT_MS of that, its stream ends and its connection is closed. */
function behind(pages: Set<Page>, page: Page, now: number): void {
  page.behindSince ??= now;
  if (now - page.behindSince <= BEHIND_LIMIT_MS) return;
  pages.delete(page);
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
 * clients do, and at most MAX_PAGES are open.
 */
export function createFanOut(now: () => number = () => performance.now()) {
  const pages = new Set<Page>();
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
            if (message) give(pages, page, message);
            else page.wants = true;
          },
          cancel: () => void pages.delete(page),
        },
        { highWaterMark: 0 },
      );
    },
    /** A snapshot for every page: sent to those that ask, kept (replacing an older one) for those behind. */
    send(message: Uint8Array) {
      for (const page of pages) {
        if (page.wants) give(pages, page, message);
        else {
          page.pending = message;
          behind(pages, page, now());
        }
      }
    },
    /** A comment for pages that are idle and caught up; one that cannot take it is behind, and keeps its snapshot. */
    ping(comment: Uint8Array) {
      for (const page of pages) {
        if (page.wants) give(pages, page, comment);
        else behind(pages, page, now());
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
    business: null,
    health: { postgres: { ok: false, error: "not read yet", where }, kafka: null, files: null },
  };
}

/** The dashboard's state and the pages that follow it. */
function createHub(config: Config, sql: Sql, log: Logger, signal: AbortSignal) {
  const where = describeDatabase(config.database);
  const pages = createFanOut();
  const encoder = new TextEncoder();
  const loaded = new Set<string>();
  let loadedUpTo: Date | undefined;
  let snapshot = firstSnapshot(config, where);
  // Encoded once for every page.
  const broadcast = () => pages.send(encoder.encode(`data: ${JSON.stringify(snapshot)}\n\n`));

  // Database refreshes never overlap and never pile up (serialRefresh); each starts at least MIN_GATHER_MS after
  // the one before, longer (DATABASE_BACKOFF) after each failed one in a row. A notification is a hint to read
  // the views again, never data (its payload is not read): any role may send NOTIFY sales_loaded, as often as it
  // likes.
  let failures = 0;
  const readDatabase = async () => {
    try {
      const { business, health } = await gather(sql, config.database);
      const since = await loadedSince(sql, loadedUpTo);
      for (const name of since.names) loaded.add(name);
      loadedUpTo = since.latest;
      snapshot = { ...snapshot, at: new Date().toISOString(), gathered: snapshot.gathered + 1, business, health: { ...snapshot.health, postgres: { ...health, where } } };
      failures = 0;
    } catch (error) {
      failures++;
      const failure = databaseFailure(error, config.database);
      log.warn(failure.problem ? failure.error : `cannot read PostgreSQL at ${where} (${failure.error})`);
      snapshot = { ...snapshot, health: { ...snapshot.health, postgres: { ...failure, where } } };
    }
    broadcast();
  };
  const pause = () => (failures === 0 ? MIN_GATHER_MS : Math.max(MIN_GATHER_MS, backoffDelay(failures, DATABASE_BACKOFF)));
  const refreshDatabase = serialRefresh(readDatabase, pause, signal);

  /** PostgreSQL went away, or cannot be used: the page says why and keeps the last numbers, marked as such. */
  const postgresDown = (failure: Part<never>) => {
    if (!snapshot.health.postgres.ok && snapshot.health.postgres.error === failure.error) return;
    snapshot = { ...snapshot, health: { ...snapshot.health, postgres: { ...failure, where } } };
    broadcast();
  };

  const refreshPipeline = async () => {
    const [kafka, files] = await Promise.all([kafkaHealth(config), filesHealth(config.batchesDir, loaded)]);
    const changed = JSON.stringify([kafka, files]) !== JSON.stringify([snapshot.health.kafka, snapshot.health.files]);
    snapshot = { ...snapshot, health: { ...snapshot.health, kafka, files } };
    if (changed) broadcast();
  };

  return {
    get snapshot() {
      return snapshot;
    },
    /** event streams open now */
    get pages() {
      return pages.size;
    },
    refreshDatabase,
    refreshPipeline,
    postgresDown,
    /**
     * A new page: it gets the current snapshot at once, then the latest one each time it can take one.
     * `onDrop` closes its connection when it fell too far behind.
     */
    follow(onDrop: () => void): Response {
      const stream = pages.follow(encoder.encode(`retry: 2000\ndata: ${JSON.stringify(snapshot)}\n\n`), onDrop);
      if (!stream) return new Response(`more than ${MAX_PAGES} pages are open\n`, { status: 503, headers: { "retry-after": "10" } });
      return new Response(stream, { headers: { "content-type": "text/event-stream", "cache-control": "no-store", connection: "keep-alive" } });
    },
    /** A comment line now and then keeps proxies and idle timeouts from closing the stream. */
    ping: () => pages.ping(encoder.encode(": ping\n\n")),
    close: () => pages.close(),
  };
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

async function main(): Promise<void> {
  const flags = parseCli(command);
  if (!flags) return;
  const config = readConfig();
  const log = createLogger("dashboard", config.logLevel);
  const port = flags.port === undefined ? config.dashboardPort : parsePort(flags.port, "--port");
  // Kafka that refuses us, or an address where something else answers, needs a setting changed: say so and stop.
  // A broker that is away is shown on the page and looked at again every two seconds.
  await checkKafkaAccess(config);
  const sql = connect(config.database, log, { max: 2 });
  const shutdown = createShutdown(log);
  const hub = createHub(config, sql, log, shutdown.signal);
  const readHealth = createHealthReader(config, sql);

  const files: Record<string, { path: string; type: string }> = {
    "/": { path: join(PAGE_DIR, "index.html"), type: "text/html; charset=utf-8" },
    "/client.js": { path: join(PAGE_DIR, "client.js"), type: "text/javascript; charset=utf-8" },
    "/echarts.js": { path: ECHARTS, type: "text/javascript; charset=utf-8" },
  };
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port,
    idleTimeout: 30, // a connection that sends no request is closed; event streams are exempt below
    fetch(request, server) {
      const refused = refuseForeign(request, server.port!);
      if (refused) return refused;
      const { pathname } = new URL(request.url);
      if (pathname === "/api/events") {
        server.timeout(request, 0); // server-sent events stay open...
        return hub.follow(() => server.timeout(request, 2)); // ...until the page is dropped: then 2 s without progress close it
      }
      if (pathname === "/metrics") return readHealth().then(metricsResponse);
      if (pathname === "/api/snapshot") return Response.json({ ...hub.snapshot, pages: hub.pages }, { headers: { "cache-control": "no-store" } });
      const file = files[pathname];
      if (file) return new Response(Bun.file(file.path), { headers: { "content-type": file.type } });
      return new Response("not found\n", { status: 404 });
    },
  });
  log.info(`dashboard at http://127.0.0.1:${server.port}/ showing database ${config.database.database} at ${config.database.host}:${config.database.port} (Ctrl-C to stop)`);

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
  log.info(`done: ${hub.snapshot.gathered} snapshots gathered`);
}

if (import.meta.main) main().catch(fail);
