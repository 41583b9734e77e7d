-- What the real Superstore data needs beyond the seed schema.
--
-- Exact money: sales and profit carry up to 4 decimals (sales total 2,297,200.8603); numeric(10,2) rounded
-- them. Unconstrained numeric keeps every digit the source has.
--
-- Location belongs to the order: 780 of 793 customers ship to more than one city, so orders carries the
-- ship-to address, and users keeps the values of each customer's latest order. Product names differ for
-- 32 product ids, so orders carries the name as sold, and products keeps the latest one.
--
-- Identity: (source_file, source_row_id) is the row as the source file numbers it (its Row ID, or its line
-- when the file has none). It is unique, so a row sent twice is stored once and two files never collide.

alter table orders alter column row_id type bigint;
alter sequence orders_row_id_seq as bigint;
alter table orders
  alter column sales type numeric,
  alter column discount type numeric,
  alter column profit type numeric,
  alter column customer_id set not null,
  alter column product_id set not null,
  alter column sales set not null,
  alter column quantity set not null,
  add column customer_name text,
  add column segment varchar(50),
  add column country text,
  add column city varchar(50),
  add column state varchar(50),
  add column postal_code varchar(20),
  add column region varchar(50),
  add column market text,
  add column product_name text,
  add column category varchar(50),
  add column sub_category varchar(50),
  add column shipping_cost numeric,
  -- source columns this schema does not know, as {"column": "value"}
  add column extra jsonb,
  add column source_file text not null,
  add column source_row_id bigint not null,
  add column source_line integer not null,
  add column kafka_topic text,
  add column kafka_partition integer,
  add column kafka_offset bigint,
  add column batch_file text not null,
  add column loaded_at timestamptz not null default now(),
  add constraint orders_source_identity unique (source_file, source_row_id);

create index orders_order_date on orders (order_date);
create index orders_customer_id on orders (customer_id);
create index orders_product_id on orders (product_id);

-- users and products hold each id's values from its latest order: the greatest
-- (order_date, source_row_id, source_file). A total order, so the result does not depend on the order in
-- which batches arrive or are replayed.
alter table users
  add column customer_name text,
  add column country text,
  add column postal_code varchar(20),
  add column market text,
  add column latest_order_date date not null,
  add column latest_source_row_id bigint not null,
  add column latest_source_file text not null,
  add column updated_at timestamptz not null default now();

alter table products
  add column product_name text,
  add column latest_order_date date not null,
  add column latest_source_row_id bigint not null,
  add column latest_source_file text not null,
  add column updated_at timestamptz not null default now();
