// One small logger for every script: `[producer] sent=1200 rate=980/s` lines on stderr, so stdout stays
// free for data. The level (LOG_LEVEL: error | warn | info | debug, passed in from config) filters; a progress
// line redraws itself on a terminal and falls back to an ordinary line every N items when stderr is a file or
// a pipe. With LOG_PROGRESS=lines (make stream sets it) progress is a whole line now and then, never redrawn:
// several processes share that terminal, and their redrawn lines would overwrite each other. Every line is
// redacted first: passwords in URLs and the secrets config registered never get out.

export const LEVELS = ["error", "warn", "info", "debug"] as const;
export type Level = (typeof LEVELS)[number];

/**
 * How progress shows (LOG_PROGRESS). "auto": a line redrawn in place on a terminal, a line every N items off
 * it. "lines": a whole line at most every PROGRESS_LINE_MS, on a terminal too, for a terminal several
 * processes write to at once.
 */
export const PROGRESS_MODES = ["auto", "lines"] as const;
export type ProgressMode = (typeof PROGRESS_MODES)[number];

/** With LOG_PROGRESS=lines, at most one progress line this often per process. */
export const PROGRESS_LINE_MS = 10_000;

export interface Logger {
  readonly name: string;
  /** how this process shows progress (createProgress) */
  readonly progress: ProgressMode;
  error(message: string): void;
  warn(message: string): void;
  info(message: string): void;
  debug(message: string): void;
  enabled(level: Level): boolean;
}

export function isLevel(value: string): value is Level {
  return (LEVELS as readonly string[]).includes(value);
}

export function isProgressMode(value: string): value is ProgressMode {
  return (PROGRESS_MODES as readonly string[]).includes(value);
}

const secrets = new Set<string>();

/** The compose file's published default password: masking it would mask the word "postgres" everywhere. */
const PUBLIC_PASSWORDS = new Set(["postgres"]);

/**
 * Registers a secret (a password from the environment): redact() masks it wherever it appears. Passwords under
 * four characters are masked only inside URLs, or every message would lose its letters.
 */
export function addSecret(value: string): void {
  if (value.length >= 4 && !PUBLIC_PASSWORDS.has(value)) secrets.add(value);
}

/**
 * Masks passwords: the password part of any "scheme://user:password@host" and every registered secret, so no
 * message, log line or error prints one, whatever path it took to get there.
 */
export function redact(message: string): string {
  let out = message.replace(/([a-z][a-z0-9+.-]*:\/\/[^\s:/@]*:)[^\s@]*@/gi, "$1***@");
  for (const secret of secrets) out = out.replaceAll(secret, "***");
  return out;
}

let progressVisible = false;

function clearProgress(): void {
  if (progressVisible) {
    process.stderr.write("\r\x1b[2K");
    progressVisible = false;
  }
}

/** `level` "silent" logs nothing (for probes whose failures are the expected answer). */
export function createLogger(name: string, level: Level | "silent" = "info", progress: ProgressMode = "auto"): Logger {
  const threshold = level === "silent" ? -1 : LEVELS.indexOf(level);
  const write = (at: Level, message: string) => {
    if (LEVELS.indexOf(at) > threshold) return;
    clearProgress();
    const tag = at === "info" ? "" : `${at.toUpperCase()} `;
    process.stderr.write(redact(`[${name}] ${tag}${message}\n`));
  };
  return {
    name,
    progress,
    error: (message) => write("error", message),
    warn: (message) => write("warn", message),
    info: (message) => write("info", message),
    debug: (message) => write("debug", message),
    enabled: (at) => LEVELS.indexOf(at) <= threshold,
  };
}

/** "12.3s", "4m05s", "1h02m". */
export function formatDuration(ms: number): string {
  const seconds = ms / 1000;
  if (seconds < 59.95) return `${seconds.toFixed(1)}s`; // 59.96 would round to "60.0s"
  const m = Math.floor(seconds / 60);
  const s = Math.floor(seconds % 60);
  if (m < 60) return `${m}m${String(s).padStart(2, "0")}s`;
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}m`;
}

export function formatRate(count: number, ms: number): string {
  if (ms <= 0) return "-";
  const rate = (count * 1000) / ms;
  return rate >= 100 ? `${Math.round(rate)}/s` : `${rate.toFixed(1)}/s`;
}

/**
 * A summary's rate over the time spent working, saying so: " (812/s while records arrived)". A run's whole
 * duration holds waits (for the first record, for a topic to stay quiet, for new files) that say nothing about
 * its speed. Empty when no working time was measured.
 */
export function rateWhile(count: number, ms: number, what: string): string {
  return ms > 0 ? ` (${formatRate(count, ms)} ${what})` : "";
}

export interface Progress {
  /** Report that `done` items are finished (absolute, not an increment). */
  update(done: number): void;
  /** Remove the progress line (before a summary). */
  done(): void;
}

/** Where progress goes; tests set both. */
export interface ProgressTerminal {
  /** stderr is a terminal (default: process.stderr.isTTY) */
  readonly isTTY?: boolean;
  /** the clock in ms (default: performance.now) */
  readonly now?: () => number;
}

/**
 * Progress for long runs, with count / total, rate and ETA. With log.progress "lines": a whole log line at most
 * every PROGRESS_LINE_MS, and only when the count moved. Otherwise, on a terminal: one line redrawn at most 4
 * times a second; off a terminal: a plain log line every `every` items, so CI logs stay short.
 */
export function createProgress(
  log: Logger,
  label: string,
  total: number | undefined,
  every = 1000,
  { isTTY = Boolean(process.stderr.isTTY), now = () => performance.now() }: ProgressTerminal = {},
): Progress {
  const started = now();
  let lastDraw = 0;
  let lastLogged = 0;
  let lastLine = started;
  const describe = (done: number) => {
    const elapsed = now() - started;
    const parts = [`${label}=${done}${total ? `/${total}` : ""}`, `rate=${formatRate(done, elapsed)}`];
    if (total && done > 0 && done < total) {
      parts.push(`eta=${formatDuration(((total - done) * elapsed) / done)}`);
    }
    return parts.join(" ");
  };
  return {
    update(done) {
      if (!log.enabled("info")) return;
      if (log.progress === "lines") {
        const at = now();
        if (at - lastLine < PROGRESS_LINE_MS || done === lastLogged) return;
        lastLine = at;
        lastLogged = done;
        log.info(describe(done));
      } else if (isTTY) {
        const at = now();
        if (at - lastDraw < 250) return;
        lastDraw = at;
        process.stderr.write(redact(`\r\x1b[2K[${log.name}] ${describe(done)}`));
        progressVisible = true;
      } else if (done - lastLogged >= every) {
        lastLogged = done - (done % every);
        log.info(describe(done));
      }
    },
    done() {
      clearProgress();
    },
  };
}
