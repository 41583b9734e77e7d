// Waiting and retrying, in one place: `sleep`, `pollUntil` (wait for a condition) and `retryWhile` (run
// again while the failure is transient), all with one backoff rule. Scripts, service start-up and the tests
// wait through this module; no other file writes its own loop of sleeps.

/** Sleep that ends early (without throwing) when `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  if (ms <= 0 || signal?.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}

export interface Backoff {
  /** first delay, ms */
  readonly initialMs: number;
  /** the delay doubles up to this, ms */
  readonly maxMs: number;
  /** 0..1: each delay is shortened by up to this fraction at random, so clients that failed together do not retry together */
  readonly jitter: number;
}

export const DEFAULT_BACKOFF: Backoff = { initialMs: 500, maxMs: 5000, jitter: 0.2 };

/** The delay before attempt `attempt` (1 = the first retry): initial * 2^(attempt-1), capped, minus jitter. */
export function backoffDelay(attempt: number, backoff: Backoff = DEFAULT_BACKOFF, random: () => number = Math.random): number {
  const full = Math.min(backoff.maxMs, backoff.initialMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(full * (1 - backoff.jitter * random()));
}

/** Thrown by pollUntil when the condition did not hold in time. */
export class TimeoutError extends Error {
  override name = "TimeoutError";
}

export interface PollOptions {
  /** give up after this long, ms */
  readonly timeout: number;
  /** check this often, ms (default 100) */
  readonly every?: number;
  /** what is awaited, for the error message (a function: described when the time is up) */
  readonly what?: string | (() => string);
  readonly signal?: AbortSignal;
}

/**
 * Calls `condition` until it returns a truthy value, and returns that value. A condition that throws counts
 * as "not yet" (a service that is still starting); the last error is named if time runs out.
 */
export type Truthy<T> = Exclude<T, null | undefined | false | 0 | "">;

export async function pollUntil<T>(condition: () => Promise<T> | T, options: PollOptions): Promise<Truthy<T>> {
  const deadline = performance.now() + options.timeout;
  const what = () => (typeof options.what === "function" ? options.what() : (options.what ?? "a condition"));
  let last: unknown;
  for (;;) {
    try {
      const value = await condition();
      if (value) return value as Truthy<T>;
    } catch (error) {
      last = error;
    }
    if (options.signal?.aborted) throw new Error(`stopped while waiting for ${what()}`);
    if (performance.now() >= deadline) {
      const why = last ? ` (last error: ${(last as Error).message})` : "";
      throw new TimeoutError(`timed out after ${Math.round(options.timeout / 1000)}s waiting for ${what()}${why}`);
    }
    await sleep(Math.min(options.every ?? 100, Math.max(0, deadline - performance.now())), options.signal);
  }
}

export interface RetryPolicy {
  readonly backoff?: Backoff;
  /** give up when failures have lasted this long, ms (default: never) */
  readonly giveUpAfterMs?: number;
  /** a stop request: no more attempts; the last error is thrown */
  readonly signal?: AbortSignal;
  /** told before each wait: the error, the attempt that failed (1-based) and the delay */
  readonly onRetry?: (error: unknown, attempt: number, delayMs: number) => void;
  /** told once when an attempt succeeds after failures */
  readonly onRecovered?: (failedForMs: number) => void;
}

/** Thrown by retryWhile when transient failures lasted longer than giveUpAfterMs. */
export class GaveUpError extends Error {
  override name = "GaveUpError";
}

/**
 * Runs `attempt`; while it fails with an error `isTransient` accepts, waits (backoff) and runs it again.
 * Any other error, a stop request, or failures lasting longer than `giveUpAfterMs` end it.
 */
export async function retryWhile<T>(
  isTransient: (error: unknown) => boolean,
  attempt: (n: number) => Promise<T>,
  policy: RetryPolicy = {},
): Promise<T> {
  let since: number | undefined;
  for (let n = 1; ; n++) {
    try {
      const value = await attempt(n);
      if (since !== undefined) policy.onRecovered?.(performance.now() - since);
      return value;
    } catch (error) {
      if (!isTransient(error) || policy.signal?.aborted) throw error;
      since ??= performance.now();
      const failedFor = performance.now() - since;
      if (policy.giveUpAfterMs !== undefined && failedFor > policy.giveUpAfterMs) {
        throw new GaveUpError(`gave up after ${Math.round(failedFor / 1000)}s: ${(error as Error).message}`, { cause: error });
      }
      const delay = backoffDelay(n, policy.backoff);
      policy.onRetry?.(error, n, delay);
      await sleep(delay, policy.signal);
      if (policy.signal?.aborted) throw error;
    }
  }
}
