-- Bookkeeping of the loader.
--
-- loaded_files: one row per batch file content (sha256), written in the same transaction as the file's
-- rows, so loading a file twice, or a copy of it under another name, is a no-op.
--
-- rejected_rows: every source row that could not be loaded, with the reason naming the field, where it came
-- from, and the row as received. Every input line ends up in exactly one place: orders or rejected_rows.

create table loaded_files (
  sha256 char(64) primary key,
  file_name text not null,
  records integer not null,
  inserted integer not null,
  duplicates integer not null,
  rejected integer not null,
  loaded_at timestamptz not null default now()
);

create index loaded_files_file_name on loaded_files (file_name);

create table rejected_rows (
  id bigserial primary key,
  source_file text not null,
  source_line integer not null,
  -- lines the record spans in the source (more than one for a quoted field with newlines)
  source_lines integer not null default 1,
  reason text not null,
  -- the fields as received, {"Order Date": "13/45/2016", ...}; null for a line that could not be split
  fields jsonb,
  -- the raw text of a line that could not be split into fields
  raw_text text,
  kafka_topic text,
  kafka_partition integer,
  kafka_offset bigint,
  batch_file text not null,
  rejected_at timestamptz not null default now(),
  constraint rejected_rows_source_line unique (source_file, source_line)
);
