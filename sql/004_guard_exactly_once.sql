-- What "every input line lands exactly once" needs beyond 003.
--
-- orders.row_hash: a fingerprint of the row's cleaned values. The same line sent again has the same one and is
-- a duplicate; a line with the same Row ID and other values is a conflict, recorded in rejected_rows, and the
-- row that loaded first stays. Rows loaded before this migration have none and count as duplicates.
-- orders.warnings: plausibility rules a loaded row breaks (ship date before order date, ...).
--
-- rejected_rows.status: 'open' (the line is not in orders: fix it and send it again), 'resolved' (a corrected
-- version loaded; kept for audit), 'conflict' (another version of a line that is already in orders; kept for
-- audit). Each line has at most one current (open or conflict) rejection; resolved ones are history.
-- Every input line is in exactly one place: orders, or an open rejection.

alter table orders
  add column row_hash text,
  add column warnings text[];

alter table rejected_rows
  add column source_row_id bigint,
  add column status text not null default 'open' constraint rejected_rows_status check (status in ('open', 'resolved', 'conflict')),
  add column resolved_at timestamptz,
  add column resolved_by text;

alter table rejected_rows drop constraint rejected_rows_source_line;
create unique index rejected_rows_current_line on rejected_rows (source_file, source_line) where status in ('open', 'conflict');
create index rejected_rows_line on rejected_rows (source_file, source_line);
create index rejected_rows_open_row_id on rejected_rows (source_file, source_row_id) where status = 'open';

alter table loaded_files add column warnings integer not null default 0;
