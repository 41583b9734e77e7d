-- The same order line under another source name: a copy of a file in another folder, or a file sent again from
-- standard input with --source. Its identity (source + Row ID) is new, so it loaded as a new order, and every total
-- counted it twice without a word.
--
-- Such a row still loads (every line of every source stays in exactly one place: orders or an open rejection),
-- and is marked: orders.same_as_source names the source whose row with the same Row ID and the same cleaned values
-- (row_hash) loaded first. The loader counts them (loaded_files.cross_source, cross_source= in its summary) and
-- warns, naming both sources; make status and the dashboard show how many there are. See README, "Sending a line
-- again", for why they are loaded and how to remove them.
--
-- orders_same_values serves the loader's lookup, one probe per new row, whatever the size of orders; row_id last,
-- so the first row loaded comes first. Rows that loaded twice before this migration are marked here too.

alter table orders add column same_as_source text;
alter table loaded_files add column cross_source integer not null default 0;

create index orders_same_values on orders (row_hash, source_row_id, row_id);
create index orders_same_as_source on orders (source_file, same_as_source) where same_as_source is not null;

update orders o set same_as_source = f.source_file
from (
  select row_id, first_value(source_file) over w as source_file, first_value(row_id) over w as first_id
  from orders
  where row_hash is not null
  window w as (partition by row_hash, source_row_id order by row_id)
) f
where o.row_id = f.row_id and f.row_id <> f.first_id and o.source_file <> f.source_file;

create or replace view v_pipeline_health as
select
  (select count(*) from orders) as rows_loaded,
  (select count(*) from loaded_files) as files_loaded,
  (select count(*) from rejected_rows where status = 'open') as rejected_open,
  (select count(*) from orders where warnings is not null) as rows_with_warnings,
  (select max(loaded_at) from loaded_files) as last_load_at,
  (select count(*) from orders where same_as_source is not null) as rows_cross_source;
