-- The hot wearable query, one patient's Observations of a code over a date range (and $lastn,
-- the newest per code), served by one index range scan: each Observation's codings with its date
-- range and patient. Maintained with the other index rows (src/search/index.rs, Row::CodeDate).
create table obs_code_date (
    rid         bigint      not null,
    compartment text        not null,
    system      text collate "C",
    code        text collate "C",
    low         timestamptz not null,
    high        timestamptz not null
);
create index obs_code_date_patient on obs_code_date (compartment, code, high);
create index obs_code_date_rid on obs_code_date (rid);

-- Existing index rows already hold these values.
insert into obs_code_date (rid, compartment, system, code, low, high)
select t.rid, t.compartment, t.system, t.code, d.low, d.high
from idx_token t
join idx_date d on d.rid = t.rid
    and d.pid = (select pid from search_param where resource_type = 'Observation' and code = 'date')
where t.pid = (select pid from search_param where resource_type = 'Observation' and code = 'code')
  and t.compartment is not null;
