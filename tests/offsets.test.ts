// Unit tests for scripts/lib/offsets.ts: what the consumer expects per partition, and what a record elsewhere,
// a committed offset before the log's start or one that vanished means.

import { describe, expect, test } from "bun:test";
import { deletedRange, OffsetAccount, parseCommitted, recreatedRange, REMEMBERED } from "../scripts/lib/offsets.ts";

const LOG = { low: 0n, high: 1000n };

describe("parseCommitted", () => {
  test("reads an offset, nothing committed (-1) and kafkajs' reset marker (-2)", () => {
    expect(["0", "600", "-1", "-2"].map(parseCommitted)).toEqual([0n, 600n, "none", "reset"]);
  });
});

describe("deletedRange and recreatedRange", () => {
  test("name topic, partition, group and offsets", () => {
    expect(deletedRange("sales", "g", 3, 200n, 400n)).toEqual({
      topic: "sales",
      partition: 3,
      first: 200n,
      last: 399n,
      kind: "deleted",
      group: "g",
      reason:
        "offsets 200-399 of topic sales partition 3 were deleted before group g read them (retention, deleteRecords or a " +
        "truncated log): the group was at 200, the log starts at 400",
    });
    const recreated = recreatedRange("sales", "g", 0, 300n, 450n, "offset 0 arrived where 300 was expected");
    expect([recreated.first, recreated.last, recreated.kind]).toEqual([300n, 449n, "recreated"]);
    expect(recreated.reason).toBe(
      "topic sales was deleted and re-created, or its log truncated, while group g read partition 0 (offset 0 arrived where 300 " +
        "was expected): records of the old log from offset 300 that had not reached a batch file are gone (offsets 300-449 at " +
        "least); the new log is read from its start",
    );
  });

  test("leave the end of a re-created topic's old log unknown when no log end past the position was seen", () => {
    expect(recreatedRange("t", "g", 0, 300n, 300n, "x").last).toBeNull();
    expect(recreatedRange("t", "g", 0, 300n, undefined, "x").reason).toContain("(how many is unknown)");
  });
});

describe("OffsetAccount", () => {
  test("expects the committed offset of an assigned partition, then one past each record taken", () => {
    const account = new OffsetAccount("t", "g");
    expect(account.assign(0, 200n, LOG)).toBeUndefined();
    expect(account.arrive(0, 200n)).toEqual({ kind: "expected" });
    account.took(0, 200n);
    expect(account.arrive(0, 201n)).toEqual({ kind: "expected" });
    expect(account.arrive(0, 205n)).toEqual({ kind: "ahead", expected: 201n });
    expect(account.arrive(0, 150n)).toEqual({ kind: "behind", expected: 201n });
  });

  test("knows a record delivered again below the position (two fetches overlapped as a leader moved) from one of a replaced log", () => {
    const account = new OffsetAccount("t", "g");
    account.assign(0, 200n, LOG);
    for (let offset = 200n; offset < 226n; offset++) account.took(0, offset, offset * 7n);
    expect(account.arrive(0, 200n, 1400n)).toEqual({ kind: "again" });
    expect(account.arrive(0, 225n, 1575n)).toEqual({ kind: "again" });
    expect(account.arrive(0, 200n, 1401n)).toEqual({ kind: "behind", expected: 226n });
    expect(account.arrive(0, 199n, 1393n)).toEqual({ kind: "behind", expected: 226n });
    expect(account.arrive(0, 226n, 1n)).toEqual({ kind: "expected" });
    account.restartAt(0, 0n);
    account.took(0, 0n, 5n);
    expect(account.arrive(0, 0n, 5n)).toEqual({ kind: "again" });
    expect(account.arrive(0, 0n, 6n)).toEqual({ kind: "behind", expected: 1n });
  });

  test("a replaced log forgets the records taken, and at most REMEMBERED are kept per partition", () => {
    const account = new OffsetAccount("t", "g");
    account.took(0, 10n, 1n);
    account.restartAt(0, 0n);
    account.took(0, 20n, 1n);
    expect(account.arrive(0, 10n, 1n)).toEqual({ kind: "behind", expected: 21n });
    const last = BigInt(REMEMBERED);
    for (let offset = 1n; offset <= last; offset++) account.took(1, offset, offset);
    expect(account.arrive(1, 1n, 1n)).toEqual({ kind: "again" });
    account.took(1, last + 1n, last + 1n);
    expect(account.arrive(1, 1n, 1n)).toEqual({ kind: "behind", expected: last + 2n });
    expect(account.arrive(1, 2n, 2n)).toEqual({ kind: "again" });
  });

  test("tells records apart by all 64 bits of their fingerprints, and keeps only the newest of offsets REMEMBERED apart", () => {
    const account = new OffsetAccount("t", "g");
    const high = 2n ** 64n - 3n;
    account.took(0, 0n, high);
    account.took(0, 1n, 2n ** 63n);
    expect(account.arrive(0, 0n, high)).toEqual({ kind: "again" });
    expect(account.arrive(0, 0n, high - 2n ** 63n)).toEqual({ kind: "behind", expected: 2n });
    expect(account.arrive(0, 1n, 2n ** 63n)).toEqual({ kind: "again" });
    expect(account.arrive(0, 1n, 0n)).toEqual({ kind: "behind", expected: 2n });
    account.took(0, 5n, 7n);
    expect(account.arrive(0, 5n, 7n)).toEqual({ kind: "again" });
    account.took(0, BigInt(REMEMBERED) + 5n, 9n);
    expect(account.arrive(0, 5n, 7n)).toEqual({ kind: "behind", expected: BigInt(REMEMBERED) + 6n });
    expect(account.arrive(0, 1n, 2n ** 63n)).toEqual({ kind: "again" });
  });

  test("expects nothing of a partition the group never committed (a new group starts where the log starts)", () => {
    const account = new OffsetAccount("t", "g");
    expect(account.assign(0, "none", { low: 400n, high: 600n })).toBeUndefined();
    expect(account.arrive(0, 400n)).toEqual({ kind: "expected" });
    expect(account.position(0)).toBeUndefined();
  });

  test("finds a committed offset before the log's start: the range up to it was deleted; reads on from the start", () => {
    const account = new OffsetAccount("t", "g");
    const range = account.assign(0, 200n, { low: 400n, high: 600n });
    expect([range?.first, range?.last, range?.kind]).toEqual([200n, 399n, "deleted"]);
    expect(account.position(0)).toBe(400n);
  });

  test("judges kafkajs' reset marker from the offset this process knew (kafkajs reset it before the check)", () => {
    const account = new OffsetAccount("t", "g");
    account.assign(0, 100n, LOG);
    account.committedAt(0, 200n);
    const range = account.assign(0, "reset", { low: 400n, high: 600n });
    expect([range?.first, range?.last]).toEqual([200n, 399n]);
    // A process that knew nothing (a replay moved the group to the start with the same marker) expects nothing.
    expect(new OffsetAccount("t", "g").assign(0, "reset", { low: 400n, high: 600n })).toBeUndefined();
  });

  test("finds a committed offset it knew gone at the next assignment: the topic was re-created", () => {
    const account = new OffsetAccount("t", "g");
    account.assign(0, 0n, LOG);
    account.committedAt(0, 300n);
    account.sawEnd(0, 900n);
    const range = account.assign(0, "none", { low: 0n, high: 600n });
    expect([range?.first, range?.last, range?.kind]).toEqual([300n, null, "recreated"]);
    expect(account.position(0)).toBeUndefined();
    expect(account.assign(0, "none", LOG)).toBeUndefined(); // recorded once
  });

  test("finds a committed offset it knew gone before a commit; a reset marker or a moved offset is not that", () => {
    const account = new OffsetAccount("t", "g");
    expect(account.checkCommitted(0, "none")).toBeUndefined(); // nothing known yet
    account.committedAt(0, 300n);
    expect(account.checkCommitted(0, "reset")).toBeUndefined();
    expect(account.checkCommitted(0, 450n)).toBeUndefined();
    const range = account.checkCommitted(0, "none");
    expect([range?.first, range?.last, range?.kind]).toEqual([300n, null, "recreated"]);
    expect(account.checkCommitted(0, "none")).toBeUndefined();
  });

  test("keeps the highest log end seen, and forgets it when the log is replaced", () => {
    const account = new OffsetAccount("t", "g");
    account.sawEnd(1, 50n);
    account.sawEnd(1, 40n);
    expect(account.end(1)).toBe(50n);
    account.restartAt(1, 0n);
    expect([account.end(1), account.position(1)]).toEqual([undefined, 0n]);
  });
});
