// Unit tests for scripts/lib/log.ts: the duration and rate formats of progress and summary lines.

import { describe, expect, test } from "bun:test";
import { formatDuration, formatRate, isLevel } from "../scripts/lib/log.ts";

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
