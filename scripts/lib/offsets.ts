// The consumer's offset accounting, without Kafka: per partition, the offset it expects next (the group's
// committed offset when the partition is assigned, then one past each record it takes), and what it means when
// a record arrives at another one. Pure state, unit-tested on its own; the consumer script asks the broker for
// what this needs (committed offsets, where each log starts) and writes the gap files.
//
// kafkajs does not report a lost range: when the log no longer holds the position it fetches from
// (retention, deleteRecords, a truncated log, a topic re-created with fewer records), it logs "Offset out of
// range, resetting to default offset", commits the earliest offset and goes on from there. And a topic
// re-created with more records than the position is simply read on from there. What the accounting sees:
//
// - deleted: the group's committed offset (or the next record) lies before the start of the log. The range from
//   the expected offset to the log's start is gone; exactly known.
// - again: a record arrives below the expected offset, and it is the very record taken there before (same
//   timestamp, key and value). kafkajs fetches each broker's partitions in a loop of its own; when a leader
//   moves, the old leader's fetch and the new one's can both start at the same position, and both batches are
//   handed over. Nothing is lost or replaced: the repeat is skipped.
// - recreated: a record arrives at an offset below the expected one and is not the record taken there (the log
//   behind the position was replaced),
//   or the committed offset this process knew has vanished from the group (Kafka deletes a topic's committed
//   offsets with the topic). Records of the old log that had not reached a batch file are gone; how many is
//   known only as far as the log end this process saw.

import type { LostRange } from "./batch.ts";

/** A committed offset as Kafka answers it: a number, "none" (-1: nothing committed), or "reset" (-2: kafkajs' earliest marker). */
export type Committed = bigint | "none" | "reset";

export function parseCommitted(offset: string): Committed {
  const n = BigInt(offset);
  return n >= 0n ? n : n === -1n ? "none" : "reset";
}

/** Where a record arrived, against the offset expected. */
export type Arrival =
  | { readonly kind: "expected" }
  | { readonly kind: "again" }
  | { readonly kind: "ahead"; readonly expected: bigint }
  | { readonly kind: "behind"; readonly expected: bigint };

/** The range [expected, logStart - 1] the log lost before the group read it. */
export function deletedRange(topic: string, group: string, partition: number, expected: bigint, logStart: bigint): LostRange {
  const last = logStart - 1n;
  return {
    topic,
    partition,
    first: expected,
    last,
    kind: "deleted",
    group,
    reason:
      `offsets ${expected}-${last} of topic ${topic} partition ${partition} were deleted before group ${group} read them ` +
      `(retention, deleteRecords or a truncated log): the group was at ${expected}, the log starts at ${logStart}`,
  };
}

/** The old log's records from `first` that the group had not read when the topic was re-created (or its log truncated). */
export function recreatedRange(topic: string, group: string, partition: number, first: bigint, lastSeenEnd: bigint | undefined, how: string): LostRange {
  const last = lastSeenEnd !== undefined && lastSeenEnd > first ? lastSeenEnd - 1n : null;
  const known = last === null ? "how many is unknown" : `offsets ${first}-${last} at least`;
  return {
    topic,
    partition,
    first,
    last,
    kind: "recreated",
    group,
    reason:
      `topic ${topic} was deleted and re-created, or its log truncated, while group ${group} read partition ${partition} ` +
      `(${how}): records of the old log from offset ${first} that had not reached a batch file are gone (${known}); the new log is read from its start`,
  };
}

/**
 * How many taken records per partition are remembered to recognise a repeat: more than one fetch holds (kafkajs
 * fetches up to 1 MB per partition, a few thousand rows), 160 kB of memory per partition.
 */
export const REMEMBERED = 10_000;

/**
 * The fingerprints of the records taken last, in slots indexed by offset modulo REMEMBERED: a record taken
 * overwrites the one REMEMBERED offsets before it, so of consecutive offsets the last REMEMBERED are kept. (A Map
 * that dropped its oldest key per record cost a third of the consumer's CPU.)
 */
const SLOTS = BigInt(REMEMBERED);

class TakenRing {
  /** the offset whose fingerprint a slot holds; -1 when none */
  private readonly offsets = new BigInt64Array(REMEMBERED).fill(-1n);
  private readonly fingerprints = new BigUint64Array(REMEMBERED);

  set(offset: bigint, fingerprint: bigint): void {
    const slot = Number(offset % SLOTS);
    this.offsets[slot] = offset;
    this.fingerprints[slot] = fingerprint;
  }

  /** Whether the record taken at `offset` had this fingerprint (compared as 64 bits, as stored). */
  holds(offset: bigint, fingerprint: bigint): boolean {
    const slot = Number(offset % SLOTS);
    return this.offsets[slot] === offset && this.fingerprints[slot] === BigInt.asUintN(64, fingerprint);
  }
}

export class OffsetAccount {
  /** partition -> the offset expected next; absent when nothing is expected (a group that never committed) */
  private readonly expected = new Map<number, bigint>();
  /** partition -> the group's committed offset as this process last knew it (at assignment, or its own commit) */
  private readonly committed = new Map<number, bigint>();
  /** partition -> the highest log end seen in the log read now */
  private readonly ends = new Map<number, bigint>();
  /** partition -> the fingerprints of the records taken at its last REMEMBERED offsets */
  private readonly taken = new Map<number, TakenRing>();

  constructor(
    readonly topic: string,
    readonly group: string,
  ) {}

  /**
   * A partition assigned: what the group has committed and where its log starts and ends now. Returns the range
   * lost when the committed offset lies before the log's start, or vanished since this process knew it.
   */
  assign(partition: number, groupSays: Committed, log: { low: bigint; high: bigint }): LostRange | undefined {
    const known = this.committed.get(partition);
    this.expected.delete(partition);
    // kafkajs' reset marker where this process knew an offset: kafkajs found it out of range (and committed the
    // marker) before this process could look. Judged from where the group was.
    const committed = groupSays === "reset" && known !== undefined ? known : groupSays;
    if (committed === "none" && known !== undefined) {
      // The log ends seen since may be the new log's (read on at the old position): the old end is unknown.
      const gap = recreatedRange(this.topic, this.group, partition, known, undefined, "its committed offset is gone");
      this.restartAt(partition, undefined);
      return gap;
    }
    this.sawEnd(partition, log.high);
    if (typeof committed !== "bigint") return undefined;
    this.committed.set(partition, committed);
    if (committed < log.low) {
      this.expected.set(partition, log.low);
      return deletedRange(this.topic, this.group, partition, committed, log.low);
    }
    this.expected.set(partition, committed);
    return undefined;
  }

  /**
   * Where a record at `offset` arrived; the first record of a partition without an expectation is expected.
   * `fingerprint` (of its timestamp, key and value) tells a record taken before from one of a replaced log.
   */
  arrive(partition: number, offset: bigint, fingerprint?: bigint): Arrival {
    const expected = this.expected.get(partition);
    if (expected === undefined || offset === expected) return { kind: "expected" };
    if (offset > expected) return { kind: "ahead", expected };
    const again = fingerprint !== undefined && this.taken.get(partition)?.holds(offset, fingerprint) === true;
    return again ? { kind: "again" } : { kind: "behind", expected };
  }

  /** The record at `offset` was taken: the next one is expected after it. */
  took(partition: number, offset: bigint, fingerprint?: bigint): void {
    this.expected.set(partition, offset + 1n);
    if (fingerprint === undefined) return;
    let taken = this.taken.get(partition);
    if (!taken) this.taken.set(partition, (taken = new TakenRing()));
    taken.set(offset, fingerprint);
  }

  /** A fetch said the log ends at `highWatermark`. */
  sawEnd(partition: number, highWatermark: bigint): void {
    const seen = this.ends.get(partition);
    if (seen === undefined || highWatermark > seen) this.ends.set(partition, highWatermark);
  }

  /** The group committed `next` for the partition (this process did). */
  committedAt(partition: number, next: bigint): void {
    this.committed.set(partition, next);
  }

  /**
   * Before a commit: what the group has committed now. Returns the range lost when an offset this process
   * knew has vanished (the topic was deleted, and what is read now may be a new topic at the old position).
   */
  checkCommitted(partition: number, committed: Committed): LostRange | undefined {
    const known = this.committed.get(partition);
    if (committed !== "none" || known === undefined) return undefined;
    const gap = recreatedRange(this.topic, this.group, partition, known, undefined, "its committed offset was gone at a commit");
    this.restartAt(partition, undefined);
    return gap;
  }

  /** The log of the partition was replaced: what this process knew of it no longer holds; `offset` is expected next. */
  restartAt(partition: number, offset: bigint | undefined): void {
    this.committed.delete(partition);
    this.ends.delete(partition);
    this.taken.delete(partition);
    if (offset === undefined) this.expected.delete(partition);
    else this.expected.set(partition, offset);
  }

  /** Whether this process knows a committed offset of the partition (from the group, or its own commit). */
  knowsCommitted(partition: number): boolean {
    return this.committed.has(partition);
  }

  /** The offset expected next, or undefined. */
  position(partition: number): bigint | undefined {
    return this.expected.get(partition);
  }

  /** The highest log end seen for the partition, or undefined. */
  end(partition: number): bigint | undefined {
    return this.ends.get(partition);
  }
}
