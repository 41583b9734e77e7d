-- Offsets a consumer group could not read because Kafka no longer had them, recorded instead of skipped.
--
-- The consumer compares the first offset it receives for a partition with the one it expects (the group's
-- committed offset, then one past each record it took). Records deleted before the group read them
-- (retention, deleteRecords, a truncated log) or a topic deleted and re-created under the same name while the
-- group read it leave a range the group never saw. The consumer writes each such range into the batch folder
-- as a gap file (batches/<topic>_p<partition>_<first>-<last>_lost_<hash>.csv), and the loader records it here
-- in the same transaction as the file's ledger row in loaded_files.
--
-- kind: 'deleted' (the log starts past the group's position: the range is exact) or 'recreated' (the topic
-- was re-created or its log truncated: records of the old log after first_offset that the group had not
-- written to a batch file are gone; last_offset is the last one known to have existed, null when unknown).
-- A range found again (a consumer stopped before it committed past it, retention moved on meanwhile) is the
-- same row, widened.

create table lost_offsets (
  id bigserial primary key,
  consumer_group text not null,
  kafka_topic text not null,
  kafka_partition integer not null,
  first_offset bigint not null,
  last_offset bigint,
  records bigint generated always as (last_offset - first_offset + 1) stored,
  kind text not null constraint lost_offsets_kind check (kind in ('deleted', 'recreated')),
  reason text not null,
  gap_file text not null,
  recorded_at timestamptz not null default now(),
  constraint lost_offsets_range check (last_offset is null or last_offset >= first_offset),
  constraint lost_offsets_first unique (consumer_group, kafka_topic, kafka_partition, first_offset)
);
