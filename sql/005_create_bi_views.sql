-- Views for BI tools (Tableau, the live dashboard, any SQL client) and the read-only role that reads them.
--
-- Every location is the order's own ship-to address (orders.city, state, region, postal_code, country), not the
-- customer's latest one. Money is summed as exact numeric, so each view's totals equal the source rows to the
-- last digit; margin is profit / sales (a ratio, null where sales are 0).
--
-- bi_reader may select these views and nothing else: no base table, no writes, no new objects. The role is
-- created here without a login; scripts/migrate.ts gives it one, with the password in BI_READER_PASSWORD, when
-- that variable is set (the password is never stored in the repository).

create view v_sales as
select
  o.row_id as line_id,
  o.order_id,
  o.order_date,
  o.ship_date,
  o.ship_mode,
  o.order_priority,
  o.customer_id,
  o.customer_name,
  o.segment,
  o.city,
  o.state,
  o.region,
  o.postal_code,
  o.country,
  o.product_id,
  o.category,
  o.sub_category,
  o.product_name,
  o.sales,
  o.quantity,
  o.discount,
  o.profit
from orders o;

create view v_monthly_sales as
select
  date_trunc('month', order_date)::date as month,
  count(distinct order_id) as orders,
  count(*) as lines,
  sum(sales) as sales,
  sum(profit) as profit,
  sum(profit) / nullif(sum(sales), 0) as margin
from v_sales
group by 1;

-- One row per product id: its name, category and sub-category as last sold (a few ids were sold under
-- several names), and its rank by sales (1 = the best seller).
create view v_product_performance as
select
  p.category,
  p.sub_category,
  s.product_id,
  p.product_name,
  s.sales,
  s.profit,
  s.quantity,
  s.profit / nullif(s.sales, 0) as margin,
  rank() over (order by s.sales desc) as sales_rank
from (
  select product_id, sum(sales) as sales, sum(profit) as profit, sum(quantity) as quantity
  from v_sales
  group by product_id
) s
join products p on p.product_id = s.product_id;

create view v_customer_segments as
select
  segment,
  count(distinct customer_id) as customers,
  count(distinct order_id) as orders,
  sum(sales) as sales,
  sum(profit) as profit,
  sum(sales) / nullif(count(distinct order_id), 0) as average_order_value
from v_sales
group by segment;

create view v_region_sales as
select
  region,
  state,
  count(distinct order_id) as orders,
  sum(sales) as sales,
  sum(profit) as profit
from v_sales
group by region, state;

-- The pipeline's own state, for the dashboard and `make status`.
create view v_pipeline_health as
select
  (select count(*) from orders) as rows_loaded,
  (select count(*) from loaded_files) as files_loaded,
  (select count(*) from rejected_rows where status = 'open') as rejected_open,
  (select count(*) from orders where warnings is not null) as rows_with_warnings,
  (select max(loaded_at) from loaded_files) as last_load_at;

do $$
begin
  if not exists (select from pg_roles where rolname = 'bi_reader') then
    create role bi_reader nologin;
  end if;
end
$$;

-- Nothing but the views: no table, no sequence, no new object in the schema, no temporary tables.
revoke all on all tables in schema public from bi_reader;
revoke create on schema public from public;
do $$
begin
  execute format('revoke temporary on database %I from public', current_database());
end
$$;
grant usage on schema public to bi_reader;
grant select on v_sales, v_monthly_sales, v_product_performance, v_customer_segments, v_region_sales, v_pipeline_health to bi_reader;
