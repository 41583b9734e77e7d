// Unit tests for scripts/lib/log.ts: the duration and rate formats of progress and summary lines, and progress
// as a live line or as whole lines (LOG_PROGRESS=lines, which make stream sets).

import { afterEach, beforeEach, describe, expect, spyOn, test } from "bun:test";
import { createLogger, createProgress, formatDuration, formatRate, isLevel, PROGRESS_LINE_MS, rateWhile, type ProgressMode } from "../scripts/lib/log.ts";
import { ROOT } from "./helpers.ts";

describe("formatDuration", () => {
  test("shows seconds with one decimal under a minute", () => {
    expect(formatDuration(0)).toBe("0.0s");
    expect(formatDuration(12_345)).toBe("12.3s");
    expect(formatDuration(59_900)).toBe("59.9s");
  });

  test("shows minutes and zero-padded seconds under an hour", () => {
    expect(formatDuration(60_000)).toBe("1m00s");
    expect(formatDuration(245_000)).toBe("4m05s");
    expect(formatDuration(3_599_999)).toBe("59m59s");
  });

  test("shows hours and zero-padded minutes from an hour", () => {
    expect(formatDuration(3_600_000)).toBe("1h00m");
    expect(formatDuration(3_720_000)).toBe("1h02m");
    expect(formatDuration(90_000_000)).toBe("25h00m");
  });
});

describe("formatRate", () => {
  test("shows whole numbers from 100 per second", () => {
    expect(formatRate(1200, 1000)).toBe("1200/s");
    expect(formatRate(100, 1000)).toBe("100/s");
    expect(formatRate(9_994, 3_000)).toBe("3331/s");
  });

  test("shows one decimal under 100 per second", () => {
    expect(formatRate(5, 2000)).toBe("2.5/s");
    expect(formatRate(999, 10_000)).toBe("99.9/s");
    expect(formatRate(0, 1000)).toBe("0.0/s");
  });

  test("shows a dash when no time has passed", () => {
    expect(formatRate(10, 0)).toBe("-");
    expect(formatRate(10, -5)).toBe("-");
  });
});

describe("rateWhile", () => {
  test("says a rate over the time spent working, and what that time was", () => {
    expect(rateWhile(9993, 1_230, "while records arrived")).toBe(" (8124/s while records arrived)");
  });

  test("says nothing when no working time was measured", () => {
    expect(rateWhile(1, 0, "while records arrived")).toBe("");
  });
});

describe("isLevel", () => {
  test("knows the four levels and nothing else", () => {
    expect(["error", "warn", "info", "debug", "silent", "INFO", ""].map(isLevel)).toEqual([
      true,
      true,
      true,
      true,
      false,
      false,
      false,
    ]);
  });
});

describe("createProgress", () => {
  let written: string[];
  let stderr: ReturnType<typeof spyOn>;
  beforeEach(() => {
    written = [];
    stderr = spyOn(process.stderr, "write").mockImplementation((chunk: string | Uint8Array) => (written.push(String(chunk)), true));
  });
  afterEach(() => stderr.mockRestore());

  /** A progress of 100 rows on a terminal, on a clock the test moves; `at(ms, done)` reports `done` at `ms`. */
  function progressAt(mode: ProgressMode) {
    let clock = 0;
    const progress = createProgress(createLogger("producer", "info", mode), "sent", 100, 1000, { isTTY: true, now: () => clock });
    return (ms: number, done: number) => {
      clock = ms;
      progress.update(done);
    };
  }

  test("with LOG_PROGRESS=lines, prints whole prefixed lines at most every PROGRESS_LINE_MS, even on a terminal", () => {
    const at = progressAt("lines");
    at(1_000, 5);
    at(PROGRESS_LINE_MS, 12);
    at(PROGRESS_LINE_MS + 5_000, 18);
    at(2 * PROGRESS_LINE_MS, 25);
    expect(written).toEqual(["[producer] sent=12/100 rate=1.2/s eta=1m13s\n", "[producer] sent=25/100 rate=1.3/s eta=1m00s\n"]);
  });

  test("with LOG_PROGRESS=lines, stays silent while the count does not move", () => {
    const at = progressAt("lines");
    at(PROGRESS_LINE_MS, 10);
    at(3 * PROGRESS_LINE_MS, 10);
    expect(written).toEqual(["[producer] sent=10/100 rate=1.0/s eta=1m30s\n"]);
  });

  test("otherwise keeps one live line on a terminal, redrawn in place", () => {
    const at = progressAt("auto");
    at(1_000, 5);
    at(2_000, 12);
    expect(written).toEqual(["\r\x1b[2K[producer] sent=5/100 rate=5.0/s eta=19.0s", "\r\x1b[2K[producer] sent=12/100 rate=6.0/s eta=14.7s"]);
  });
});

describe("make stream", () => {
  test("runs its processes with LOG_PROGRESS=lines: they share one terminal", () => {
    const dry = Bun.spawnSync(["make", "-n", "stream"], { cwd: ROOT, stderr: "pipe" });
    const recipe = dry.stdout.toString();
    const exported = recipe.indexOf("export LOG_PROGRESS=lines;");
    expect(exported).toBeGreaterThan(-1);
    for (const script of ["dashboard.ts", "consumer_batch_to_csv.ts", "load.ts --watch", "producer.ts"]) {
      expect(recipe.indexOf(`scripts/${script}`)).toBeGreaterThan(exported);
    }
  });
});
