-- What the dashboard reads besides the BI views. The dashboard logs in as bi_reader (scripts/dashboard.ts), which
-- may read no base table; to count the batch files in the folder that are not loaded yet, it needs the names of
-- the files in the ledger and when they were loaded (to ask only for those loaded since it last looked). This
-- view gives that and nothing more of loaded_files: no content hashes, counts or sources.
--
-- bi_reader's login and password are not given here (sql/005 made the role without one): scripts/migrate.ts gives
-- them once per server, since a role belongs to the whole server (scripts/lib/bi_reader.ts).

create view v_loaded_files as
select file_name, loaded_at
from loaded_files;

grant select on v_loaded_files to bi_reader;
