-- What bi_reader could still do after 005, and the lock every loader waited on that any role could take.
--
-- Functions PostgreSQL grants to PUBLIC in every database, revoked from PUBLIC in this one:
-- - the large-object functions (lo_create, lo_creat, lo_from_bytea, lowrite, lo_put, lo_unlink, lo_import, ...):
--   bi_reader stored 10 MB with lo_from_bytea;
-- - the advisory-lock functions (pg_advisory_lock, pg_try_advisory_xact_lock, ...): bi_reader took the loader's
--   lock and every loader waited without end; advisory locks also fill the server's shared lock table;
-- - pg_logical_emit_message: it writes any amount into the WAL, even from a transaction that rolls back.
-- A privilege granted to PUBLIC cannot be taken from one role (every role holds what PUBLIC holds), so it is
-- taken from PUBLIC: the pipeline uses none of these, superusers keep them, and a role that needs one gets it by
-- name (grant execute on function lo_create(oid) to that_role). Function privileges belong to each database:
-- the other databases of the server keep PUBLIC's grants (restrict bi_reader to this database in pg_hba.conf).
--
-- NOTIFY is a statement, not a function: it cannot be revoked. The dashboard treats sales_loaded as a hint to read
-- the views again, at most once a second, and never reads its payload.
--
-- loader_lock: one row, which a loader locks (select ... for update) for the length of its transaction, so loaders
-- take turns. Locking a row needs UPDATE on its table, which only the table's owner (the loader's role) and
-- superusers have: bi_reader and any other role cannot take it.
--
-- bi_reader itself (roles are shared by every database of the server): at most 10 sessions at once; temporary
-- files at most 1 GB per session (a sort that spills cannot fill the disk; only a superuser can raise it);
-- statements cancelled after 2 minutes and sessions ended after 1 minute idle in a transaction, defaults a
-- well-behaved client (Tableau, psql) keeps, though a session may change them for itself.

create table loader_lock (
  id integer primary key default 1 constraint loader_lock_one_row check (id = 1)
);
insert into loader_lock (id) values (1);
revoke all on loader_lock from public, bi_reader;

do $$
declare
  f regprocedure;
  still text[];
begin
  for f in
    select p.oid::regprocedure from pg_proc p
    where p.pronamespace = 'pg_catalog'::regnamespace
      and (p.proname like 'lo\_%' or p.proname in ('loread', 'lowrite', 'pg_logical_emit_message') or p.proname like 'pg\_%advisory\_%')
  loop
    execute format('revoke execute on function %s from public', f);
  end loop;
  -- A migrator that is not a superuser only gets a warning for each revoke it may not make: say so and stop.
  select array_agg(p.oid::regprocedure::text order by 1) into still from pg_proc p
  where p.pronamespace = 'pg_catalog'::regnamespace
    and (p.proname like 'lo\_%' or p.proname in ('loread', 'lowrite', 'pg_logical_emit_message') or p.proname like 'pg\_%advisory\_%')
    and has_function_privilege('bi_reader', p.oid, 'execute');
  if still is not null then
    raise exception 'bi_reader can still execute %: run this migration as a superuser (it revokes them from PUBLIC)', array_to_string(still, ', ');
  end if;
end
$$;

do $$
declare
  wanted text[] := array['statement_timeout=2min', 'idle_in_transaction_session_timeout=1min', 'temp_file_limit=1GB'];
  done boolean;
begin
  done := exists (select from pg_roles where rolname = 'bi_reader' and rolconnlimit = 10 and coalesce(rolconfig, '{}') @> wanted);
  if done then
    return;
  end if;
  -- Roles are shared by every database of the server: two databases migrated at once would update the same role
  -- row ("tuple concurrently updated"). The second waits here, then finds the work done.
  lock table pg_catalog.pg_authid in share row exclusive mode;
  if exists (select from pg_roles where rolname = 'bi_reader' and rolconnlimit = 10 and coalesce(rolconfig, '{}') @> wanted) then
    return;
  end if;
  alter role bi_reader connection limit 10;
  alter role bi_reader set statement_timeout = '2min';
  alter role bi_reader set idle_in_transaction_session_timeout = '1min';
  alter role bi_reader set temp_file_limit = '1GB';
end
$$;
