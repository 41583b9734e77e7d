// Graceful shutdown, written once. SIGINT/SIGTERM (or a script's own reason, such as --until-idle) asks the
// script to stop; the script's loop sees `requested`, stops taking input, and its registered steps run in
// order: flush what is buffered -> disconnect Kafka -> sql.end({ timeout: 5 }). Asking twice is harmless
// from code; a second Ctrl-C forces the exit for a user who does not want to wait.

import type { Logger } from "./log.ts";

export type Step = () => Promise<void> | void;

export interface Shutdown {
  /** true once a stop was asked for */
  readonly requested: boolean;
  /** resolves with the reason when a stop is asked for */
  readonly whenRequested: Promise<string>;
  /** aborted when a stop is asked for; pass it to sleeps so they end early */
  readonly signal: AbortSignal;
  /** Ask for a stop (idempotent). */
  request(reason: string): void;
  /** Register a step; steps run once, in registration order, when `run` is called. */
  onStop(name: string, step: Step): void;
  /** Run the registered steps once; later calls return the same promise. */
  run(): Promise<void>;
}

export function createShutdown(log: Logger, signals: NodeJS.Signals[] = ["SIGINT", "SIGTERM"]): Shutdown {
  const steps: { name: string; step: Step }[] = [];
  const controller = new AbortController();
  let requested = false;
  let resolveRequested!: (reason: string) => void;
  const whenRequested = new Promise<string>((resolve) => (resolveRequested = resolve));
  let running: Promise<void> | undefined;

  const request = (reason: string) => {
    if (requested) return;
    requested = true;
    log.info(`stopping: ${reason}`);
    controller.abort(reason);
    resolveRequested(reason);
  };

  const onSignal = (signal: NodeJS.Signals) => {
    if (requested) {
      log.warn(`${signal} again: exiting now without waiting for the flush`);
      process.exit(130);
    }
    request(`received ${signal}, finishing what is in flight (press Ctrl-C again to force)`);
  };
  for (const signal of signals) process.on(signal, onSignal);

  const run = () => {
    running ??= (async () => {
      for (const { name, step } of steps) {
        try {
          await step();
        } catch (error) {
          // Later steps (disconnects) must still run; the failure is reported and fails the run.
          log.error(`while stopping (${name}): ${(error as Error).message}`);
          process.exitCode = 1;
        }
      }
      for (const signal of signals) process.off(signal, onSignal);
    })();
    return running;
  };

  return {
    get requested() {
      return requested;
    },
    whenRequested,
    signal: controller.signal,
    request,
    onStop: (name, step) => void steps.push({ name, step }),
    run,
  };
}

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
