// Graceful shutdown, written once. SIGINT/SIGTERM (or a script's own reason, such as --until-idle) asks the
// script to stop; the script's loop sees `requested`, stops taking input, and its registered steps run in
// order: flush what is buffered -> disconnect Kafka -> sql.end({ timeout: 5 }). Asking twice is harmless
// from code; a second Ctrl-C forces the exit for a user who does not want to wait.
//
// A stop never waits forever: once asked for, the process exits within `deadlineMs` whatever it is waiting on
// (a hung query, a broker that does not answer). That is safe by design: work not committed is rolled back by
// PostgreSQL when the connection drops, and Kafka offsets not committed are read again by the next run.

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

export interface ShutdownOptions {
  readonly signals?: NodeJS.Signals[];
  /** the most a stop may take from the request to the exit, ms (default 10 s) */
  readonly deadlineMs?: number;
  /** how a forced stop ends the process (tests pass their own) */
  readonly exit?: (code: number) => void;
}

export const STOP_DEADLINE_MS = 10_000;
/** How long a script whose stop steps have all run may take to exit by itself before it is made to. */
export const LINGER_MS = 2_000;

/** Runs the stop steps in order. One that fails is reported and fails the run; the later ones (disconnects) still run. */
async function runSteps(steps: readonly { name: string; step: Step }[], log: Logger, starting: (name: string) => void): Promise<void> {
  for (const { name, step } of steps) {
    starting(name);
    try {
      await step();
    } catch (error) {
      log.error(`while stopping (${name}): ${(error as Error).message}`);
      process.exitCode = 1;
    }
  }
}

/**
 * The stop's deadline: after `ms`, a script still busy (with `current()`) is told so and `exit` is called. The timer
 * only forces an exit; it does not keep a process alive that has finished.
 */
function forceExitAfter(ms: number, log: Logger, current: () => string, exit: () => void): void {
  setTimeout(() => {
    if (current() !== "exiting") {
      log.error(
        `did not stop within ${ms / 1000}s (still busy with: ${current()}); exiting now. Nothing uncommitted is kept: ` +
          "PostgreSQL rolls back an open transaction and Kafka hands uncommitted records to the next run",
      );
    }
    exit();
  }, ms).unref?.();
}

export function createShutdown(log: Logger, options: ShutdownOptions = {}): Shutdown {
  const signals = options.signals ?? ["SIGINT", "SIGTERM"];
  const exit = options.exit ?? ((code: number) => process.exit(code));
  const steps: { name: string; step: Step }[] = [];
  const controller = new AbortController();
  let requested = false;
  let current = "the main loop";
  let resolveRequested!: (reason: string) => void;
  const whenRequested = new Promise<string>((resolve) => (resolveRequested = resolve));
  let running: Promise<void> | undefined;
  let finished = false;
  const exitAsFinished = () => exit(typeof process.exitCode === "number" ? process.exitCode : 0);

  const request = (reason: string) => {
    if (requested) return;
    requested = true;
    log.info(`stopping: ${reason}`);
    controller.abort(reason);
    resolveRequested(reason);
    forceExitAfter(options.deadlineMs ?? STOP_DEADLINE_MS, log, () => current, () => (finished ? exitAsFinished() : exit(1)));
  };

  const onSignal = (signal: NodeJS.Signals) => {
    if (requested) {
      log.warn(`${signal} again: exiting now without waiting for the flush`);
      exit(130);
      return;
    }
    request(`received ${signal}, finishing what is in flight (press Ctrl-C again to force)`);
  };
  for (const signal of signals) process.on(signal, onSignal);

  const run = () => {
    running ??= (async () => {
      await runSteps(steps, log, (name) => (current = name));
      current = "exiting";
      finished = true;
      for (const signal of signals) process.off(signal, onSignal);
      // Every step is done: files written, offsets committed, connections closed. A library may still hold a
      // timer or socket (kafkajs rejoining a group that was rebalancing as it disconnected); that must neither
      // keep a finished script alive nor turn its exit into a failure.
      setTimeout(exitAsFinished, LINGER_MS).unref?.();
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
