-- The ledger's totals in v_pipeline_health, for the dashboard's /metrics and `make status`: rows inserted,
-- duplicates and rejected, summed over every batch file loaded (loaded_files). Unlike rows_loaded (the rows in
-- orders now, which falls when rows are deleted), these only grow while the ledger is kept: Prometheus counters.
--
-- The dashboard reads the database as bi_reader, which may read views only, never loaded_files itself.
-- create or replace view keeps the view's grants and may only append columns: the new ones come last.

create or replace view v_pipeline_health as
select
  (select count(*) from orders) as rows_loaded,
  (select count(*) from loaded_files) as files_loaded,
  (select count(*) from rejected_rows where status = 'open') as rejected_open,
  (select count(*) from orders where warnings is not null) as rows_with_warnings,
  (select max(loaded_at) from loaded_files) as last_load_at,
  (select count(*) from orders where same_as_source is not null) as rows_cross_source,
  ledger.inserted as ledger_inserted,
  ledger.duplicates as ledger_duplicates,
  ledger.rejected as ledger_rejected
from (
  select coalesce(sum(inserted), 0)::bigint as inserted, coalesce(sum(duplicates), 0)::bigint as duplicates,
         coalesce(sum(rejected), 0)::bigint as rejected
  from loaded_files
) ledger;

grant select on v_pipeline_health to bi_reader;
